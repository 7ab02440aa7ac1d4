import FoundationEssentials

/// The storage of one host (SPEC §3): the store file and the `flock`ed lock file. Every call runs
/// on the blocking-I/O pool.
public struct FileTokenStorage: TokenStorage {
    public let store: TokenStore
    public let lockFile: String

    public init(store: String, lockFile: String) {
        self.store = TokenStore(path: store)
        self.lockFile = lockFile
    }

    public var name: String { store.path }

    /// The lock is the fence: nobody else writes while it is held.
    public var fencesWrites: Bool { false }

    public func read(now: Date, authoritative: Bool) async throws(TokenStoreError) -> StoredTokens {
        let store = self.store
        let read = try await BlockingIO.run { () throws(TokenStoreError) in try store.readVersion(now: now) }
        return StoredTokens(contents: read.contents, version: read.version.map(StorageVersion.file))
    }

    public func currentVersion() async -> StorageVersion? {
        let store = self.store
        return await BlockingIO.run { store.fingerprint() }.map(StorageVersion.file)
    }

    public func lock(timeout: Duration) async throws(TokenStoreError) -> any TokenStorageLock {
        let path = lockFile
        do {
            return try await BlockingIO.run { () throws(FileLockError) in try FileLock.acquire(path: path, timeout: timeout) }
        } catch {
            if case .refused(_, let reason) = error { throw .refused(path: path, reason: reason) }
            throw .unavailable(reason: error.description)
        }
    }

    public func write(_ tokens: TokenSet, replacing expected: StorageVersion?) async throws(TokenStoreError) -> StorageVersion? {
        let store = self.store
        return try await BlockingIO.run { () throws(TokenStoreError) in
            // Under the lock nobody else writes: leftovers are from writers that were killed.
            store.removeAbandonedTemporaryFiles()
            return try store.write(tokens)
        }.map(StorageVersion.file)
    }

    public func quarantine(ifStill version: StorageVersion, now: Date) async throws(TokenStoreError) -> String? {
        guard case .file(let fingerprint) = version else { return nil }
        let store = self.store
        return try await BlockingIO.run { () throws(TokenStoreError) in try store.quarantine(ifStill: fingerprint, now: now) }
    }

    /// How often the store file is looked at for another process's writes.
    static let pollInterval = Duration.milliseconds(250)

    /// Calls `changed` when the store file is replaced or modified, looked at every
    /// ``pollInterval`` with one `lstat`: a token that `tokenproxy refresh`, `login` or a
    /// `credential` command stored reaches the proxy, and its sinks, within a second (SPEC §2.5).
    /// Polling needs nothing of the file system (inotify misses other hosts' writes on network
    /// file systems; there, attribute caching may delay what a poll sees).
    public func watchChanges(_ changed: @escaping @Sendable () async -> Void) async {
        let store = self.store
        var seen = await BlockingIO.run { store.fingerprint() }
        while !Task.isCancelled {
            do { try await Task.sleep(for: Self.pollInterval) } catch { return }
            let now = await BlockingIO.run { store.fingerprint() }
            guard now != seen else { continue }
            seen = now
            await changed()
        }
    }

    public func problem() async -> String? { nil }

    public func shutdown() async {}
}

extension FileLock: TokenStorageLock {}
