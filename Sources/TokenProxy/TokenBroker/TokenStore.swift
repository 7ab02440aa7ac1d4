import FoundationEssentials
import Glibc
import Logging

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
        case empty
        case tokens(TokenSet)
        /// The file could not be parsed; `movedTo` is where it was moved aside, if it was.
        case corrupt(reason: String, movedTo: String?)

        public var tokens: TokenSet? {
            if case .tokens(let tokens) = self { tokens } else { nil }
        }
    }

    /// Identifies one version of the store file, so that "has the store changed?" is one `stat`.
    public struct Fingerprint: Sendable, Equatable {
        var device: UInt64, inode: UInt64, size: Int64, modifiedNanoseconds: Int64
    }

    /// The largest store file read; a bigger one is treated as corrupt.
    static let maximumSize = 256 * 1024

    /// Reads the store. A missing file is empty. An unparseable file is moved aside to
    /// `<path>.corrupt-<unix time>` when `quarantineCorrupt` is set (only do that while holding
    /// the lock, so that two processes do not race to move it).
    public func read(quarantineCorrupt: Bool, logger: Logger) throws(TokenStoreError) -> Contents {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        if descriptor < 0 {
            let code = errno
            if code == ENOENT { return .empty }
            throw TokenStoreError(path: path, operation: "read", code: code)
        }
        defer { close(descriptor) }
        var data = Data()
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        while data.count <= Self.maximumSize {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw TokenStoreError(path: path, operation: "read", code: errno)
            }
            if count == 0 { break }
            data.append(contentsOf: buffer[0..<count])
        }
        let reason: String
        if data.count > Self.maximumSize {
            reason = "larger than \(Self.maximumSize) bytes"
        } else {
            do {
                return .tokens(try StoreDocument.decode(data))
            } catch {
                reason = error.description
            }
        }
        guard quarantineCorrupt else { return .corrupt(reason: reason, movedTo: nil) }
        let aside = "\(path).corrupt-\(Int(Date().timeIntervalSince1970))"
        if rename(path, aside) == 0 {
            logger.error(
                "token store was corrupt and has been moved aside; the next need starts from an empty store",
                metadata: ["store": "\(path)", "movedTo": "\(aside)", "reason": "\(reason)"]
            )
            return .corrupt(reason: reason, movedTo: aside)
        }
        logger.error("token store is corrupt and could not be moved aside", metadata: ["store": "\(path)", "reason": "\(reason)", "error": "\(String(cString: strerror(errno)))"])
        return .corrupt(reason: reason, movedTo: nil)
    }

    /// Replaces the store with `tokens`: a temporary file in the same folder (mode 0600), fsync,
    /// rename over the store, fsync of the folder. Readers see the old or the new file, never a mix.
    public func write(_ tokens: TokenSet) throws(TokenStoreError) {
        let folder = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? ""
        if !folder.isEmpty, access(folder, F_OK) != 0, mkdir(folder, 0o700) != 0, errno != EEXIST {
            throw TokenStoreError(path: folder, operation: "create the folder", code: errno)
        }
        let temporary = "\(path).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw TokenStoreError(path: temporary, operation: "create", code: errno) }
        var succeeded = false
        defer { if !succeeded { unlink(temporary) } }
        let data = StoreDocument.encode(tokens)
        let writeError: Int32? = data.withUnsafeBytes { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = Glibc.write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    return errno
                }
                offset += written
            }
            return nil
        }
        // The umask may have narrowed the mode further but never widened it; make it exactly 0600.
        if let code = writeError ?? (fchmod(descriptor, 0o600) != 0 ? errno : nil) ?? (fsync(descriptor) != 0 ? errno : nil) {
            close(descriptor)
            throw TokenStoreError(path: temporary, operation: "write", code: code)
        }
        close(descriptor)
        guard rename(temporary, path) == 0 else { throw TokenStoreError(path: path, operation: "replace", code: errno) }
        succeeded = true
        let folderDescriptor = open(folder.isEmpty ? "." : folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if folderDescriptor >= 0 {
            fsync(folderDescriptor)
            close(folderDescriptor)
        }
    }

    /// Removes temporary files left by writers that were killed mid-write. Call it only while
    /// holding the lock: then nobody else is writing.
    public func removeAbandonedTemporaryFiles() {
        let url = URL(fileURLWithPath: path)
        let prefix = url.lastPathComponent + ".tmp-"
        let folder = url.deletingLastPathComponent().path
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: folder) else { return }
        for name in names where name.hasPrefix(prefix) {
            unlink(folder + "/" + name)
        }
    }

    /// The current version of the file; `nil` when there is none.
    public func fingerprint() -> Fingerprint? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return Fingerprint(
            device: UInt64(info.st_dev), inode: UInt64(info.st_ino), size: Int64(info.st_size),
            modifiedNanoseconds: Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec)
        )
    }
}

/// A store file could not be read or written; says which file, what was tried and why it failed.
public struct TokenStoreError: Error, Sendable, CustomStringConvertible {
    public var path: String
    public var operation: String
    public var code: Int32

    public var description: String {
        let hint = code == EACCES || code == EPERM ? " (check that the user running tokenproxy owns it)" : ""
        return "cannot \(operation) token store file \(path): \(String(cString: strerror(code)))\(hint)"
    }
}
