import Glibc

/// Reads a small secret file (a key, a password) whole: at most `limit` bytes are read, so that
/// a wrong path to a large file costs nothing. Fails with `strerror`'s words.
enum SecretFile {
    static func read(_ path: String, limit: Int = 4096) -> Result<[UInt8], SecretFile.Failure> {
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

    struct Failure: Error {
        var reason: String
    }
}
