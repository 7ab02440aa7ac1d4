/// Why the broker could not hand out a token.
public enum TokenBrokerError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The refresh token or the client credentials were refused, or there is no refresh token:
    /// a person has to log in again (exit 3, HTTP 401 `reauthentication_required`).
    case reauthenticationRequired(reason: String)
    /// No usable token now, but a later try may succeed (exit 1, HTTP 503 `token_unavailable`).
    case unavailable(reason: String, retryAfter: Duration?)
    /// The configuration, or a file it names, is wrong: nothing changes until it is fixed
    /// (exit 2, HTTP 503 `token_unavailable`).
    case misconfigured(reason: String)
    /// A forced refresh asked for sooner than `token.minRefreshInterval` after the last one (HTTP 429).
    case rateLimited(retryAfter: Duration)

    public var description: String {
        switch self {
        case .reauthenticationRequired(let reason): "re-authentication required: \(reason)"
        case .unavailable(let reason, _): "no token available: \(reason)"
        case .misconfigured(let reason): "no token available, configuration error: \(reason)"
        case .rateLimited(let retryAfter): "a forced refresh ran less than token.minRefreshInterval ago; try again in \(retryAfter.configString)"
        }
    }
}
