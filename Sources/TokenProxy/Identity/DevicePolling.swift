import FoundationEssentials

/// The polling rules of the device authorization grant (RFC 8628 §3.4–3.5), decided without
/// I/O: time is an input. Poll every `interval`; `slow_down` adds 5 seconds to it for good;
/// `authorization_pending` and a failed call wait one interval; the user's refusal, the code's
/// expiry or any other error end the login.
struct DevicePolling: Sendable {
    private(set) var interval: Duration
    let expiresAt: Date

    /// What the token endpoint answered to one poll.
    enum Answer: Sendable, Equatable {
        case granted(TokenSet)
        case authorizationPending
        case slowDown
        case accessDenied
        case expiredToken
        /// Another RFC 6749 error: nothing a further poll can change.
        case refused(String)
        /// No answer, or one that is not OAuth (network, 5xx): the next poll may do better.
        case unanswered(String)
    }

    enum Action: Sendable, Equatable {
        case poll(after: Duration)
        case finished(TokenSet)
        case fail(LoginError)
    }

    init(interval: Duration, expiresAt: Date) {
        self.interval = interval
        self.expiresAt = expiresAt
    }

    /// The first poll.
    func start() -> Action { .poll(after: interval) }

    mutating func next(after answer: Answer, now: Date) -> Action {
        switch answer {
        case .granted(let tokens):
            return .finished(tokens)
        case .accessDenied:
            return .fail(.refused("the sign-in was declined (access_denied)"))
        case .expiredToken:
            return .fail(.refused("the code expired before the sign-in was completed (expired_token); run `tokenproxy login --device` again"))
        case .refused(let reason):
            return .fail(.refused(reason))
        case .slowDown:
            interval += .seconds(5)
        case .authorizationPending, .unanswered:
            break
        }
        guard now + interval.timeInterval < expiresAt else {
            return .fail(.refused("the code expired before the sign-in was completed; run `tokenproxy login --device` again"))
        }
        return .poll(after: interval)
    }
}

/// Why a login did not store a refresh token.
public enum LoginError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The configuration lacks what the login needs (an endpoint, a client id): exit 2.
    case misconfigured(String)
    /// The issuer or the user said no, or the code expired: exit 3.
    case refused(String)
    /// The issuer or the store could not be reached: exit 1.
    case unavailable(String)

    public var description: String {
        switch self {
        case .misconfigured(let reason), .refused(let reason), .unavailable(let reason): reason
        }
    }
}
