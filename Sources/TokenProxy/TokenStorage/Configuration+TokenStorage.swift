import Logging

extension Configuration {
    /// The storage of the identity `identity` (SPEC §2.4): the fleet's database when `fleet` is
    /// set (SPEC §2.3; the row `fleet.name` for `default`, `fleet.name/NAME` for the others),
    /// else the identity's store file and its lock file (SPEC §3).
    /// - Throws: ``TokenStoreError/refused(path:reason:)`` when a fleet key file cannot be used.
    /// Where the selected identity's tokens are kept, for messages: its store file, or its
    /// fleet row (`fleet "NAME"`, `fleet "NAME/IDENTITY"`).
    public var storeDescription: String {
        guard let fleet else { return token.store }
        return "fleet \"\(fleet.name)\(tokenIdentity == Self.defaultIdentity ? "" : "/\(tokenIdentity)")\""
    }

    public func makeTokenStorage(identity: String = Configuration.defaultIdentity, logger: Logger) throws(TokenStoreError) -> any TokenStorage {
        if var fleet {
            if identity != Self.defaultIdentity { fleet.name += "/\(identity)" }
            return try PostgresTokenStorage(fleet: fleet, logger: logger)
        }
        let token = identities[identity] ?? self.token
        return FileTokenStorage(store: token.store, lockFile: token.lockFile)
    }
}
