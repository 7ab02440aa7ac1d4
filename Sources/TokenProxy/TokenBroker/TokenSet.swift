import FoundationEssentials

/// What the store holds: an access token with its absolute expiry, and the refresh token.
///
/// All instants are absolute (`Date` is seconds since an epoch, independent of any time zone).
public struct TokenSet: Sendable, Equatable {
    public var accessToken: String?
    public var refreshToken: String?
    public var tokenType: String
    public var expiresAt: Date?
    /// When this process or another one received the access token; with `expiresAt` it gives the
    /// token's lifetime, which scales the refresh windows for short-lived tokens.
    public var obtainedAt: Date?
    public var scope: String?
    /// When the refresh token stops working, when known (SPEC §2.1: from the token response,
    /// a JWT refresh token's `exp`, or `token.refreshTokenLifetime`).
    public var refreshExpiresAt: Date?
    /// Set when the token endpoint refused the credentials this set would be refreshed with.
    public var rejection: Rejection?
    /// When a tool last reported an access token of this store refused by its upstream and it
    /// was dropped (`credential git erase`, SPEC §2.5): kept across refreshes, so that such
    /// reports cause at most one refresh per `token.minRefreshInterval`, from any process.
    public var accessTokenRefusedAt: Date?

    public init(
        accessToken: String? = nil, refreshToken: String? = nil, tokenType: String = "Bearer",
        expiresAt: Date? = nil, obtainedAt: Date? = nil, scope: String? = nil, rejection: Rejection? = nil
    ) {
        self.accessToken = accessToken
        self.refreshToken = refreshToken
        self.tokenType = tokenType
        self.expiresAt = expiresAt
        self.obtainedAt = obtainedAt
        self.scope = scope
        self.rejection = rejection
    }

    /// A permanent refusal by the token endpoint, recorded in the store so that no process on the
    /// host calls the endpoint again with the same credentials.
    public struct Rejection: Sendable, Equatable {
        /// The RFC 6749 §5.2 error code, e.g. `invalid_grant`.
        public var error: String
        public var errorDescription: String?
        /// ``TokenCredentials/fingerprint`` of the refused credentials (not the credentials).
        public var credential: String
        public var at: Date
    }

    /// Whether this set was obtained after `other` (or, when either does not say when it was
    /// obtained, expires later): a store never goes back to an older token.
    func isNewer(than other: TokenSet?) -> Bool {
        guard let other else { return true }
        if let obtainedAt, let otherObtainedAt = other.obtainedAt { return obtainedAt > otherObtainedAt }
        return (expiresAt ?? .distantPast) > (other.expiresAt ?? .distantPast)
    }

    /// The token's lifetime as issued, when known.
    public var lifetime: Duration? {
        guard let expiresAt, let obtainedAt, expiresAt > obtainedAt else { return nil }
        return Duration(timeInterval: expiresAt.timeIntervalSince(obtainedAt))
    }

    /// Drops an access token that must not be sent: one a header cannot carry verbatim, or whose
    /// times are out of range (before 1970, or more than ten years after `now`: a damaged or
    /// hostile store, SPEC §3). Returns what was dropped and why, for the log; the refresh token
    /// stays, so that a refresh can replace what was dropped.
    mutating func discardUnusableAccessToken(now: Date) -> String? {
        guard let accessToken else { return nil }
        var problem: String?
        if !TokenSet.isHeaderSafe(accessToken) {
            problem = "the access token holds bytes an HTTP header cannot carry (CR, LF, NUL, spaces or non-ASCII)"
        } else if !TokenSet.isHeaderSafe(tokenType) {
            problem = "token_type holds bytes an HTTP header cannot carry"
        } else if let expiresAt, !TokenSet.isInRange(expiresAt, now: now) {
            problem = "expires_at \(RFC3339.format(expiresAt)) is before 1970 or more than ten years ahead"
        } else if let obtainedAt, !TokenSet.isInRange(obtainedAt, now: now) {
            problem = "obtained_at \(RFC3339.format(obtainedAt)) is before 1970 or more than ten years ahead"
        }
        guard let problem else { return nil }
        self.accessToken = nil
        self.expiresAt = nil
        self.obtainedAt = nil
        self.tokenType = "Bearer"
        return problem
    }

    /// Forgets the access token (refused by the upstream, or by the endpoint for good); the
    /// refresh token and a rejection stay.
    mutating func dropAccessToken() {
        accessToken = nil
        expiresAt = nil
        obtainedAt = nil
    }

    /// The longest a token may be valid for: an expiry further ahead is clamped (from a token
    /// response) or refused (from a store), so that no arithmetic on it can overflow.
    static let longestLifetime: Double = 10 * 365 * 86_400

    static func isInRange(_ instant: Date, now: Date) -> Bool {
        let seconds = instant.timeIntervalSince1970
        return seconds.isFinite && seconds >= 0 && seconds <= now.timeIntervalSince1970 + longestLifetime + 86_400
    }

    /// A token must be usable verbatim in an HTTP header: visible ASCII only, so that a hostile
    /// endpoint or store cannot inject header lines.
    static func isHeaderSafe(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.count <= 16 * 1024 && text.utf8.allSatisfy { (0x21...0x7E).contains($0) }
    }

    /// The `Authorization` header value for this token.
    public var authorizationValue: String? {
        accessToken.map { "\(tokenType) \($0)" }
    }
}
