import NIOCore
import NIOHTTP1

/// The life of one proxied request: waiting for a token → connecting → sending → streaming the
/// response, with the retry, 401-replay and fault-injection decisions in between (SPEC §5, §6).
///
/// Pure: every event returns an ``Action`` for ``ProxyRequestHandler`` to carry out, so that
/// each decision is one `switch` away and testable without sockets.
struct RequestStateMachine {
    enum State: Equatable {
        case waitingForToken
        case connecting
        /// The request is being written, or was written; no response head yet.
        case awaitingResponse
        /// An injected fault is answered once the client's body is complete (so it can be replayed).
        case holdingInjectedFault(FaultPlan.Kind)
        case waitingToRetry
        case streamingResponse
        /// After a WebSocket upgrade's `101`: bytes pass both ways until either side closes.
        case tunnel
        /// The client has its whole answer; what is left of the request body is discarded.
        case responded
        /// The client connection has to go: its answer cannot be completed.
        case failed
    }

    enum Action: Equatable {
        case none
        /// Get a token (from the published one if usable, else from the broker), then call
        /// ``tokenObtained(_:)`` or ``tokenFailed(_:fallback:)``.
        case obtainToken
        /// Ask the broker for a token other than `rejected` (a 401-caused refresh), then replay.
        case refreshAndReplay(rejected: String, discardUpstream: Bool)
        /// Lease or open an upstream connection, then call ``connected()`` or ``upstreamFailed(reason:jitter:)``.
        case connect
        /// Count and log an injected fault, then call ``injectedFaultReady(jitter:)``.
        case injectFault(FaultPlan.Kind)
        /// Write the request head (`head`, then `headEnding` with the token), the body parts held
        /// so far, and, when `end`, the end of the body.
        case sendRequest(head: ByteBuffer, headEnding: ByteBuffer, body: ArraySlice<ByteBuffer>, end: Bool)
        case sendBodyPart(ByteBuffer)
        case sendEnd
        case forwardResponseHead(UpstreamResponseHead)
        /// The upstream accepted the upgrade (`101`): forward its head, then pass bytes both ways.
        case openTunnel(UpstreamResponseHead)
        case forwardResponseBodyPart(ByteBuffer)
        /// The response is complete; the upstream connection may go back to the pool.
        case forwardResponseEnd(reuseUpstream: Bool)
        /// Answer with an injected response (head only) as if it came from the upstream.
        case respondInjected(UpstreamResponseHead)
        /// Answer with the proxy's own error.
        case respond(ProxyError, discardUpstream: Bool)
        case retry(after: TimeAmount, discardUpstream: Bool, reason: ProxyStatistics.RetryReason)
        /// Close the client and any upstream connection: the answer cannot be completed (or, in a
        /// tunnel, one side has closed).
        case abort(ProxyStatistics.AbortReason)
    }

    private(set) var state: State = .waitingForToken
    private var request: ForwardingRules.PreparedRequest
    private(set) var body: RequestBody
    private let policy: RetryPolicy
    private var token: PublishedToken?
    /// Tries counted against `retry.attempts` (the one 401 replay is not among them).
    private(set) var attempts = 0
    private(set) var replayedAfter401 = false
    private var isReplayAttempt = false
    /// Whether the current attempt's whole request was written to the upstream.
    private var requestWritten = false
    private var injectedFaults = 0
    private let injectFirst401: Bool
    private var lastFailure = ""

    init(request: ForwardingRules.PreparedRequest, policy: RetryPolicy, replayLimit: Int, injectFirst401: Bool) {
        self.request = request
        self.policy = policy
        self.body = RequestBody(replayLimit: replayLimit)
        self.injectFirst401 = injectFirst401
        // Without Content-Length or Transfer-Encoding there is no body: the request is whole
        // now, and its head goes upstream complete, in one write.
        if request.bodyFraming == .none { body.markComplete() }
    }

    var clientKeepAlive: Bool { request.clientKeepAlive }
    var method: HTTPMethod { request.method }
    var bodyFraming: ForwardingRules.BodyFraming { request.bodyFraming }
    var upgrade: ForwardingRules.Upgrade { request.upgrade }
    var clientAcceptsChunked: Bool { request.clientAcceptsChunked }
    var isRetryableAfterSending: Bool { request.isRetryableAfterSending }
    /// Whether a refresh happened for this request (for the log line).
    var refreshed: Bool { replayedAfter401 }
    /// Tries made, the 401 replay included (for the log line).
    var triesMade: Int { attempts + (replayedAfter401 ? 1 : 0) }
    /// Pattern match, not `==`: HTTPMethod's `==` compares raw-value strings.
    var isHEAD: Bool { if case .HEAD = request.method { true } else { false } }

