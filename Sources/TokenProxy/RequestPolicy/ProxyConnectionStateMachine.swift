import NIOCore

/// The life of one client connection (SPEC §2.2, §5): between requests → in a request (the
/// ``RequestStateMachine`` it wraps) → back, or into a WebSocket tunnel, or closing.
///
/// Every decision about the connection is made here and returned as an ``Action`` for
/// ``ProxyRequestHandler`` to carry out, in the style of async-http-client's
/// `HTTP1ConnectionStateMachine`: where a request ends (it owns the ``ClientRequestParser``),
/// when the client is read and when reads are held, whether an answer keeps the connection (one
/// value, decided with the response head and carried to its end), `100 Continue`, upgrades, what
/// a refusal, a parse error, a half-close or a graceful shutdown leads to, and the timeouts (it
/// owns the ``ConnectionTimers``; the handler only keeps one timer armed at ``nextCheck``).
///
/// Callbacks that arrive after their request ended (a token, a connection, a retry timer) name
/// the request they belong to and are ignored when it is not the current one.
struct ProxyConnectionStateMachine {
    enum State: Equatable {
        /// No request in progress; the next one is read when its bytes come.
        case idle
        /// `currentRequest` is in progress.
        case inRequest
        /// After a WebSocket upgrade's `101`: bytes pass both ways until a side closes.
        case tunnel
        /// The last answer is written or on its way: nothing the client sends is read any more.
        case closing
    }

    /// Cases with large payloads (heads, errors) are `indirect`: an action is then a tag and a
    /// pointer at most, cheap to move through the handler's loop (copying the whole payloads
    /// cost ~2,900 instructions per request under callgrind).
    enum Action: Equatable {
        /// A request head was read: prepare it with the forwarding rules, then call
        /// ``requestHead(_:expectsContinue:readTimeout:)``.
        indirect case prepare(ClientRequestHead)
        /// The request starts: write `100 Continue` first when asked, then get a token as for
        /// ``obtainToken``.
        case startRequest(sendContinue: Bool)
        /// Get a token (the published one if usable, else from the broker), then call
        /// ``tokenObtained(_:request:)`` or ``tokenFailed(_:fallback:request:)``.
        case obtainToken
        /// Ask the broker for a token other than `rejected` (a 401-caused refresh), then as above.
        case refreshAndReplay(rejected: String, discardUpstream: Bool)
        /// Lease or open an upstream connection, then call ``connected(request:now:)`` or
        /// ``connectFailed(reason:request:)``.
        case connect
        /// Count and log an injected fault, then call ``injectedFaultReady()``.
        case injectFault(FaultPlan.Kind)
        /// Write the request head, the body parts held so far and, when `end`, the end of the
        /// body. With `confirmWrite`, tell ``requestEndWritten(request:)`` once the socket took
        /// the end; without, at once.
        indirect case sendRequest(UpstreamRequestStart, body: ArraySlice<ByteBuffer>, end: Bool, confirmWrite: Bool)
        case sendBodyPart(ByteBuffer)
        case sendEnd(confirmWrite: Bool)
        indirect case writeResponseHead(UpstreamResponseHead, keepAlive: Bool)
        /// The upstream accepted the upgrade (`101`): write its head, send `earlyBytes` (what
        /// the client sent after its request) upstream, then pass bytes both ways.
        indirect case openTunnel(UpstreamResponseHead, earlyBytes: ByteBuffer)
        case writeResponseBodyPart(ByteBuffer)
        /// The response is complete: the upstream connection goes back to the pool when
        /// `reuseUpstream`; the client connection closes after the write unless `keepAlive`.
        case writeResponseEnd(reuseUpstream: Bool, keepAlive: Bool)
        /// Answer with an injected response (head only) as if it came from the upstream.
        indirect case respondInjected(UpstreamResponseHead, keepAlive: Bool)
        /// Answer with the proxy's own error.
        indirect case respond(ProxyError, discardUpstream: Bool, keepAlive: Bool)
        /// Wait `after`, then call ``retryDue(request:)``.
        case retry(after: TimeAmount, discardUpstream: Bool, reason: ProxyStatistics.RetryReason)
        /// Close the client and any upstream connection: the answer cannot be completed.
        case abort(ProxyStatistics.AbortReason)
        /// A tunnel's normal ending: one side closed, or it was silent for `limits.idleTimeout`.
        /// Close both connections.
        case endTunnel
        /// Answer with the proxy's own error (nothing of the request went upstream), then close.
        indirect case refuse(ProxyError)
        /// The request is over (answered, body read): let go of what it held.
        case requestFinished
        /// A read that was held back may go now.
        case readClient
        /// Close the connection (nothing is owed to the client, or what is owed is on its way).
        case close
        /// The request's body broke off malformed while it was being sent: it cannot be
        /// answered; close, and count it as aborted.
        indirect case closeForMalformedBody(ProxyError)
    }

