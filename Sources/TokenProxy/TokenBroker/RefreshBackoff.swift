/// The pause between failed calls to the token endpoint (SPEC §4): jittered exponential growth
/// from about 1 s to a few minutes, never giving up. While a token is still usable, the pauses
/// shrink so that at least four more tries fit before its mandatory window begins; while none is,
/// they never exceed ``withoutToken``, since every request is then being answered
/// `token_unavailable` and an endpoint that comes back must be found soon.
public struct RefreshBackoff: Sendable, Equatable {
    public var initial: Duration
    public var maximum: Duration
    /// The pauses vary by ± this share, so that processes that failed together retry apart.
    public var jitter: Double
    /// The shortest pause, however little time is left.
    public var floor: Duration
    /// The longest pause while no valid token is held, and the longest that tries may stop
    /// after the held token lapses (SPEC §4: every proxy serves again within about 30 s of
    /// the endpoint's return).
    public var withoutToken: Duration

    public init(
        initial: Duration = .seconds(1), maximum: Duration = .seconds(300), jitter: Double = 0.2, floor: Duration = .milliseconds(100),
        withoutToken: Duration = .seconds(30)
    ) {
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.floor = floor
        self.withoutToken = withoutToken
    }

    /// The pause after the `failures`-th consecutive failure (1 for the first).
    /// - Parameters:
    ///   - untilMandatory: time left before the current token enters its mandatory window, if
    ///     a usable token is held (`nil` or not positive: none is).
    ///   - random: a number in 0..<1 (injected so that tests can pin the jitter).
    public func delay(afterFailures failures: Int, untilMandatory: Duration?, random: Double) -> Duration {
        let exponent = min(max(failures - 1, 0), 30)
        var base = min(initial * (1 << exponent), maximum)
        if let untilMandatory, untilMandatory > .zero {
            base = min(base, untilMandatory / 4)
        }
        let factor = 1 + jitter * (random * 2 - 1)
        return min(max(base * factor, floor), limit(untilMandatory: untilMandatory))
    }

    /// The pause after a failure, stretched to what the endpoint asked for (`Retry-After`) when
    /// that is longer, as long as it stays within ``maximum`` and the limit without a token.
    public func pause(afterFailures failures: Int, untilMandatory: Duration?, retryAfter: Duration?, random: Double) -> Duration {
        let delay = delay(afterFailures: failures, untilMandatory: untilMandatory, random: random)
        guard let retryAfter, retryAfter > delay, retryAfter <= maximum else { return delay }
        return min(retryAfter, limit(untilMandatory: untilMandatory))
    }

    /// The longest any pause may be: ``withoutToken`` without a usable token, and no more than
    /// that past the moment the held one lapses.
    private func limit(untilMandatory: Duration?) -> Duration {
        guard let untilMandatory, untilMandatory > .zero else { return withoutToken }
        return untilMandatory + withoutToken
    }
}
