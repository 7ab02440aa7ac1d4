import FoundationEssentials
import Logging

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
        /// The store file, or the fleet row and its database.
        public var store: String
        /// Why the store cannot be reached now (the fleet database is down), if that is so.
        public var storeProblem: String?
        /// When the refresh token expires, when known, and whether that is within
        /// `token.refreshTokenWarning` (a login will be needed soon).
        public var refreshTokenExpiresAt: Date?
        public var refreshTokenWarning: Bool
        /// The latest refreshes and adoptions, newest first.
        public var refreshes: [RefreshHistoryEntry] = []
    }

    public func status() async -> Status {
        let current = gate.current
        var status = Status(
            expiresAt: current?.accessToken == nil ? nil : current?.expiresAt, hasRefreshToken: current?.refreshToken != nil,
            lastRefresh: gate.lastRefresh, failure: nil, reauthenticationRequired: false, refreshing: isRefreshing,
            store: storage.name, storeProblem: await storage.problem(),
            refreshTokenExpiresAt: current?.refreshToken == nil ? nil : current?.refreshExpiresAt, refreshTokenWarning: false,
            refreshes: history.reversed()
        )
        if let expiresAt = status.refreshTokenExpiresAt {
            status.refreshTokenWarning = now() >= expiresAt - configuration.refreshTokenWarning.timeInterval
        }
        switch gate.failure {
        case .none: break
        case .transient(_, _, let reason): status.failure = reason
        case .permanent(let error, _):
            status.failure = RefreshGate.reason(error)
            if case .reauthenticationRequired = error { status.reauthenticationRequired = true }
        }
        return status
    }

    /// The store file, or the fleet's row and database, for messages.
    public var storeName: String { storage.name }

    /// What the store holds now, read past any cached copy (`tokenproxy token`).
    public func storedContents() async throws(TokenBrokerError) -> TokenStore.Contents {
        try await readStore(authoritative: true)
    }

    /// Marks the current access token expired, in the store too, so that the next request of
    /// any process sharing the store refreshes it (the "expire it and see nothing break" test).
    public func expireCurrentToken() async throws(TokenBrokerError) {
        await finishWrites()
        let lock = try await takeLock()
        defer { lock.release() }
        let stored = try await readStoreVersion(authoritative: true)
        var tokens = stored.contents.tokens ?? gate.current ?? TokenSet()
        guard tokens.accessToken != nil else { return }
        let now = self.now()
        tokens.expiresAt = now
        if tokens.obtainedAt.map({ $0 > now }) ?? false { tokens.obtainedAt = now }
        try await writeReplacingByHand(tokens, replacing: stored.version)
        logger.info("access token marked expired on request", metadata: ["store": "\(storage.name)"])
    }

    /// A write by hand (expire, import, logout) under the lock, which then stands for every need.
    func writeReplacingByHand(_ tokens: TokenSet, replacing version: StorageVersion?) async throws(TokenBrokerError) {
        guard case .written = try await write(tokens, replacing: version) else {
            throw .unavailable(reason: "the token store \(storage.name) changed while it was being written; try again", retryAfter: nil)
        }
        gate.replaced(by: tokens)
        publishCurrent()
    }

    /// Applies a reloaded `token.*` (SPEC §8): new windows, endpoint, client or store take effect
    /// at once and clear a failure; tokens obtained under another endpoint, client, grant or
    /// scope are dropped and the next need refreshes.
    public func reconfigure(_ next: Configuration.Token, endpoint nextEndpoint: TokenEndpointClient) async {
        await reconfigure(next, tokenEndpoint: nextEndpoint)
    }

    /// ``reconfigure(_:endpoint:)`` over any token endpoint.
    func reconfigure(_ next: Configuration.Token, tokenEndpoint nextEndpoint: any TokenEndpoint) async {
        let previous = configuration
        let previousEndpoint = endpoint
        let running = refreshTask
        configuration = next
        discovered = false
        if let file = storage as? FileTokenStorage, file.store.path != next.store || file.lockFile != next.lockFile {
            storage = FileTokenStorage(store: next.store, lockFile: next.lockFile)
            if storageWatcher != nil { watchStorage() }
        }
        endpoint = nextEndpoint
        let dropTokens = !next.issuesSameTokens(as: previous)
        gate.reconfigure(
            windows: RefreshWindows(refreshBefore: next.refreshBefore, minValidity: next.minValidity),
            minRefreshInterval: next.minRefreshInterval, dropTokens: dropTokens, now: now()
        )
        publishCurrent()
        logger.info("token settings reloaded", metadata: ["endpoint": "\(next.endpoint)", "tokensDropped": "\(dropTokens)"])
        // The old client closes once the refresh it may be serving is over.
        Task {
            _ = await running?.value
            await previousEndpoint.shutdown()
        }
    }
}
