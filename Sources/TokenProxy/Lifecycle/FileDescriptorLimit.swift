import FoundationEssentials
import Glibc

/// The process's limit on open files. Each client and upstream connection takes one; the soft
/// limit is often 1,024 while the hard limit allows far more (as nginx and Go do, the proxy
/// raises the first to the second).
enum FileDescriptorLimit {
    /// Raises the soft limit to the hard one; returns the limit in force.
    @discardableResult
    static func raiseToHardLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return -1 }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        return limit.rlim_cur >= rlim_t(Int.max) ? Int.max : Int(limit.rlim_cur)
    }

    /// The most client connections that still leave a descriptor for each one's upstream
    /// connection and some to spare (store, lock, listeners, logs). Past it, `accept` would fail
    /// with EMFILE and leave the connection queued: the listener would stay readable and the
    /// event loop spin. Below it, surplus connections are accepted and closed at once.
    static func clientConnectionBudget() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < rlim_t(Int.max) else { return Int.max }
        // Descriptors already open (inherited ones included) are not available to connections.
        let open = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 0
        return max((Int(limit.rlim_cur) - open - 32) / 2, 1)
    }
}