    /// Whether the request body is still arriving while the response is already complete.
    var isFinished: Bool { (state == .responded && body.isComplete) || state == .failed }

    // MARK: Token

    mutating func tokenObtained(_ token: PublishedToken) -> Action {
        guard state == .waitingForToken else { return .none }
        self.token = token
        requestWritten = false
        if !isReplayAttempt { attempts += 1 }
        if let kind = nextInjectedFault() {
            state = .holdingInjectedFault(kind)
            return .injectFault(kind)
        }
        state = .connecting
        return .connect
    }

    /// No token: the answer is the broker's error, except on the 401 replay, which is still
    /// sent once with the current token when a refresh is not possible (SPEC §5).
    mutating func tokenFailed(_ error: TokenBrokerError, fallback: PublishedToken?) -> Action {
        guard state == .waitingForToken else { return .none }
        if isReplayAttempt, case .unavailable = error, let fallback {
            return tokenObtained(fallback)
        }
        state = .responded
        return .respond(ProxyError.from(error), discardUpstream: false)
    }

    // MARK: Upstream connection

    mutating func connected() -> Action {
        guard state == .connecting, let token else { return .none }
        state = .awaitingResponse
        if body.isReplayable { body.rewind() }
        return .sendRequest(head: request.head, headEnding: token.headEnding, body: body.takeUnsent(), end: body.isComplete)
    }

    mutating func requestEndWritten() {
        if state == .awaitingResponse || state == .streamingResponse { requestWritten = true }
    }

    /// The connection failed or closed (connect refused, reset, closed early).
    mutating func upstreamFailed(reason: String, jitter: Double) -> Action {
        switch state {
        case .connecting, .awaitingResponse:
            lastFailure = reason
            return retryOrGiveUp(requestWritten ? .resetAfterSending : .notSent, jitter: jitter, discardUpstream: true, injected: nil)
        case .streamingResponse, .tunnel:
            state = .failed
            return .abort(.upstreamClosed)
        case .waitingForToken, .holdingInjectedFault, .waitingToRetry, .responded, .failed:
            return .none
        }
    }

    mutating func readTimedOut(after timeout: Duration) -> Action {
        switch state {
        case .awaitingResponse:
            state = .responded
            return .respond(ProxyError(.upstreamTimeout, "the upstream did not answer within upstream.readTimeout (\(timeout.configString))"), discardUpstream: true)
        case .streamingResponse, .tunnel:
            state = .failed
            return .abort(.upstreamTimeout)
        case .waitingForToken, .connecting, .holdingInjectedFault, .waitingToRetry, .responded, .failed:
            return .none
        }
    }

    mutating func retryDue() -> Action {
        guard state == .waitingToRetry else { return .none }
        state = .waitingForToken
        isReplayAttempt = false
        return .obtainToken
    }

    // MARK: Client body

    mutating func clientBodyPart(_ buffer: ByteBuffer) -> Action {
        switch state {
        case .responded, .failed:
            return .none
        case .tunnel:
            return .sendBodyPart(buffer)
        case .awaitingResponse, .streamingResponse:
            body.append(buffer)
            _ = body.takeUnsent()
            return .sendBodyPart(buffer)
        case .waitingForToken, .connecting, .holdingInjectedFault, .waitingToRetry:
            body.append(buffer)
            return .none
        }
    }

    mutating func clientBodyEnd(jitter: Double) -> Action {
        guard !body.isComplete else { return .none }
        body.markComplete()
        switch state {
        case .awaitingResponse, .streamingResponse:
            return .sendEnd
        case .holdingInjectedFault:
            return injectedFaultReady(jitter: jitter)
        case .waitingForToken, .connecting, .waitingToRetry, .tunnel, .responded, .failed:
            return .none
        }
    }

    // MARK: Response

    mutating func responseHead(_ head: UpstreamResponseHead, jitter: Double) -> Action {
        guard state == .awaitingResponse else { return .none }
        return decide(head, injected: nil, jitter: jitter)
    }

    mutating func responseBodyPart(_ buffer: ByteBuffer) -> Action {
        state == .streamingResponse || state == .tunnel ? .forwardResponseBodyPart(buffer) : .none
    }