    /// The most body bytes held for a request that has no upstream connection yet.
    static let maximumUnsentBytes = 256 * 1024

    private(set) var state = State.idle
    /// The request in progress (in a request or a tunnel). Kept beside the state rather than as
    /// its payload so that events mutate it in place: taking it out of an enum and putting it
    /// back copied it (a retain per field) on every event, measurably on the hot path.
    private(set) var currentRequest: RequestStateMachine?
    /// Counts the requests of this connection; callbacks name the one they belong to.
    private(set) var requestNumber = 0
    private var parser: ClientRequestParser
    private(set) var timers: ConnectionTimers
    /// Jitter for retry delays and the draw of injected faults.
    var random: SplitMix64
    /// Whether the answer being written leaves the connection open (decided with its head).
    private var answerKeepsConnection = false
    private var readTimeout = Duration.seconds(60)
    /// A graceful shutdown asked the connection to end after the current answer.
    private var quiescing = false
    /// The client sent its FIN: a request it sent whole is answered, nothing more is read.
    private var inputClosed = false
    /// The channel asked for a read that was held back.
    private var readPending = false
    /// The upstream connection of the current attempt cannot take more bytes now.
    private var upstreamBlocked = false

    init(limits: ClientRequestParser.Limits, headerTimeout: TimeAmount, idleTimeout: TimeAmount, now: NIODeadline, random: SplitMix64 = SplitMix64()) {
        parser = ClientRequestParser(limits: limits)
        timers = ConnectionTimers(headerTimeout: headerTimeout, idleTimeout: idleTimeout, now: now)
        self.random = random
    }

    /// A connection under `rules`' limits, starting `now`.
    init(rules: ForwardingRules, now: NIODeadline) {
        self.init(
            limits: rules.parserLimits, headerTimeout: TimeAmount(rules.limits.headerTimeout), idleTimeout: TimeAmount(rules.limits.idleTimeout), now: now)
    }

    /// A connection of a listener (its `limits`), starting `now`.
    init(listener: ProxyContext, now: NIODeadline) {
        self.init(
            limits: listener.parserLimits, headerTimeout: TimeAmount(listener.limits.headerTimeout), idleTimeout: TimeAmount(listener.limits.idleTimeout), now: now)
    }

    /// Whether bytes the client sends are still read (after a refusal or the last answer they
    /// are left unread).
    var readsClient: Bool { state != .closing }

    /// Whether a response head about to be written may promise keep-alive.
    private var mayKeepAlive: Bool { !quiescing && !inputClosed }

    // MARK: The one pull

    /// What to do next without a new event: finish a request that is done, resume a held read,
    /// or take the next part the parser has. `nil`: nothing until the next event.
    mutating func next(now: @autoclosure () -> NIODeadline) -> Action? {
        while true {
            if state == .inRequest || state == .tunnel, currentRequest?.isFinished == true {
                return finishRequest(now: now())
            }
            if readPending, !holdsClientReads {
                readPending = false
                return .readClient
            }
            guard state == .idle || state == .inRequest else { return nil }
            let part: ClientRequestParser.Part?
            do throws(ProxyError) {
                part = try parser.next()
            } catch {
                return parseFailed(error)
            }
            let action: Action?
            switch part {
            case nil:
                return nil
            case .head(let head):
                return .prepare(head)
            case .body(let buffer):
                action = request { $0.clientBodyPart(buffer) }
            case .end:
                let jitter = random.unit()
                action = request { $0.clientBodyEnd(jitter: jitter) }
            }
            // A part that needs nothing done (a body part held for later) lets the next one come.
            if let action { return action }
        }
    }

