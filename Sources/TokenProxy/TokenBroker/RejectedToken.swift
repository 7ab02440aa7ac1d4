import FoundationEssentials

/// A tool that does not go through the proxy reports that its upstream refused a token
/// (`tokenproxy credential git erase`, SPEC §2.5): the decision, as an upstream 401 makes it in
/// the proxy (SPEC §5). The token is dropped from the store only while the store still holds it
/// (a newer token is never thrown away for an older one's refusal), and at most once per
/// `token.minRefreshInterval` (an upstream that refuses every token gets no refresh storm),
/// counted from the last such drop, which the store remembers (`access_token_refused_at`), as the
/// proxy counts from its last 401-caused refresh.
enum RejectedToken {
    enum Decision: Sendable, Equatable {
        /// Drop the store's access token (the refresh token stays), so the next need refreshes.
        case drop
        /// The store holds another token, or none: nothing to do, the next need gets that one.
        case notHeld
        /// A token was dropped less than `minRefreshInterval` ago; this one is kept.
        case throttled(dropAllowedAt: Date)
    }

    static func decide(stored: TokenSet?, rejected: String, now: Date, minRefreshInterval: Duration) -> Decision {
        guard let stored, stored.accessToken == rejected else { return .notHeld }
        // A drop "in the future" (a clock set back, a host whose clock is behind) proves
        // nothing: it would hold every report back until that time.
        guard let refusedAt = stored.accessTokenRefusedAt, refusedAt <= now else { return .drop }
        let allowedAt = refusedAt + minRefreshInterval.timeInterval
        return now >= allowedAt ? .drop : .throttled(dropAllowedAt: allowedAt)
    }
}

extension TokenBroker {
    /// What ``rejectStoredToken(_:)`` did.
    public enum RejectionOutcome: Sendable, Equatable {
        /// The access token was dropped from the store: the next need of any process refreshes.
        case dropped
        /// The store holds another token (or none): the next need gets that one.
        case notHeld
        /// A token was dropped less than `token.minRefreshInterval` ago; this one is kept.
        case throttled(retryAfter: Duration)
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
        case .throttled(let allowedAt):
            logger.info("a tool reported the access token refused, but one was dropped less than token.minRefreshInterval ago; it is kept", metadata: ["store": "\(storage.name)"])
            return .throttled(retryAfter: Duration(timeInterval: allowedAt.timeIntervalSince(now)))
        case .drop:
            guard var tokens = stored.contents.tokens else { return .notHeld }
            tokens.dropAccessToken()
            tokens.accessTokenRefusedAt = now
            try await writeReplacingByHand(tokens, replacing: stored.version)
            logger.info("access token dropped: a tool reported that its upstream refused it; the next need refreshes", metadata: ["store": "\(storage.name)"])
            return .dropped
        }
    }
}
