/// Why the broker could not hand out a token.
public enum TokenBrokerError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The refresh token or the client credentials were refused, or there is no refresh token:
    /// a person has to log in again (exit 3, HTTP 401 `reauthentication_required`).
    case reauthenticationRequired(reason: String)
    /// No usable token now, but a later try may succeed (exit 1, HTTP 503 `token_unavailable`).
    case unavailable(reason: String, retryAfter: Duration?)

    public var description: String {
        switch self {
        case .reauthenticationRequired(let reason): "re-authentication required: \(reason)"
        case .unavailable(let reason, _): "no token available: \(reason)"
        }
    }
}