    mutating func responseEnd(upstreamKeepAlive: Bool) -> Action {
        guard state == .streamingResponse || state == .tunnel else { return .none }
        state = .responded
        return .forwardResponseEnd(reuseUpstream: upstreamKeepAlive && requestWritten && body.isComplete)
    }

    mutating func clientClosed() -> Action {
        switch state {
        case .failed:
            return .none
        case .responded:
            // The answer is complete; what was left of the body is not needed.
            state = .failed
            return .none
        default:
            state = .failed
            return .abort(.clientClosed)
        }
    }

    // MARK: Decisions

    /// What an upstream answer (real or injected) leads to: a 401 replay, a retry, or the client
    /// gets it.
    private mutating func decide(_ head: UpstreamResponseHead, injected: FaultPlan.Kind?, jitter: Double) -> Action {
        let status = head.status
        let discard = injected == nil
        let replayable = body.isComplete && body.isReplayable
        if head.isTokenRejection, !replayedAfter401, replayable, let token {
            replayedAfter401 = true
            isReplayAttempt = true
            state = .waitingForToken
            return .refreshAndReplay(rejected: token.accessToken, discardUpstream: discard)
        }
        if RetryPolicy.isRetryableStatus(UInt(status)), replayable,
            let delay = policy.delay(
                after: .unavailableStatus(status, retryAfter: head.retryAfter),
                attempt: attempts, retryableAfterSending: request.isRetryableAfterSending, random: jitter)
        {
            state = .waitingToRetry
            let reason: ProxyStatistics.RetryReason = status == 502 ? .upstream502 : status == 503 ? .upstream503 : .upstream504
            return .retry(after: delay, discardUpstream: discard, reason: reason)
        }
        if injected != nil {
            state = .responded
            return .respondInjected(head)
        }
        if status == 101 {
            // The upstream parser passes a 101 only for a request that asked for the upgrade.
            state = .tunnel
            return .openTunnel(head)
        }
        state = .streamingResponse
        return .forwardResponseHead(head)
    }

    private mutating func retryOrGiveUp(_ failure: RetryPolicy.Failure, jitter: Double, discardUpstream: Bool, injected: FaultPlan.Kind?) -> Action {
        if body.isReplayable, failure == .notSent || body.isComplete,
            let delay = policy.delay(after: failure, attempt: attempts, retryableAfterSending: request.isRetryableAfterSending, random: jitter)
        {
            state = .waitingToRetry
            return .retry(after: delay, discardUpstream: discardUpstream, reason: failure == .notSent ? .notSent : .reset)
        }
        state = .responded
        let tries = attempts == 1 ? "1 attempt" : "\(attempts) attempts"
        let why = failure == .resetAfterSending && !request.isRetryableAfterSending
            ? "; not retried because \(request.method.rawValue) is not idempotent and has no Idempotency-Key" : ""
        return .respond(ProxyError(.upstreamUnavailable, "the upstream could not be reached after \(tries): \(lastFailure)\(why)", injectedFault: injected?.headerValue), discardUpstream: discardUpstream)
    }

    // MARK: Fault injection

    private mutating func nextInjectedFault() -> FaultPlan.Kind? {
        if let plan = request.fault, injectedFaults < plan.times {
            injectedFaults += 1
            return plan.kind
        }
        if injectFirst401, attempts == 1, !isReplayAttempt {
            return .status(401)
        }
        return nil
    }

    /// Answers the held injected fault once the body is complete (or at once if it is).
    mutating func injectedFaultReady(jitter: Double) -> Action {
        guard case .holdingInjectedFault(let kind) = state, body.isComplete || !body.isReplayable else { return .none }
        switch kind {
        case .status(let status):
            var headers = [("X-TokenProxy-Fault-Injected", String(status))]
            if status == 401 { headers.append(("WWW-Authenticate", #"Bearer error="invalid_token""#)) }
            state = .awaitingResponse
            return decide(.synthesized(status: status, headers: headers, allocator: ByteBufferAllocator()), injected: kind, jitter: jitter)
        case .reset:
            // As if the upstream dropped the connection after reading the request.
            state = .awaitingResponse
            requestWritten = true
            lastFailure = "connection reset (injected fault)"
            return retryOrGiveUp(.resetAfterSending, jitter: jitter, discardUpstream: false, injected: kind)
        }
    }
}
