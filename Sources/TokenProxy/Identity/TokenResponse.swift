import FoundationEssentials

/// What a token endpoint's answer means (SPEC §4), decided without I/O.
enum TokenResponse: Sendable, Equatable {
    case granted(TokenSet)
    /// An RFC 6749 §5.2 error that no retry can fix.
    case refused(TokenEndpointRefusal)
    /// Anything worth retrying later: network, 5xx, 429, a malformed answer.
    case transient(reason: String, retryAfter: Duration?)

    /// Interprets an HTTP answer of the token endpoint received at `receivedAt`.
    static func interpret(status: Int, retryAfter: String?, body: Data, receivedAt: Date, defaultLifetime: Duration) -> TokenResponse {
        let object: [String: JSONValue]? = if case .object(let fields)? = try? JSONValue.parse(body) { fields } else { nil }
        guard status == 200 else {
            let code: String? = if case .string(let text)? = object?["error"] { text } else { nil }
            let description: String? = if case .string(let text)? = object?["error_description"] { text } else { nil }
            if let code, (400...499).contains(status), let refusal = TokenEndpointRefusal(error: code, description: description.map(sanitize)) {
                return .refused(refusal)
            }
            let detail = code.map { ", error \(sanitize($0))" } ?? ""
            return .transient(reason: "answered HTTP \(status)\(detail)", retryAfter: retryAfter.flatMap(parseRetryAfter))
        }
        guard let object else { return .transient(reason: "answered 200 with a body that is not a JSON object", retryAfter: nil) }
        guard case .string(let accessToken)? = object["access_token"], TokenSet.isHeaderSafe(accessToken) else {
            return .transient(reason: "answered 200 without a usable access_token", retryAfter: nil)
        }
        var refreshToken: String?
        switch object["refresh_token"] {
        case nil, .null?: break
        case .string(let text)? where TokenSet.isHeaderSafe(text): refreshToken = text
        default: return .transient(reason: "answered 200 with a malformed refresh_token", retryAfter: nil)
        }
        var tokenType = "Bearer"
        switch object["token_type"] {
        case nil, .null?: break
        // RFC 8693 §2.2.1: `N_A` says the issued token is not an access token of a kind the
        // answer names; it is presented as a bearer token, never as the scheme `N_A`.
        case .string(let text)? where text.lowercased() == "bearer" || text.uppercased() == "N_A": break
        case .string(let text)? where TokenSet.isHeaderSafe(text): tokenType = text
        default: return .transient(reason: "answered 200 with a malformed token_type", retryAfter: nil)
        }
        let seconds: Double
        switch object["expires_in"] {
        case .number(let number)?:
            seconds = number
        case .string(let text)?:
            // Some issuers send a string; only plain digits are taken ("NaN", "1e9", "-5" are not).
            guard !text.isEmpty, text.utf8.count <= 30, text.utf8.allSatisfy({ (0x30...0x39).contains($0) }), let number = Double(text) else {
                return .transient(reason: "answered 200 with a malformed expires_in \"\(sanitize(text))\"", retryAfter: nil)
            }
            seconds = number
        case nil, .null?:
            if let expiry = JWT.expiry(of: accessToken) {
                // A JWT's exp is the issuer's clock; only the lifetime it implies is taken, so a
                // skewed issuer clock does not matter beyond the moment of issue.
                seconds = expiry.timeIntervalSince(receivedAt)
                guard seconds > 0 else {
                    return .transient(reason: "issued a JWT whose exp (\(RFC3339.format(expiry))) is already past", retryAfter: nil)
                }
            } else {
                seconds = defaultLifetime.timeInterval
            }
        default:
            return .transient(reason: "answered 200 with a malformed expires_in", retryAfter: nil)
        }
        guard seconds.isFinite, seconds >= 1 else {
            return .transient(reason: "answered 200 with expires_in out of range (\(seconds)); a token must live at least 1 s", retryAfter: nil)
        }
        // Ten years at most (SPEC §3): an expiry further ahead is clamped, never trusted into an overflow.
        let lifetime = min(seconds, TokenSet.longestLifetime)
        var scope: String?
        if case .string(let text)? = object["scope"] { scope = text }
        var granted = TokenSet(
            accessToken: accessToken, refreshToken: refreshToken, tokenType: tokenType,
            expiresAt: receivedAt + lifetime, obtainedAt: receivedAt, scope: scope
        )
        if let refreshToken { granted.refreshExpiresAt = refreshExpiry(object, refreshToken: refreshToken, receivedAt: receivedAt) }
        return .granted(granted)
    }

