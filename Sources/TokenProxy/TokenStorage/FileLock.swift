import Glibc

/// The cross-process refresh lock: `flock(LOCK_EX)` on `token.lockFile` (SPEC §3).
///
/// The kernel drops the lock when its holder dies, so a crashed process never leaves a stale lock.
/// ``acquire(path:timeout:)`` blocks: call it through ``BlockingIO``.
public struct FileLock: Sendable {
    private let descriptor: Int32
    public let path: String

    /// Takes the lock, waiting at most `timeout`. The lock file's folder is created (0700) when
    /// missing; a lock file that is a symbolic link, or sits in a folder others can write, is refused.
    public static func acquire(path: String, timeout: Duration) throws(FileLockError) -> FileLock {
        if let refusal = StoreFolder.refusal(of: path, key: "token.lockFile", create: true) { throw .refused(path: path, reason: refusal) }
        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard descriptor >= 0 else {
            if errno == ELOOP { throw .refused(path: path, reason: "token.lockFile \(path) is a symbolic link; point token.lockFile at a file of its own") }
            throw .cannotOpen(path: path, code: errno)
        }
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        // flock(2) has no timeout; poll the non-blocking form with a short, growing pause.
        var pause = Duration.milliseconds(1)
        while true {
            if flock(descriptor, LOCK_EX | LOCK_NB) == 0 { return FileLock(descriptor: descriptor, path: path) }
            let code = errno
            guard code == EWOULDBLOCK || code == EINTR else {
                close(descriptor)
                throw .cannotOpen(path: path, code: code)
            }
            if clock.now >= deadline {
                close(descriptor)
                throw .timedOut(path: path, timeout: timeout)
            }
            var request = timespec(tv_sec: 0, tv_nsec: Int(pause.milliseconds) * 1_000_000)
            nanosleep(&request, nil)
            pause = min(pause * 2, .milliseconds(10))
        }
    }

    /// Releases the lock (closing the descriptor releases it).
    public func release() {
        close(descriptor)
    }
}

public enum FileLockError: Error, Sendable, CustomStringConvertible {
    case cannotOpen(path: String, code: Int32)
    case timedOut(path: String, timeout: Duration)
    /// The lock file or its folder is not safe to use (SPEC §3): a configuration problem.
    case refused(path: String, reason: String)

    public var description: String {
        switch self {
        case .cannotOpen(let path, let code):
            "cannot lock token.lockFile \(path): \(String(cString: strerror(code)))"
        case .timedOut(let path, let timeout):
            "another process held token.lockFile \(path) for longer than token.lockTimeout (\(timeout.configString)); it may be stuck in a call to the token endpoint"
        case .refused(_, let reason):
            "refusing the lock file: \(reason)"
        }
    }
}
