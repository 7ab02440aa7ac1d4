import Logging

extension Configuration {
    /// The storage this configuration names: the fleet's database when `fleet` is set (SPEC §2.3),
    /// else the store file and its lock file (SPEC §3).
    /// - Throws: ``TokenStoreError/refused(path:reason:)`` when a fleet key file cannot be used.
    public func makeTokenStorage(logger: Logger) throws(TokenStoreError) -> any TokenStorage {
        if let fleet { return try PostgresTokenStorage(fleet: fleet, logger: logger) }
        return FileTokenStorage(store: token.store, lockFile: token.lockFile)
    }
}