    private mutating func finishRequest(now: NIODeadline) -> Action {
        currentRequest = nil
        timers.stopWatchingSilence()
        upstreamBlocked = false
        if state == .inRequest, answerKeepsConnection, mayKeepAlive {
            state = .idle
            timers.becameIdle(now: now)
            parser.startNextRequest()
            // Part of a pipelined head may be here already: its header timeout starts now.
            if parser.isReadingHead { timers.headBytesArrived(now: now) }
        } else {
            state = .closing
        }
        return .requestFinished
    }

    // MARK: The client's side

    /// Bytes read from the client.
    mutating func clientRead(_ bytes: ByteBuffer, now: @autoclosure () -> NIODeadline) -> Action? {
        switch state {
        case .tunnel:
            timers.activity(now: now())
            return request { $0.clientBodyPart(bytes) }
        case .idle, .inRequest:
            parser.append(bytes)
            return nil
        case .closing:
            return nil
        }
    }

    /// A read from the client ended; the header timeout of a head starts with its first bytes.
    mutating func clientReadComplete(now: @autoclosure () -> NIODeadline) {
        if parser.isReadingHead { timers.headBytesArrived(now: now()) }
    }

    /// The channel asks for a read: returns whether to read now (else it is held until
    /// ``next(now:)`` says ``Action/readClient``).
    mutating func readRequested() -> Bool {
        guard holdsClientReads else { return true }
        readPending = true
        return false
    }

    private var holdsClientReads: Bool {
        // Bytes after a request read whole wait until it is answered (pipelining, or the first
        // bytes for a tunnel): held up to what one read brought, then by not reading.
        if !readsClient || (parser.isBetweenRequests && parser.bufferedBytes > 0) { return true }
        if upstreamBlocked { return true }
        return (currentRequest?.body.unsentBytes ?? 0) > Self.maximumUnsentBytes
    }

    /// A request head was read and prepared (or refused by the forwarding rules).
    mutating func requestHead(_ prepared: Result<RequestStateMachine, ProxyError>, expectsContinue: Bool, readTimeout: Duration) -> Action {
        precondition(state == .idle, "a request head was read while the connection was \(state.name): the parser reads one request at a time")
        requestNumber &+= 1
        timers.requestStarted()
        switch prepared {
        case .success(let machine):
            state = .inRequest
            currentRequest = machine
            answerKeepsConnection = false
            self.readTimeout = readTimeout
            return .startRequest(sendContinue: expectsContinue && !machine.body.isComplete)
        case .failure(let error):
            // Nothing of this request, nor anything after it on this connection, goes upstream.
            state = .closing
            return .refuse(error)
        }
    }

    /// The client half-closed its side.
    mutating func clientInputClosed() -> Action? {
        inputClosed = true
        switch state {
        case .inRequest where currentRequest?.body.isComplete == true:
            // Answered, then closed.
            return nil
        case .inRequest, .tunnel:
            return request { $0.clientClosed() }
        case .idle:
            state = .closing
            return .close
        case .closing:
            return nil
        }
    }

    /// The client connection closed or failed.
    mutating func clientClosed() -> Action? {
        let action = state == .inRequest || state == .tunnel ? request { $0.clientClosed() } : nil
        state = .closing
        return action
    }

    /// A graceful shutdown: idle connections close now, busy ones after their answer.
    mutating func quiesce() -> Action? {
        quiescing = true
        guard state == .idle else { return nil }
        state = .closing
        return .close
    }

    /// The parser found malformed bytes. Before anything of the request went upstream the
    /// client gets the error; a body that breaks off mid-way cannot be answered.
    private mutating func parseFailed(_ error: ProxyError) -> Action? {
        switch state {
        case .idle:
            state = .closing
            return .refuse(error)
        case .inRequest:
            state = .closing
            switch currentRequest?.state {
            case .waitingForToken?, .connecting?: return .refuse(error)
            default: return .closeForMalformedBody(error)
            }
        case .tunnel, .closing:
            return nil
        }
    }

    // MARK: Token and upstream connection

    mutating func tokenObtained(_ token: PublishedToken, request number: Int) -> Action? {
        guard number == requestNumber else { return nil }
        return request { $0.tokenObtained(token) }
    }

    mutating func tokenFailed(_ error: TokenBrokerError, fallback: PublishedToken?, request number: Int) -> Action? {
        guard number == requestNumber else { return nil }
        return request { $0.tokenFailed(error, fallback: fallback) }
    }

