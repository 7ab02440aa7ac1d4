import FoundationEssentials

/// Where the token set lives and how processes take turns refreshing it (SPEC §3, §3.1): a file
/// and a `flock`ed lock file shared by the processes of one host (``FileTokenStorage``), or a row
/// and an advisory lock in PostgreSQL shared by a fleet of hosts (``PostgresTokenStorage``).
///
/// ``TokenBroker`` writes the protocol of SPEC §3 once, against this.
public protocol TokenStorage: Sendable {
    /// Names the storage in messages: the store file's path, or `fleet "billing-api"`.
    var name: String { get }

    /// Whether a write can be refused because the storage moved on since it was read
    /// (``TokenStoreError/superseded``). Such a storage is written before a new token is used.
    var fencesWrites: Bool { get }

    /// What the storage holds, and the version read. With `authoritative` false the answer may
    /// come from a copy that change notifications keep current, so that no request waits on a
    /// database; reads under the lock are authoritative.
    func read(now: Date, authoritative: Bool) async throws(TokenStoreError) -> StoredTokens

    /// The version held now (`nil`: nothing stored), as cheaply as the storage can tell.
    func currentVersion() async -> StorageVersion?

    /// Takes the refresh lock, waiting at most `timeout`. The lock is also released when its
    /// holder dies.
    func lock(timeout: Duration) async throws(TokenStoreError) -> any TokenStorageLock

    /// Replaces the token set. `expected` is the version read under the lock; a storage that
    /// fences its writes refuses when it holds another one now. Returns the version written.
    @discardableResult
    func write(_ tokens: TokenSet, replacing expected: StorageVersion?) async throws(TokenStoreError) -> StorageVersion?

    /// Moves an unparseable store aside, unless it changed since it was judged so; returns where
    /// it went, or `nil` if it was left alone. Call it only while holding the lock.
    func quarantine(ifStill version: StorageVersion, now: Date) async throws(TokenStoreError) -> String?

    /// Calls `changed` each time another process changed the storage (a fleet's announcement, a
    /// store file replaced), until the task is cancelled.
    func watchChanges(_ changed: @escaping @Sendable () async -> Void) async

    /// Why the storage cannot be reached now, if that is so (for `/status` and `/readyz`).
    func problem() async -> String?

    /// Closes connections; call once before the process exits.
    func shutdown() async
}

/// A held refresh lock.
public protocol TokenStorageLock: Sendable {
    /// Releases the lock; whatever was written under it is already durable.
    func release()
}

/// One version of the stored token set: "has it changed since?" is a comparison of two versions.
public enum StorageVersion: Sendable, Hashable {
    /// The store file's identity (device, inode, size, modification time).
    case file(TokenStore.Fingerprint)
    /// The fleet row's version number.
    case row(Int64)
}

/// What a read of the storage found, and the version it came from (`nil`: nothing stored).
public struct StoredTokens: Sendable, Equatable {
    public var contents: TokenStore.Contents
    public var version: StorageVersion?

    public init(contents: TokenStore.Contents, version: StorageVersion?) {
        self.contents = contents
        self.version = version
    }
}
