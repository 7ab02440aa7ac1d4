import NIOCore

/// The timers of one client connection: the check timer, kept armed at the connection machine's
/// next deadline (idle, header and read timeouts), and a request's retry. One of each, so that a
/// request costs no timer of its own unless it is retried.
struct ConnectionSchedule {
    private var check: Scheduled<Void>?
    private var checkAt: NIODeadline?
    private var retry: Scheduled<Void>?

    /// Arms the check timer at `due`, unless it is armed at or before it already.
    mutating func armCheck(at due: NIODeadline, on eventLoop: any EventLoop, _ fire: @escaping () -> Void) {
        if let checkAt, checkAt <= due { return }
        check?.cancel()
        checkAt = due
        check = eventLoop.assumeIsolated().scheduleTask(deadline: due, fire)
    }

    /// The check timer fired: the next one may be armed at any time.
    mutating func checkFired() {
        check = nil
        checkAt = nil
    }

    mutating func scheduleRetry(in delay: TimeAmount, on eventLoop: any EventLoop, _ fire: @escaping () -> Void) {
        retry?.cancel()
        retry = eventLoop.assumeIsolated().scheduleTask(in: delay, fire)
    }

    mutating func cancelRetry() {
        retry?.cancel()
        retry = nil
    }

    mutating func cancelAll() {
        check?.cancel()
        retry?.cancel()
        self = ConnectionSchedule()
    }
}

/// Which sides of a connection have bytes written but not flushed: flushed once per read, not
/// once per part.
struct UnflushedSides: OptionSet {
    let rawValue: UInt8
    static let client = UnflushedSides(rawValue: 1)
    static let upstream = UnflushedSides(rawValue: 2)
}
