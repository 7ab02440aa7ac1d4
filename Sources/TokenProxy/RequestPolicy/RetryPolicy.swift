import NIOCore

/// Whether and when a failed attempt is tried again (SPEC §5), decided without I/O.
struct RetryPolicy: Sendable {
    var attempts: Int
    var backoff: Duration
    var maxBackoff: Duration

    init(_ configuration: Configuration.Retry) {
        attempts = configuration.attempts
        backoff = configuration.backoff
        maxBackoff = configuration.maxBackoff
    }

    enum Failure: Equatable {
        /// Connect refused, or the connection closed before the request was written.
        case notSent
        /// The connection reset after the request was written.
        case resetAfterSending
        /// The upstream answered 502, 503 or 504.
        case unavailableStatus(Int, retryAfter: String?)
    }

    /// The pause before the next attempt, or `nil` to give up. `attempt` counts tries so far.
    func delay(after failure: Failure, attempt: Int, retryableAfterSending: Bool, random: Double) -> TimeAmount? {
        guard attempt < attempts else { return nil }
        let computed = min(backoff * (1 << min(attempt - 1, 20)), maxBackoff) * (0.5 + random / 2)
        switch failure {
        case .notSent:
            return .nanoseconds(Int64(computed.timeInterval * 1e9))
        case .resetAfterSending:
            return retryableAfterSending ? .nanoseconds(Int64(computed.timeInterval * 1e9)) : nil
        case .unavailableStatus(_, let retryAfter):
            guard retryableAfterSending else { return nil }
            if let retryAfter, let seconds = Int(retryAfter.trimmingWhitespace()) {
                // Honour Retry-After up to maxBackoff; a longer wait is the client's to decide.
                guard seconds >= 0, Duration.seconds(seconds) <= maxBackoff else { return nil }
                return .seconds(Int64(seconds))
            }
            return .nanoseconds(Int64(computed.timeInterval * 1e9))
        }
    }

    static func isRetryableStatus(_ status: UInt) -> Bool {
        status == 502 || status == 503 || status == 504
    }
}