    /// The broker's answer; `fallback` is the token published now (for the 401 replay).
    mutating func tokenArrived(_ result: Result<PublishedToken, TokenBrokerError>, fallback: PublishedToken?, request number: Int) -> Action? {
        switch result {
        case .success(let token): tokenObtained(token, request: number)
        case .failure(let error): tokenFailed(error, fallback: fallback, request: number)
        }
    }

    /// An upstream connection was leased or opened for the current attempt. `false` from
    /// ``acceptsConnection(request:)`` means it is not wanted (any more): give it back.
    func acceptsConnection(request number: Int) -> Bool {
        number == requestNumber && currentRequest?.state == .connecting
    }

    mutating func connected(now: NIODeadline) -> Action? {
        upstreamBlocked = false
        return request(now: now) { $0.connected() }
    }

    mutating func connectFailed(reason: String, request number: Int) -> Action? {
        guard acceptsConnection(request: number) else { return nil }
        return upstreamClosed(reason: reason)
    }

    mutating func injectedFaultReady() -> Action? {
        let jitter = random.unit()
        return request { $0.injectedFaultReady(jitter: jitter) }
    }

    /// The whole request reached the upstream's socket (until then a failed connection means
    /// "not sent", which any method may retry).
    mutating func requestEndWritten(request number: Int) {
        guard number == requestNumber, state == .inRequest else { return }
        currentRequest!.requestEndWritten()
    }

    mutating func retryDue(request number: Int) -> Action? {
        guard number == requestNumber else { return nil }
        return request { $0.retryDue() }
    }

    // MARK: The upstream's side

    mutating func responseHead(_ head: UpstreamResponseHead) -> Action? {
        let jitter = random.unit()
        return request { $0.responseHead(head, jitter: jitter) }
    }

    mutating func responseBodyPart(_ buffer: ByteBuffer) -> Action? {
        request { $0.responseBodyPart(buffer) }
    }

    mutating func responseEnd(upstreamKeepAlive: Bool) -> Action? {
        request { $0.responseEnd(upstreamKeepAlive: upstreamKeepAlive) }
    }

    /// A read from the upstream ended: bytes moved (counted once per read, not per part).
    mutating func upstreamReadComplete(now: NIODeadline) {
        timers.activity(now: now)
    }

    mutating func upstreamClosed(reason: String) -> Action? {
        let jitter = random.unit()
        return request { $0.upstreamFailed(reason: reason, jitter: jitter) }
    }

    mutating func upstreamWritabilityChanged(writable: Bool) {
        upstreamBlocked = !writable
    }

    // MARK: Timers

    /// When the handler's one timer should fire next.
    func nextCheck(now: NIODeadline) -> NIODeadline {
        let idle: NIODeadline
        switch timers.idleCheck(now: now) {
        case .checkAgain(let deadline), .busy(let deadline): idle = deadline
        case .headTimedOut, .closeIdle: idle = now
        }
        if case .checkAgain(let deadline) = timers.silenceCheck(now: now) { return min(idle, deadline) }
        return idle
    }

    /// The timer fired; `headerTimeout` and `idleTimeout` are the current limits (a reload may
    /// have changed them).
    mutating func timerFired(now: NIODeadline, headerTimeout: Duration, idleTimeout: Duration) -> Action? {
        timers.headerTimeout = TimeAmount(headerTimeout)
        timers.idleTimeout = TimeAmount(idleTimeout)
        if timers.silenceCheck(now: now) == .timedOut {
            timers.stopWatchingSilence()
            let limit = readTimeout
            return request { $0.readTimedOut(after: limit) }
        }
        guard state == .idle else { return nil }
        switch timers.idleCheck(now: now) {
        case .checkAgain, .busy:
            return nil
        case .headTimedOut:
            state = .closing
            return .refuse(ProxyError(.requestTimeout, "the request head did not arrive within limits.headerTimeout (\(headerTimeout.configString))"))
        case .closeIdle:
            state = .closing
            return .close
        }
    }

    // MARK: The request machine's decisions, for this connection

    /// Runs one event on the request in progress (in place) and says what to do about it.
    private mutating func request(
        now: @autoclosure () -> NIODeadline = NIODeadline.now(), _ event: (inout RequestStateMachine) -> RequestStateMachine.Action
    ) -> Action? {
        switch state {
        case .inRequest, .tunnel:
            return translate(event(&currentRequest!), now: now)
        case .idle, .closing:
            // A late callback of a request that has ended.
            return nil
        }
    }

