import Glibc

/// Reads a small secret file (a key, a password, a refresh token to import) whole: at most
/// `limit` bytes are read, so that a wrong path to a large file costs nothing. Fails with
/// `strerror`'s words.
public enum SecretFile {
    public static func read(_ path: String, limit: Int = 4096) -> Result<[UInt8], SecretFile.Failure> {
        let descriptor = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return .failure(Failure(reason: String(cString: strerror(errno)))) }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1024)
        while bytes.count <= limit {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { break }
            bytes += chunk[0..<count]
        }
        return .success(bytes)
    }

    public struct Failure: Error {
        public var reason: String
    }

    /// `bytes` without the spaces, tabs and line ends around them (`echo` adds a newline).
    public static func trimmingWhiteSpace(_ bytes: [UInt8]) -> ArraySlice<UInt8> {
        let isSpace: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }
        guard let first = bytes.firstIndex(where: { !isSpace($0) }), let last = bytes.lastIndex(where: { !isSpace($0) }) else { return [] }
        return bytes[first...last]
    }
}
