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
    /// Set when the token endpoint refused the credentials this set would be refreshed with.
    public var rejection: Rejection?

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

    /// The token's lifetime as issued, when known.
    public var lifetime: Duration? {
        guard let expiresAt, let obtainedAt, expiresAt > obtainedAt else { return nil }
        return Duration(timeInterval: expiresAt.timeIntervalSince(obtainedAt))
    }

    /// The `Authorization` header value for this token.
    public var authorizationValue: String? {
        accessToken.map { "\(tokenType) \($0)" }
    }
}