    /// When a refresh token issued at `receivedAt` expires, as the response says: Keycloak's
    /// `refresh_expires_in`, Entra ID's `refresh_token_expires_in`, else the `exp` of a JWT
    /// refresh token. `0` (Keycloak's "no limit") and nonsense say nothing.
    static func refreshExpiry(_ object: [String: JSONValue], refreshToken: String, receivedAt: Date) -> Date? {
        for key in ["refresh_expires_in", "refresh_token_expires_in"] {
            let seconds: Double? = switch object[key] {
            case .number(let number)?: number
            case .string(let text)? where !text.isEmpty && text.utf8.count <= 12 && text.utf8.allSatisfy({ (0x30...0x39).contains($0) }): Double(text)
            default: nil
            }
            if let seconds, seconds.isFinite, seconds >= 1 { return receivedAt + min(seconds, TokenSet.longestLifetime) }
        }
        if let expiry = JWT.expiry(of: refreshToken), TokenSet.isInRange(expiry, now: receivedAt) { return expiry }
        return nil
    }

    /// Text from the endpoint reaches logs: keep it short and printable.
    static func sanitize(_ text: String) -> String {
        String(String.UnicodeScalarView(text.unicodeScalars.prefix(200).map { $0.value >= 0x20 && $0.value < 0x7F ? $0 : "?" }))
    }

    static func parseRetryAfter(_ text: String) -> Duration? {
        guard let seconds = Int(text.trimmingWhitespace()), seconds >= 0 else { return nil }
        return .seconds(min(seconds, 3600))
    }
}

/// An RFC 6749 §5.2 error from the token endpoint that no retry can fix (SPEC §4): either the
/// credentials were refused (a person must log in again or fix the client secret) or the
/// request itself is wrong (the configuration must change).
struct TokenEndpointRefusal: Sendable, Equatable {
    enum Kind: Sendable, Equatable {
        /// `invalid_grant`, `invalid_client`, `unauthorized_client`, `unsupported_grant_type`.
        case credentials
        /// `invalid_scope`, `invalid_request`, `invalid_target`.
        case configuration
    }

    var error: String
    var description: String?
    var kind: Kind

    init?(error: String, description: String?) {
        switch error {
        case "invalid_grant", "invalid_client", "unauthorized_client", "unsupported_grant_type": kind = .credentials
        case "invalid_scope", "invalid_request", "invalid_target": kind = .configuration
        default: return nil
        }
        self.error = error
        self.description = description
    }

    /// What the endpoint said and what to do about it.
    func message(_ configuration: Configuration.Token) -> String {
        let said = "the token endpoint \(configuration.endpoint) refused the request with \(error)\(description.map { " (\($0))" } ?? "")"
        return "\(said); \(remedy(configuration))"
    }

    private func remedy(_ configuration: Configuration.Token) -> String {
        let secret = configuration.clientSecret?.description ?? "none configured"
        switch error {
        case "invalid_grant" where configuration.grant == .tokenExchange:
            return configuration.reauthenticationRemedy
        case "invalid_grant" where configuration.grant == .refreshToken:
            return "the refresh token is expired, revoked or already used: log in again (`tokenproxy login --refresh-token-file FILE`, "
                + "or write {\"version\": 1, \"refresh_token\": \"…\"} to \(configuration.store)); it is picked up without a restart"
        case "invalid_grant", "invalid_client":
            return "check token.clientId (\(configuration.clientID ?? "none")), token.clientAuth (\(configuration.clientAuth.rawValue)) "
                + "and the client secret (\(secret)); a changed secret is picked up without a restart"
        case "unauthorized_client":
            return "this client may not use the \(configuration.grant.rawValue) grant: check token.grant and the client's settings at the issuer"
        case "unsupported_grant_type":
            return "the endpoint does not offer the \(configuration.grant.rawValue) grant: check token.grant and token.endpoint"
        case "invalid_scope":
            return "check token.scope (\(configuration.scope.map { "\"\($0)\"" } ?? "not set")), then reload (SIGHUP)"
        case "invalid_target":
            return "check the resource or audience in token.extraParams, then reload (SIGHUP)"
        default:
            return "check token.clientAuth, token.extraParams and token.endpoint, then reload (SIGHUP)"
        }
    }
}

/// Reads the `exp` claim of a JWT without verifying it: the proxy only needs the expiry.
enum JWT {
    static func expiry(of token: String) -> Date? {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[1].count <= 8192 else { return nil }
        var base64 = String(parts[1].map { $0 == "-" ? "+" : $0 == "_" ? "/" : $0 })
        base64 += String(repeating: "=", count: (4 - base64.count % 4) % 4)
        guard let payload = Data(base64Encoded: base64),
            case .object(let claims)? = try? JSONValue.parse(payload),
            case .number(let exp)? = claims["exp"], exp.isFinite, exp > 0
        else { return nil }
        return Date(timeIntervalSince1970: exp)
    }
}
