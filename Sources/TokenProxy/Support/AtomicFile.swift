import FoundationEssentials
import Glibc

/// Replaces a file so that readers see the old or the new contents, never a mix or nothing: a
/// temporary file in the same folder (never following a symbolic link), written with exactly
/// `mode`, fsync, rename over the file, fsync of the folder. The token store and the token
/// sinks (SPEC §3, §2.5) are written this way.
///
/// Blocks on the file system: call it through ``BlockingIO``.
enum AtomicFile {
    /// A system call failed: which file, what was being done, and `errno`.
    struct Failure: Error, Equatable {
        var path: String
        var operation: String
        var code: Int32
    }

    /// The prefix of the temporary files written for `path`; leftovers of a killed writer
    /// start with it.
    static func temporaryPrefix(of path: String) -> String { "\(path).tmp-" }

    /// Writes `contents` to `path` atomically; returns the `stat` of the file written (`nil` if
    /// it could not be had).
    @discardableResult
    static func replace(_ path: String, with contents: Data, mode: mode_t) throws(Failure) -> stat? {
        let temporary = "\(temporaryPrefix(of: path))\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
        guard descriptor >= 0 else { throw Failure(path: temporary, operation: "create", code: errno) }
        var succeeded = false
        defer { if !succeeded { unlink(temporary) } }
        let writeError: Int32? = contents.withUnsafeBytes { bytes in
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
        // The umask may have narrowed the mode but never widened it; make it exactly `mode`.
        if let code = writeError ?? (fchmod(descriptor, mode) != 0 ? errno : nil) ?? (fsync(descriptor) != 0 ? errno : nil) {
            close(descriptor)
            throw Failure(path: temporary, operation: "write", code: code)
        }
        var info = stat()
        let inspected = fstat(descriptor, &info) == 0
        close(descriptor)
        guard rename(temporary, path) == 0 else { throw Failure(path: path, operation: "replace", code: errno) }
        succeeded = true
        let folderDescriptor = open(StoreFolder.folder(of: path), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if folderDescriptor >= 0 {
            fsync(folderDescriptor)
            close(folderDescriptor)
        }
        return inspected ? info : nil
    }

    /// Removes the temporary files that writers of `path` killed mid-write left behind. Call it
    /// only when no one else writes `path` (under the store's lock; a sink's one writer).
    static func removeTemporaryFiles(of path: String) {
        let url = URL(fileURLWithPath: temporaryPrefix(of: path))
        let prefix = url.lastPathComponent
        let folder = url.deletingLastPathComponent().path
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: folder) else { return }
        for name in names where name.hasPrefix(prefix) {
            unlink(folder + "/" + name)
        }
    }
}
