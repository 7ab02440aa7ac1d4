import FoundationEssentials

extension TokenBroker {
    /// The broker's state for `/status`, `/readyz` and systemd's `STATUS=`; never a secret.
    public struct Status: Sendable {
        public var expiresAt: Date?
        public var hasRefreshToken: Bool
        public var lastRefresh: RefreshRecord?
        /// Why no token can be had now, if that is so; `reauthenticationRequired` tells the two
        /// kinds of failure apart.
        public var failure: String?
        public var reauthenticationRequired: Bool
        public var refreshing: Bool
    }

    public func status() -> Status {
        var status = Status(
            expiresAt: current?.expiresAt, hasRefreshToken: current?.refreshToken != nil, lastRefresh: lastRefresh,
            failure: nil, reauthenticationRequired: false, refreshing: isRefreshing
        )
        switch failure {
        case .none: break
        case .transient(_, _, let reason): status.failure = reason
        case .permanent(let reason, _, _):
            status.failure = reason
            status.reauthenticationRequired = true
        }
        return status
    }

    /// Marks the current access token expired, in the store too, so that the next request of
    /// any process sharing the store refreshes it (the "expire it and see nothing break" test).
    public func expireCurrentToken() async throws(TokenBrokerError) {
        await finishWrites()
        let lock = try await takeLock()
        defer { lock.release() }
        var tokens = try await readStore(quarantineCorrupt: true).tokens ?? current ?? TokenSet()
        guard tokens.accessToken != nil else { return }
        let now = Date()
        tokens.expiresAt = now
        if tokens.obtainedAt.map({ $0 > now }) ?? false { tokens.obtainedAt = now }
        try await write(tokens)
        adopt(tokens)
        logger.info("access token marked expired on request", metadata: ["store": "\(store.path)"])
    }
}
