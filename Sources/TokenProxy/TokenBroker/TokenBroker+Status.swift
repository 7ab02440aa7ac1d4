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
    }

    public func status() async -> Status {
        let current = gate.current
        var status = Status(
            expiresAt: current?.accessToken == nil ? nil : current?.expiresAt, hasRefreshToken: current?.refreshToken != nil,
            lastRefresh: gate.lastRefresh, failure: nil, reauthenticationRequired: false, refreshing: isRefreshing,
            store: storage.name, storeProblem: await storage.problem(),
            refreshTokenExpiresAt: current?.refreshToken == nil ? nil : current?.refreshExpiresAt, refreshTokenWarning: false
        )
        if let expiresAt = status.refreshTokenExpiresAt {
            status.refreshTokenWarning = Date() >= expiresAt - configuration.refreshTokenWarning.timeInterval
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
        let now = Date()
        tokens.expiresAt = now
        if tokens.obtainedAt.map({ $0 > now }) ?? false { tokens.obtainedAt = now }
        try await writeReplacingByHand(tokens, replacing: stored.version)
        logger.info("access token marked expired on request", metadata: ["store": "\(storage.name)"])
    }

    /// Puts a refresh token obtained elsewhere into the store, through the lock, in place of
    /// whatever it held (`tokenproxy login --refresh-token-file`). No endpoint call is made; a
    /// running proxy sharing the store picks it up at its next need.
    public func importRefreshToken(_ refreshToken: String) async throws(TokenBrokerError) {
        await finishWrites()
        let lock = try await takeLock()
        defer { lock.release() }
        let stored = try await readStoreVersion(authoritative: true)
        var imported = TokenSet(refreshToken: refreshToken)
        configuration.stampRefreshExpiry(&imported, now: Date())
        try await writeReplacingByHand(imported, replacing: stored.version)
        logger.info("refresh token imported into the store", metadata: ["store": "\(storage.name)"])
    }

    /// `tokenproxy logout`: revokes the refresh token at the issuer (RFC 7009) when it has a
    /// revocation endpoint, then empties the store through the lock whatever the issuer said, so
    /// that a running proxy sharing it needs a new login. Returns why the revocation failed, if
    /// it did (the store is empty all the same).
    public func logout() async throws(TokenBrokerError) -> String? {
        await finishWrites()
        let lock = try await takeLock()
        defer { lock.release() }
        let stored = try await readStoreVersion(authoritative: true)
        var problem: String?
        do {
            try await discoverEndpoints()
        } catch {
            problem = "\(error); the token was not revoked"
        }
        if let revocationEndpoint = configuration.revocationEndpoint, let tokens = stored.contents.tokens {
            problem = await revoke(tokens, at: revocationEndpoint)
        }
        try await writeReplacingByHand(TokenSet(), replacing: stored.version)
        logger.info("tokens removed from the store", metadata: ["store": "\(storage.name)", "revoked": "\(problem == nil)"])
        return problem
    }

    /// Revokes the refresh token (which ends the grant, RFC 7009 §2.1), else the access token.
    private func revoke(_ tokens: TokenSet, at url: String) async -> String? {
        guard let (token, hint) = tokens.refreshToken.map({ ($0, "refresh_token") }) ?? tokens.accessToken.map({ ($0, "access_token") }) else { return nil }
        let credentials: TokenCredentials
        do {
            credentials = try endpoint.credentials(refreshToken: nil)
        } catch {
            return "not revoked: \(error)"
        }
        switch await endpoint.post([("token", token), ("token_type_hint", hint)], to: url, credentials: credentials) {
        case .failure(let failure):
            return "the revocation endpoint \(url) \(failure.reason); the token was not revoked"
        case .success(let answer) where answer.status == 200:
            return nil
        case .success(let answer):
            let error: String = if case .string(let code)? = answer.object?["error"] { ", error \(code)" } else { "" }
            return "the revocation endpoint \(url) answered HTTP \(answer.status)\(error); the token was not revoked"
        }
    }

    /// A write by hand (expire, import, logout) under the lock, which then stands for every need.
    private func writeReplacingByHand(_ tokens: TokenSet, replacing version: StorageVersion?) async throws(TokenBrokerError) {
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
        let previous = configuration
        let previousEndpoint = endpoint
        let running = refreshTask
        configuration = next
        discovered = false
        if let file = storage as? FileTokenStorage, file.store.path != next.store || file.lockFile != next.lockFile {
            storage = FileTokenStorage(store: next.store, lockFile: next.lockFile)
        }
        endpoint = nextEndpoint
        let dropTokens = !next.issuesSameTokens(as: previous)
        gate.reconfigure(
            windows: RefreshWindows(refreshBefore: next.refreshBefore, minValidity: next.minValidity),
            minRefreshInterval: next.minRefreshInterval, dropTokens: dropTokens, now: Date()
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
