import FoundationEssentials

/// A tool that does not go through the proxy reports that its upstream refused a token
/// (`tokenproxy credential git erase`, SPEC §2.5): the decision, as an upstream 401 makes it in
/// the proxy (SPEC §5). The token is dropped from the store only while the store still holds it
/// (a newer token is never thrown away for an older one's refusal), and at most once per
/// `token.minRefreshInterval` (an upstream that refuses every token gets no refresh storm).
enum RejectedToken {
    enum Decision: Sendable, Equatable {
        /// Drop the store's access token (the refresh token stays), so the next need refreshes.
        case drop
        /// The store holds another token, or none: nothing to do, the next need gets that one.
        case notHeld
        /// The token was obtained less than `minRefreshInterval` ago; it is kept.
        case obtainedRecently(dropAllowedAt: Date)
    }

    static func decide(stored: TokenSet?, rejected: String, now: Date, minRefreshInterval: Duration) -> Decision {
        guard let stored, stored.accessToken == rejected else { return .notHeld }
        // A token of unknown age is taken as old; one "obtained" in the future (a clock set
        // back) as obtained now.
        guard let obtainedAt = stored.obtainedAt else { return .drop }
        let allowedAt = min(obtainedAt, now) + minRefreshInterval.timeInterval
        return now >= allowedAt ? .drop : .obtainedRecently(dropAllowedAt: allowedAt)
    }
}

extension TokenBroker {
    /// What ``rejectStoredToken(_:)`` did.
    public enum RejectionOutcome: Sendable, Equatable {
        /// The access token was dropped from the store: the next need of any process refreshes.
        case dropped
        /// The store holds another token (or none): the next need gets that one.
        case notHeld
        /// The token was obtained less than `token.minRefreshInterval` ago and is kept.
        case obtainedRecently(retryAfter: Duration)
    }

    /// Marks `accessToken` rejected, as an upstream 401 would (SPEC §2.5, §5): under the lock,
    /// when the store still holds it and it is not too recent, its access token is dropped so
    /// that the next need refreshes. No call to the token endpoint is made here.
    public func rejectStoredToken(_ accessToken: String) async throws(TokenBrokerError) -> RejectionOutcome {
        await finishWrites()
        let lock = try await takeLock()
        defer { lock.release() }
        let stored = try await readStoreVersion(authoritative: true)
        let now = self.now()
        switch RejectedToken.decide(stored: stored.contents.tokens, rejected: accessToken, now: now, minRefreshInterval: configuration.minRefreshInterval) {
        case .notHeld:
            return .notHeld
        case .obtainedRecently(let allowedAt):
            logger.info("a tool reported the access token refused, but it was obtained less than token.minRefreshInterval ago; it is kept", metadata: ["store": "\(storage.name)"])
            return .obtainedRecently(retryAfter: Duration(timeInterval: allowedAt.timeIntervalSince(now)))
        case .drop:
            guard var tokens = stored.contents.tokens else { return .notHeld }
            tokens.dropAccessToken()
            try await writeReplacingByHand(tokens, replacing: stored.version)
            logger.info("access token dropped: a tool reported that its upstream refused it; the next need refreshes", metadata: ["store": "\(storage.name)"])
            return .dropped
        }
    }
}
