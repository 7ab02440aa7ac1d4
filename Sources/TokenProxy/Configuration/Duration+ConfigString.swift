extension Duration {
    /// Parses a configuration duration: a whole number followed by `ms`, `s`, `m`, `h` or `d`
    /// (`250ms`, `5s`, `5m`, `1h`, `7d`). Returns `nil` for anything else.
    public init?(configString text: String) {
        let digits = text.prefix { $0.isASCII && $0.isNumber }
        guard !digits.isEmpty, digits.count <= 12, let value = Int64(digits) else { return nil }
        switch text.dropFirst(digits.count) {
        case "ms": self = .milliseconds(value)
        case "s": self = .seconds(value)
        case "m": self = .seconds(value * 60)
        case "h": self = .seconds(value * 3600)
        case "d": self = .seconds(value * 86_400)
        default: return nil
        }
    }

    /// The duration the way a configuration file would spell it (`1500ms`, `5s`, `5m`).
    public var configString: String {
        let milliseconds = self.milliseconds
        if milliseconds % 3_600_000 == 0, milliseconds != 0 { return "\(milliseconds / 3_600_000)h" }
        if milliseconds % 60_000 == 0, milliseconds != 0 { return "\(milliseconds / 60_000)m" }
        if milliseconds % 1000 == 0 { return "\(milliseconds / 1000)s" }
        return "\(milliseconds)ms"
    }

    /// Whole milliseconds, rounded towards zero.
    public var milliseconds: Int64 {
        let (seconds, attoseconds) = self.components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }

    /// Seconds as a floating-point number, for arithmetic with `Date`.
    public var timeInterval: Double {
        let (seconds, attoseconds) = self.components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    /// The duration of a `Date` difference, saturating at ±285 years (and zero for NaN), so that
    /// no time from a store or a token response can make the conversion trap.
    public init(timeInterval: Double) {
        guard !timeInterval.isNaN else {
            self = .zero
            return
        }
        self = .nanoseconds(Int64((min(max(timeInterval, -9e9), 9e9) * 1e9).rounded()))
    }
}
