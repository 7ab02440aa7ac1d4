import NIOCore

/// The timeouts of one client connection, decided from the times given (like async-http-client's
/// `IdleReadStateMachine`): the first request's head within `limits.headerTimeout` of the
/// connection's start (as nginx's `client_header_timeout`: a client that sends nothing is not
/// kept until the idle timeout); between requests, `limits.idleTimeout` to start one and, once
/// its first bytes came, `limits.headerTimeout` to finish the head; during a request, the
/// upstream's response head within `upstream.readTimeout` of the request (however it trickles),
/// then no silence longer than that (nginx's proxy_read_timeout); in a tunnel, the longest
/// silence both ways (`limits.idleTimeout`).
///
/// The handler keeps one timer and re-arms it only when it fires (or when a check falls due
/// before it), so that a request costs no timer of its own.
struct ConnectionTimers {
    enum IdleDecision: Equatable {
        case checkAgain(at: NIODeadline)
        /// The head did not arrive in time: 408, then close.
        case headTimedOut
        /// No request started in time: close without an answer.
        case closeIdle
        /// A request is in progress; its own timer watches it.
        case busy(checkAgainAt: NIODeadline)
    }

    enum SilenceDecision: Equatable {
        case checkAgain(at: NIODeadline)
        case timedOut
        /// Nothing is watched now.
        case stop
    }

    var headerTimeout: TimeAmount
    var idleTimeout: TimeAmount
    /// When the connection last became idle; `nil` during a request.
    private(set) var idleSince: NIODeadline?
    /// When the first bytes of the next head arrived.
    private(set) var headStartedAt: NIODeadline?
    /// The silence allowed now (a request's read timeout, a tunnel's idle timeout), if watched.
    private(set) var silenceLimit: TimeAmount?
    private(set) var lastActivity: NIODeadline
    /// The upstream's response head is awaited: bytes of it do not count as activity.
    private(set) var awaitingHead = false

    init(headerTimeout: TimeAmount, idleTimeout: TimeAmount, now: NIODeadline) {
        self.headerTimeout = headerTimeout
        self.idleTimeout = idleTimeout
        idleSince = now
        // The connection's start counts as the start of its first head.
        headStartedAt = now
        lastActivity = now
    }

    /// How often an idle connection is looked at.
    var idleCheckInterval: TimeAmount { min(headerTimeout, idleTimeout) }

    // MARK: Events

    mutating func becameIdle(now: NIODeadline) {
        idleSince = now
        headStartedAt = nil
        silenceLimit = nil
    }

    mutating func headBytesArrived(now: NIODeadline) {
        if idleSince != nil, headStartedAt == nil { headStartedAt = now }
    }

    mutating func requestStarted() {
        idleSince = nil
        headStartedAt = nil
    }

    /// Starts (or restarts) watching for silence longer than `limit`; with `awaitingHead`, the
    /// whole response head must come within `limit`.
    mutating func watchSilence(limit: TimeAmount, now: NIODeadline, awaitingHead: Bool) {
        silenceLimit = limit
        lastActivity = now
        self.awaitingHead = awaitingHead
    }

    mutating func stopWatchingSilence() {
        silenceLimit = nil
        awaitingHead = false
    }

    /// The response head is complete: from the read that brought it on, silence is what counts.
    mutating func responseHeadArrived() {
        awaitingHead = false
    }

    /// Bytes moved (from the upstream; in a tunnel, either way).
    mutating func activity(now: NIODeadline) {
        if !awaitingHead { lastActivity = now }
    }

    // MARK: Decisions

    func idleCheck(now: NIODeadline) -> IdleDecision {
        guard let idleSince else { return .busy(checkAgainAt: now + idleCheckInterval) }
        if let headStartedAt {
            let deadline = headStartedAt + headerTimeout
            return now >= deadline ? .headTimedOut : .checkAgain(at: deadline)
        }
        let deadline = idleSince + idleTimeout
        // Bytes may start arriving before the idle deadline: look again when a head would be late.
        return now >= deadline ? .closeIdle : .checkAgain(at: min(deadline, now + headerTimeout))
    }

    func silenceCheck(now: NIODeadline) -> SilenceDecision {
        guard let silenceLimit else { return .stop }
        let deadline = lastActivity + silenceLimit
        return now >= deadline ? .timedOut : .checkAgain(at: deadline)
    }
}
