import Glibc

/// The checks SPEC §3 makes before the store or the lock file is touched: the folder exists
/// (created 0700, parents included, when missing), is a folder, and no one but its owner can
/// write to it (as ssh's StrictModes: a sticky world-writable folder such as `/tmp` counts as
/// writable by others); the file itself is never a symbolic link.
///
/// Every function blocks on the file system: call them through ``BlockingIO``.
enum StoreFolder {
    /// Why `path` (the store or the lock file, named by `key`) may not be used, or `nil`.
    /// With `create`, a missing folder is created first.
    static func refusal(of path: String, key: String, create: Bool) -> String? {
        let folder = folder(of: path)
        var info = stat()
        if lstat(folder, &info) != 0 {
            guard errno == ENOENT else { return "cannot inspect the folder \(folder) of \(key) \(path): \(String(cString: strerror(errno)))" }
            guard create else { return nil }
            if let problem = makeFolders(folder) { return "cannot create the folder \(folder) of \(key) \(path): \(problem)" }
            guard lstat(folder, &info) == 0 else { return "cannot inspect the folder \(folder) of \(key) \(path): \(String(cString: strerror(errno)))" }
        }
        if info.st_mode & S_IFMT == S_IFLNK {
            // A link to a folder is resolved once; what matters is who can write the folder itself.
            guard stat(folder, &info) == 0 else { return "the folder \(folder) of \(key) \(path) is a symbolic link that leads nowhere" }
        }
        guard info.st_mode & S_IFMT == S_IFDIR else { return "\(folder), the folder of \(key) \(path), is not a folder" }
        let writableByOthers = info.st_mode & (S_IWGRP | S_IWOTH)
        if writableByOthers != 0 {
            let mode = String(info.st_mode & 0o7777, radix: 8)
            return "\(key) \(path) is in \(folder), which others than its owner can write (mode \(mode)); "
                + "anyone who can write it can replace the token: run `chmod go-w \(folder)` or choose a folder of its own"
        }
        if lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFLNK {
            return "\(key) \(path) is a symbolic link; tokenproxy opens its token files only directly: point \(key) at the real file"
        }
        return nil
    }

    static func folder(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    /// `mkdir -p` with mode 0700 for every folder it creates.
    private static func makeFolders(_ folder: String) -> String? {
        if mkdir(folder, 0o700) == 0 || errno == EEXIST { return nil }
        guard errno == ENOENT else { return String(cString: strerror(errno)) }
        let parent = Self.folder(of: folder)
        guard parent != folder, parent != "/", parent != "." else { return String(cString: strerror(ENOENT)) }
        if let problem = makeFolders(parent) { return problem }
        return mkdir(folder, 0o700) == 0 || errno == EEXIST ? nil : String(cString: strerror(errno))
    }
}
