/// The pause between failed calls to the token endpoint (SPEC §4): jittered exponential growth
/// from about 1 s to a few minutes, never giving up. While a token is still usable, the pauses
/// shrink so that at least four more tries fit before its mandatory window begins.
public struct RefreshBackoff: Sendable, Equatable {
    public var initial: Duration
    public var maximum: Duration
    /// The pauses vary by ± this share, so that processes that failed together retry apart.
    public var jitter: Double
    /// The shortest pause, however little time is left.
    public var floor: Duration

    public init(initial: Duration = .seconds(1), maximum: Duration = .seconds(300), jitter: Double = 0.2, floor: Duration = .milliseconds(100)) {
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.floor = floor
    }

    /// The pause after the `failures`-th consecutive failure (1 for the first).
    /// - Parameters:
    ///   - untilMandatory: time left before the current token enters its mandatory window, if it
    ///     is still usable.
    ///   - random: a number in 0..<1 (injected so that tests can pin the jitter).
    public func delay(afterFailures failures: Int, untilMandatory: Duration?, random: Double) -> Duration {
        let exponent = min(max(failures - 1, 0), 30)
        var base = min(initial * (1 << exponent), maximum)
        if let untilMandatory, untilMandatory > .zero {
            base = min(base, untilMandatory / 4)
        }
        let factor = 1 + jitter * (random * 2 - 1)
        return max(base * factor, floor)
    }
}
