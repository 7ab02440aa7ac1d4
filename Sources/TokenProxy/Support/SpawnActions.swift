import Glibc

/// What a process this one starts inherits: only what it is given. Sockets here are not opened
/// close-on-exec, so a child (a browser that lives on, a test's tokenproxy) would otherwise hold
/// copies of listeners and connections, and keep a closed listener's address accepting.
public enum SpawnActions {
    /// Adds to `actions` the closing of every descriptor from `first` on (glibc 2.34 and later;
    /// Swift's Glibc module does not declare the function, so it is looked up). Returns whether
    /// it could.
    @discardableResult
    public static func closeDescriptors(from first: Int32, in actions: inout posix_spawn_file_actions_t) -> Bool {
        guard let closeFrom else { return false }
        return closeFrom(&actions, first) == 0
    }

    private static let closeFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
    }()
}
