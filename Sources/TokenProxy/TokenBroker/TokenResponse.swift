import FoundationEssentials

/// What a token endpoint's answer means (SPEC §4), decided without I/O.
enum TokenResponse: Sendable, Equatable {
    case granted(TokenSet)
    /// RFC 6749 §5.2 errors that no retry can fix: re-login or new client credentials are needed.
    case permanent(error: String, description: String?)
    /// Anything worth retrying later: network, 5xx, 429, a malformed answer.
    case transient(reason: String, retryAfter: Duration?)

    static let permanentErrors: Set<String> = ["invalid_grant", "invalid_client", "unauthorized_client", "unsupported_grant_type"]

    /// Interprets an HTTP answer of the token endpoint received at `receivedAt`.
    static func interpret(status: Int, retryAfter: String?, body: Data, receivedAt: Date, defaultLifetime: Duration) -> TokenResponse {
        let object: [String: JSONValue]? = if case .object(let fields)? = try? JSONValue.parse(body) { fields } else { nil }
        guard status == 200 else {
            let code: String? = if case .string(let text)? = object?["error"] { text } else { nil }
            let description: String? = if case .string(let text)? = object?["error_description"] { text } else { nil }
            if let code, (400...499).contains(status), permanentErrors.contains(code) {
                return .permanent(error: code, description: description.map(sanitize))
            }
            let detail = code.map { ", error \(sanitize($0))" } ?? ""
            return .transient(reason: "token endpoint answered HTTP \(status)\(detail)", retryAfter: retryAfter.flatMap(parseRetryAfter))
        }
        guard let object else { return .transient(reason: "token endpoint answered 200 with a body that is not a JSON object", retryAfter: nil) }
        guard case .string(let accessToken)? = object["access_token"], isHeaderSafe(accessToken) else {
            return .transient(reason: "token endpoint answered 200 without a usable access_token", retryAfter: nil)
        }
        var refreshToken: String?
        switch object["refresh_token"] {
        case nil, .null?: break
        case .string(let text)? where isHeaderSafe(text): refreshToken = text
        default: return .transient(reason: "token endpoint answered 200 with a malformed refresh_token", retryAfter: nil)
        }
        var tokenType = "Bearer"
        switch object["token_type"] {
        case nil, .null?: break
        case .string(let text)? where text.lowercased() == "bearer": break
        case .string(let text)? where isHeaderSafe(text): tokenType = text
        default: return .transient(reason: "token endpoint answered 200 with a malformed token_type", retryAfter: nil)
        }
        let lifetime: Duration
        switch object["expires_in"] {
        case .number(let seconds)?:
            guard seconds.isFinite, seconds >= 1, seconds <= 10 * 365 * 86_400 else {
                return .transient(reason: "token endpoint answered 200 with expires_in out of range", retryAfter: nil)
            }
            lifetime = Duration(timeInterval: seconds)
        case .string(let text)?:
            guard let seconds = Int(text), seconds >= 1, seconds <= 10 * 365 * 86_400 else {
                return .transient(reason: "token endpoint answered 200 with a malformed expires_in", retryAfter: nil)
            }
            lifetime = .seconds(seconds)
        case nil, .null?:
            if let expiry = JWT.expiry(of: accessToken) {
                // A JWT's exp is the issuer's clock; only the lifetime it implies is taken, so a
                // skewed issuer clock does not matter beyond the moment of issue.
                guard expiry > receivedAt else {
                    return .transient(reason: "token endpoint issued a JWT whose exp is already past", retryAfter: nil)
                }
                lifetime = Duration(timeInterval: expiry.timeIntervalSince(receivedAt))
            } else {
                lifetime = defaultLifetime
            }
        default:
            return .transient(reason: "token endpoint answered 200 with a malformed expires_in", retryAfter: nil)
        }
        var scope: String?
        if case .string(let text)? = object["scope"] { scope = text }
        return .granted(TokenSet(
            accessToken: accessToken, refreshToken: refreshToken, tokenType: tokenType,
            expiresAt: receivedAt + lifetime.timeInterval, obtainedAt: receivedAt, scope: scope
        ))
    }

    /// A token must be usable verbatim in an HTTP header: visible ASCII only, so that a hostile
    /// endpoint cannot inject header lines.
    static func isHeaderSafe(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.count <= 16 * 1024 && text.utf8.allSatisfy { (0x21...0x7E).contains($0) }
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