    /// `now` is read only for the actions that start a timeout.
    private mutating func translate(_ action: RequestStateMachine.Action, now: () -> NIODeadline) -> Action? {
        switch action {
        case .none:
            return nil
        case .obtainToken:
            return .obtainToken
        case .refreshAndReplay(let rejected, let discard):
            timers.stopWatchingSilence()
            return .refreshAndReplay(rejected: rejected, discardUpstream: discard)
        case .connect:
            return .connect
        case .injectFault(let kind):
            return .injectFault(kind)
        case .sendRequest(let head, let headEnding, let body, let end):
            // The response head must be complete within upstream.readTimeout of the request.
            timers.watchSilence(limit: TimeAmount(readTimeout), now: now(), awaitingHead: true)
            // Fields read one by one: binding the request machine to a local would copy it.
            let start = UpstreamRequestStart(
                head: head, headEnding: headEnding, framing: currentRequest!.bodyFraming, isHEAD: currentRequest!.isHEAD,
                upgrade: currentRequest!.upgrade == .websocket)
            return .sendRequest(start, body: body, end: end, confirmWrite: !currentRequest!.isRetryableAfterSending)
        case .sendBodyPart(let buffer):
            return .sendBodyPart(buffer)
        case .sendEnd:
            return .sendEnd(confirmWrite: currentRequest?.isRetryableAfterSending == false)
        case .forwardResponseHead(let head):
            // Silence now counts from the end of this read (``upstreamReadComplete(now:)``).
            timers.responseHeadArrived()
            answerKeepsConnection = currentRequest!.clientKeepAlive && currentRequest!.body.isComplete && mayKeepAlive
                && !ClientResponseWriter.endsWithClose(head.body, clientAcceptsChunked: currentRequest!.clientAcceptsChunked)
            return .writeResponseHead(head, keepAlive: answerKeepsConnection)
        case .openTunnel(let head):
            state = .tunnel
            answerKeepsConnection = false
            // The idle timeout now watches both directions, on a timer of its own length.
            timers.watchSilence(limit: timers.idleTimeout, now: now(), awaitingHead: false)
            return .openTunnel(head, earlyBytes: parser.takeBufferedBytes())
        case .forwardResponseBodyPart(let buffer):
            return .writeResponseBodyPart(buffer)
        case .forwardResponseEnd(let reuse):
            timers.stopWatchingSilence()
            answerKeepsConnection = answerKeepsConnection && mayKeepAlive
            return .writeResponseEnd(reuseUpstream: reuse, keepAlive: answerKeepsConnection)
        case .respondInjected(let head):
            answerKeepsConnection = keepsConnectionAfterOwnAnswer
            return .respondInjected(head, keepAlive: answerKeepsConnection)
        case .respond(let error, let discard):
            timers.stopWatchingSilence()
            answerKeepsConnection = keepsConnectionAfterOwnAnswer
            return .respond(error, discardUpstream: discard, keepAlive: answerKeepsConnection)
        case .retry(let delay, let discard, let reason):
            timers.stopWatchingSilence()
            return .retry(after: delay, discardUpstream: discard, reason: reason)
        case .abort(let reason):
            timers.stopWatchingSilence()
            defer { state = .closing }
            return state == .tunnel ? .endTunnel : .abort(reason)
        }
    }

    /// An answer the proxy makes whole (its error, an injected fault) keeps the connection when
    /// the client wants it and its request was read whole.
    private var keepsConnectionAfterOwnAnswer: Bool {
        currentRequest?.clientKeepAlive == true && currentRequest?.body.isComplete == true && mayKeepAlive
    }
}

extension ProxyConnectionStateMachine.State {
    var name: String {
        switch self {
        case .idle: "idle"
        case .inRequest: "in a request"
        case .tunnel: "a tunnel"
        case .closing: "closing"
        }
    }
}

/// What an upstream connection needs to start a request: its head (`head`, then `headEnding`
/// with the token: two buffers of one writev), how its body is framed, and what the response
/// will be like (none to HEAD has a body; one to an upgrade may switch to a tunnel).
struct UpstreamRequestStart: Equatable {
    var head: ByteBuffer
    var headEnding: ByteBuffer
    var framing: ForwardingRules.BodyFraming
    var isHEAD: Bool
    var upgrade: Bool
}
