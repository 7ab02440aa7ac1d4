import FoundationEssentials
import Glibc

/// The token store: one JSON file, mode 0600, replaced atomically (SPEC §3).
///
/// Every method blocks on file I/O: call them through ``BlockingIO``, never on an event loop.
public struct TokenStore: Sendable {
    public let path: String

    public init(path: String) {
        self.path = path
    }

    /// What a read of the store found.
    public enum Contents: Sendable, Equatable {
        /// No file, or a file of nothing but white space (`echo > store` truncates first).
        case empty
        /// `discarded` says what was dropped as unusable (the access token of a store whose
        /// times are out of range, say); what remains is still used.
        case tokens(TokenSet, discarded: String?)
        /// A store that cannot be parsed; it is left where it is until it has stayed so a while
        /// (``TokenStorage/quarantine(ifStill:now:)``).
        case corrupt(reason: String, version: StorageVersion)

        public var tokens: TokenSet? {
            if case .tokens(let tokens, _) = self { tokens } else { nil }
        }
    }

    /// Identifies one version of the store file, so that "has the store changed?" is one `stat`.
    public struct Fingerprint: Sendable, Hashable {
        var device: UInt64, inode: UInt64, size: Int64, modifiedNanoseconds: Int64
    }

    /// The largest store file read; a bigger one is treated as corrupt.
    static let maximumSize = 256 * 1024

    /// Reads the store; `now` judges whether its times are in range. A missing file is empty.
    public func read(now: Date = Date()) throws(TokenStoreError) -> Contents {
        try readVersion(now: now).contents
    }

    /// Reads the store, and identifies the version read (`nil`: no file), so that a decision
    /// made on these contents can later tell whether the file has changed since.
    public func readVersion(now: Date = Date()) throws(TokenStoreError) -> (contents: Contents, version: Fingerprint?) {
        if let refusal = StoreFolder.refusal(of: path, key: "token.store", create: false) { throw .refused(path: path, reason: refusal) }
        let descriptor = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
        if descriptor < 0 {
            let code = errno
            if code == ENOENT { return (.empty, nil) }
            if code == ELOOP { throw .refused(path: path, reason: "token.store \(path) is a symbolic link; point token.store at the real file") }
            throw .system(path: path, operation: "read", code: code)
        }
        defer { close(descriptor) }
        var info = stat()
        guard fstat(descriptor, &info) == 0 else { throw .system(path: path, operation: "inspect", code: errno) }
        guard info.st_mode & S_IFMT == S_IFREG else { throw .refused(path: path, reason: "token.store \(path) is not a regular file") }
        var data = Data()
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        while data.count <= Self.maximumSize {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw .system(path: path, operation: "read", code: errno)
            }
            if count == 0 { break }
            data.append(contentsOf: buffer[0..<count])
        }
        let version = Fingerprint(info)
        if data.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) { return (.empty, version) }
        let reason: String
        if data.count > Self.maximumSize {
            reason = "larger than \(Self.maximumSize) bytes"
        } else {
            do {
                let (tokens, discarded) = try StoreDocument.decode(data, now: now)
                return (.tokens(tokens, discarded: discarded), version)
            } catch {
                reason = error.description
            }
        }
        return (.corrupt(reason: reason, version: .file(version)), version)
    }

    /// Moves an unparseable store aside to `<path>.corrupt-<unix time>`, unless it changed since
    /// it was judged corrupt (a writer may be at work). Returns where it went, or `nil` if it
    /// was left alone. Call it only while holding the lock.
    public func quarantine(ifStill fingerprint: Fingerprint, now: Date) throws(TokenStoreError) -> String? {
        guard self.fingerprint() == fingerprint else { return nil }
        let aside = "\(path).corrupt-\(Int64(now.timeIntervalSince1970.rounded(.down)))"
        guard rename(path, aside) == 0 else { throw .system(path: path, operation: "move aside", code: errno) }
        return aside
    }

    /// Replaces the store with `tokens`: a temporary file in the same folder (mode 0600), fsync,
    /// rename over the store, fsync of the folder. Readers see the old or the new file, never a
    /// mix. A missing folder is created (0700); a refused folder or a symbolic link is not written.
    /// Returns the version written.
    @discardableResult
    public func write(_ tokens: TokenSet) throws(TokenStoreError) -> Fingerprint? {
        if let refusal = StoreFolder.refusal(of: path, key: "token.store", create: true) { throw .refused(path: path, reason: refusal) }
        do {
            return try AtomicFile.replace(path, with: StoreDocument.encode(tokens), mode: 0o600).map(Fingerprint.init)
        } catch {
            throw .system(path: error.path, operation: error.operation, code: error.code)
        }
    }

    /// Removes temporary files left by writers that were killed mid-write. Call it only while
    /// holding the lock: then nobody else is writing.
    public func removeAbandonedTemporaryFiles() {
        AtomicFile.removeTemporaryFiles(of: path)
    }

    /// The current version of the file; `nil` when there is none.
    public func fingerprint() -> Fingerprint? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        return Fingerprint(info)
    }
}

extension TokenStore.Fingerprint {
    init(_ info: stat) {
        self.init(
            device: UInt64(info.st_dev), inode: UInt64(info.st_ino), size: Int64(info.st_size),
            modifiedNanoseconds: Int64(info.st_mtim.tv_sec) &* 1_000_000_000 &+ Int64(info.st_mtim.tv_nsec)
        )
    }
}

/// A store file could not be used; says which file, what was tried and why it failed.
public enum TokenStoreError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A system call failed.
    case system(path: String, operation: String, code: Int32)
    /// The file or its folder is not safe to use (SPEC §3), or the fleet's key cannot open its
    /// row (SPEC §2.3): a configuration problem; `path` is the file to fix.
    case refused(path: String, reason: String)
    /// The lock could not be had in time, or the fleet database cannot be reached: worth
    /// trying again.
    case unavailable(reason: String)
    /// A fenced write was refused: the storage holds a newer version than the one read under
    /// the lock (the lock was lost meanwhile, SPEC §3.1).
    case superseded

    public var description: String {
        switch self {
        case .system(let path, let operation, let code):
            let hint = code == EACCES || code == EPERM ? " (check that the user running tokenproxy owns it)" : ""
            return "cannot \(operation) token store file \(path): \(String(cString: strerror(code)))\(hint)"
        case .refused(_, let reason):
            return "refusing the token store: \(reason)"
        case .unavailable(let reason):
            return reason
        case .superseded:
            return "the token store moved on while this process held what it took for the lock"
        }
    }
}
