import Atomics
import Logging
import NIOCore
import NIOHTTP1

/// Serves one client connection on its own event loop, with upstream connections leased from
/// that loop's pool. It decides nothing: ``ProxyConnectionStateMachine`` (wrapping each request's
/// ``RequestStateMachine``) and ``ConnectionTimers`` decide, and this handler carries out their
/// actions — parse, write, lease, schedule, log.
///
/// Requests are read by ``ClientRequestParser``, which stops after each one: a pipelined request
/// (or malformed bytes) is parsed only once the request before it was answered, and reads pause
/// meanwhile. Reads are held back in both directions while the other side cannot take more.
final class ProxyRequestHandler: ChannelDuplexHandler, UpstreamResponseReceiver {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let contextBox: ProxyContextBox
    /// The context of the current request (a reload swaps the box; a request keeps its own).
    private var shared: ProxyContext
    private var sharedVersion: Int
    private let pool: UpstreamConnectionPool
    private let loopStatistics: LoopStatistics
    private var context: ChannelHandlerContext?
    private var connection = ProxyConnectionStateMachine()
    private var parser: ClientRequestParser
    /// Set while parts are taken from the parser, so that a request finished meanwhile does not
    /// start parsing again from inside the loop.
    private var parsing = false
    private var upstream: UpstreamConnection?
    private var requestWriter = UpstreamRequestWriter(framing: .none)
    private var response = ClientResponseWriter()
    /// Bumped per request, so that late callbacks of a finished request are ignored.
    private var generation = 0
    private var clientReadPending = false
    /// What the last answer written said about the connection.
    private var lastAnswerKeptConnection = false
    /// Response bytes were written to the client since the last flush.
    private var needsFlush = false
    /// Body parts were written upstream since the last flush.
    private var upstreamNeedsFlush = false

    private var timers: ConnectionTimers
    /// One timer per kind, re-armed only when it fires (see ``ConnectionTimers``).
    private var idleTimer: Scheduled<Void>?
    private var silenceTimer: Scheduled<Void>?
    private var retryTimer: Scheduled<Void>?

    // For the log line and the metrics of the current request.
    private var requestStarted = NIODeadline.now()
    private var clientAddress = "unknown"
    private var random = SplitMix64()
    /// The request target's bytes, made text only for a log line.
    private var currentTarget: ByteBuffer?
    private var currentStatus: UInt = 0
    private var currentRequestID: RequestID?

    /// The most body bytes held for a request that has no upstream connection yet.
    private static let maximumUnsentBytes = 256 * 1024

    init(context: ProxyContextBox, pool: UpstreamConnectionPool, statistics: LoopStatistics) {
        self.contextBox = context
        sharedVersion = context.version
        let shared = context.load()
        self.shared = shared
        self.pool = pool
        self.loopStatistics = statistics
        self.parser = ClientRequestParser(limits: shared.rules.parserLimits)
        self.timers = ConnectionTimers(
            headerTimeout: TimeAmount(shared.rules.limits.headerTimeout), idleTimeout: TimeAmount(shared.rules.limits.idleTimeout), now: .now())
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        scheduleIdleCheck(at: .now() + timers.idleCheckInterval)
        switch context.channel.remoteAddress {
        case .v4(let address)?: clientAddress = address.host
        case .v6(let address)?: clientAddress = address.host
        default: clientAddress = "unix"
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        cancelTimers()
        self.context = nil
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            perform(connection.clientInputClosed())
        } else if event is ChannelShouldQuiesceEvent {
            perform(connection.quiesce())
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    // MARK: Client side

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard connection.readsClient else { return }
        let bytes = unwrapInboundIn(data)
        if connection.isTunnel {
            timers.activity(now: .now())
            apply { $0.clientBodyPart(bytes) }
            return
        }
        parser.append(bytes)
        parseAvailable()
    }

    /// Hands on what the parser has, as long as the connection takes it.
    private func parseAvailable() {
        guard !parsing else { return }
        parsing = true
        defer { parsing = false }
        while connection.readsClient, !connection.isTunnel {
            let part: ClientRequestParser.Part?
            do throws(ProxyError) {
                part = try parser.next()
            } catch {
                if connection.currentRequest == nil { startRecord(target: nil, requestID: .generate()) }
                perform(connection.parseFailed(error))
                return
            }
            guard let part else { return }
            switch part {
            case .head(let head):
                startRequest(head)
            case .body(let buffer):
                apply { $0.clientBodyPart(buffer) }
            case .end:
                apply { $0.clientBodyEnd(jitter: random.unit()) }
                finishIfDone()
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if parser.isReadingHead { timers.headBytesArrived(now: .now()) }
        if upstreamNeedsFlush {
            upstreamNeedsFlush = false
            upstream?.flush()
        }
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if shouldHoldClientReads {
            clientReadPending = true
        } else {
            context.read()
        }
    }

    private var shouldHoldClientReads: Bool {
        // Bytes after a request read whole wait until it is answered (pipelining, or the first
        // bytes for a tunnel): held up to what one read brought, then by not reading.
        if !connection.readsClient || (parser.isBetweenRequests && parser.bufferedBytes > 0) { return true }
        if let upstream { return !upstream.isWritable }
        return (connection.currentRequest?.body.unsentBytes ?? 0) > Self.maximumUnsentBytes
    }

    private func resumeClientReadsIfPossible() {
        guard clientReadPending, !shouldHoldClientReads, let context else { return }
        clientReadPending = false
        context.read()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { upstream?.resumeReading() }
        context.fireChannelWritabilityChanged()
    }

    var clientIsWritable: Bool { context?.channel.isWritable ?? false }

    func channelInactive(context: ChannelHandlerContext) {
        apply { $0.clientClosed() }
        connection.closed()
        cancelTimers()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        apply { $0.clientClosed() }
        context.close(promise: nil)
    }

    private func startRequest(_ head: ClientRequestHead) {
        guard let context else { return }
        contextBox.refresh(&shared, version: &sharedVersion)
        loopStatistics.requestStarted()
        generation &+= 1
        timers.requestStarted()
        let faultsEnabled = shared.faults.enabled
        let prepared = shared.rules.prepare(head, clientAddress: clientAddress, faultsEnabled: faultsEnabled)
        switch prepared {
        case .success(let request):
            startRecord(target: head.targetBytes, requestID: request.requestID)
            requestWriter = UpstreamRequestWriter(framing: request.bodyFraming)
            if head.first(.expect)?.lowercased() == "100-continue" {
                context.writeAndFlush(wrapOutboundOut(Self.continueResponse), promise: nil)
            }
        case .failure:
            startRecord(target: head.targetBytes, requestID: head.first(.requestID).map(RequestID.client) ?? .generate())
        }
        let action = connection.requestHead(prepared.map { request in
            RequestStateMachine(
                request: request, policy: shared.retryPolicy, replayLimit: shared.replayLimit,
                injectFirst401: faultsEnabled && shared.faults.drawUpstream401(using: &random))
        })
        perform(action, refusedMethod: head.method)
    }

    private func startRecord(target: ByteBuffer?, requestID: RequestID) {
        requestStarted = .now()
        currentStatus = 0
        currentTarget = target
        currentRequestID = requestID
    }

    // MARK: Connection actions

    /// Carries out what the connection machine decided. `refusedMethod` names, in the log line,
    /// the method of a request the rules refused (it never became the current request).
    private func perform(_ action: ProxyConnectionStateMachine.Action, refusedMethod: HTTPMethod? = nil) {
        switch action {
        case .none:
            break
        case .request(let action):
            perform(action)
        case .refuse(let error):
            discardUpstream()
            shared.statistics.answeredByProxy(error.code)
            let method = connection.currentRequest?.method ?? refusedMethod
            respond(with: error, keepAlive: false)
            recordCompletion(method: method, status: error.code.status.code, error: error)
        case .readNextRequest:
            let now = NIODeadline.now()
            timers.becameIdle(now: now)
            parser.startNextRequest()
            parseAvailable()
            // Part of a pipelined head may be here already: its header timeout starts now.
            if parser.isReadingHead { timers.headBytesArrived(now: now) }
            resumeClientReadsIfPossible()
        case .close:
            discardUpstream()
            cancelTimers()
            context?.close(promise: nil)
        case .closeForMalformedBody(let error):
            shared.statistics.requestAborted(.malformedBody)
            recordCompletion(status: nil, aborted: .malformedBody, reason: error.message)
            perform(.close)
        }
    }

    // MARK: Request actions

    private func perform(_ action: RequestStateMachine.Action) {
        switch action {
        case .none:
            break

        case .obtainToken:
            if let token = shared.publisher.usableToken() {
                apply { $0.tokenObtained(token) }
            } else {
                awaitToken(.usable)
            }

        case .refreshAndReplay(let rejected, let discard):
            if discard { discardUpstream() }
            timers.stopWatchingSilence()
            shared.statistics.retried(.upstream401)
            awaitToken(.replacing(rejected: rejected))

        case .connect:
            if let connection = pool.lease() {
                attach(connection)
                apply { $0.connected() }
            } else {
                let generation = self.generation
                pool.connect().assumeIsolated().whenComplete { result in
                    guard generation == self.generation, self.connection.currentRequest?.state == .connecting else {
                        if case .success(let connection) = result { self.pool.release(connection) }
                        return
                    }
                    switch result {
                    case .success(let connection):
                        self.attach(connection)
                        self.apply { $0.connected() }
                    case .failure(let error):
                        let jitter = self.random.unit()
                        self.apply { $0.upstreamFailed(reason: Self.describe(error), jitter: jitter) }
                    }
                }
            }

        case .injectFault(let kind):
            shared.statistics.faultInjected()
            shared.logger.info("fault injected", metadata: ["fault": "\(kind.headerValue)", "requestId": "\(currentRequestID?.description ?? "-")"])
            apply { $0.injectedFaultReady(jitter: random.unit()) }

        case .sendRequest(let head, let headEnding, let body, let end):
            // Fields are read one by one: binding the request machine to a local would copy it.
            guard let upstream, let method = connection.currentRequest?.method else { return }
            upstream.startRequest(isHEAD: method == .HEAD, upgrade: connection.currentRequest?.upgrade == .websocket)
            if body.isEmpty, end, requestWriter.end == nil {
                // The whole request is the head and the token line, two buffers of one writev.
                // Whether the write completed matters only for requests that may not be sent
                // twice; the others (the common GET) skip the promise: a head this small is taken
                // by the socket during the flush, and a failed write closes the connection there.
                let confirmed = connection.currentRequest?.isRetryableAfterSending == false
                upstream.write(head)
                upstream.write(headEnding, promise: confirmed ? requestEndPromise(on: upstream) : nil)
                upstream.flush()
                if !confirmed, upstream.isActive { requestEndWritten() }
            } else {
                upstream.write(head)
                upstream.write(headEnding)
                for part in body { requestWriter.body(part) { upstream.write($0) } }
                if end { writeRequestEnd(to: upstream) }
                upstream.flush()
            }
            upstreamNeedsFlush = false
            let now = NIODeadline.now()
            timers.watchSilence(limit: TimeAmount(shared.readTimeout), now: now)
            armSilenceTimer(now: now)
            resumeClientReadsIfPossible()

        case .sendBodyPart(let buffer):
            if let upstream {
                requestWriter.body(buffer) { upstream.write($0) }
                upstreamNeedsFlush = true
            }

        case .sendEnd:
            if let upstream {
                writeRequestEnd(to: upstream)
                upstream.flush()
            }

        case .forwardResponseHead(let head):
            currentStatus = UInt(head.status)
            writeResponseHead(head, keepAlive: connection.currentRequest?.clientKeepAlive ?? false)
            needsFlush = true

        case .openTunnel(let head):
            currentStatus = UInt(head.status)
            writeResponseHead(head, keepAlive: false)
            writePendingResponseHead()
            context?.flush()
            // The idle timeout now watches both directions, on a timer of its own length.
            let now = NIODeadline.now()
            timers.watchSilence(limit: TimeAmount(shared.rules.limits.idleTimeout), now: now)
            silenceTimer?.cancel()
            silenceTimer = nil
            armSilenceTimer(now: now)
            // What the client sent after its upgrade request goes first.
            let early = parser.takeBufferedBytes()
            if early.readableBytes > 0 { apply { $0.clientBodyPart(early) } }
            upstream?.flush()
            resumeClientReadsIfPossible()

        case .forwardResponseBodyPart(let buffer):
            writeResponseBodyPart(buffer)
            needsFlush = true

        case .forwardResponseEnd(let reuse):
            timers.stopWatchingSilence()
            if let upstream {
                self.upstream = nil
                if reuse { pool.release(upstream) } else { upstream.close() }
            }
            let keepAlive = connection.keepsConnection(responseEndsWithClose: response.framing == .untilClose)
            recordCompletion(status: currentStatus)
            writeResponseEnd(keepAlive: keepAlive)
            finishIfDone(keptConnection: keepAlive)

        case .respondInjected(let head):
            discardUpstream()
            let keepAlive = connection.keepsConnection(responseEndsWithClose: false)
            writeResponseHead(head, keepAlive: keepAlive)
            recordCompletion(status: UInt(head.status))
            writeResponseEnd(keepAlive: keepAlive)
            finishIfDone(keptConnection: keepAlive)

        case .respond(let error, let discard):
            if discard { discardUpstream() }
            timers.stopWatchingSilence()
            shared.statistics.answeredByProxy(error.code)
            let keepAlive = connection.keepsConnection(responseEndsWithClose: false)
            respond(with: error, keepAlive: keepAlive)
            recordCompletion(status: error.code.status.code, error: error)
            finishIfDone(keptConnection: keepAlive)

        case .retry(let delay, let discard, let reason):
            if discard { discardUpstream() }
            timers.stopWatchingSilence()
            shared.statistics.retried(reason)
            shared.logger.debug("retrying", metadata: ["reason": "\(reason.rawValue)", "delayMs": "\(delay.nanoseconds / 1_000_000)"])
            guard let context else { return }
            let generation = self.generation
            retryTimer = context.eventLoop.assumeIsolated().scheduleTask(in: delay) {
                guard generation == self.generation else { return }
                self.retryTimer = nil
                self.apply { $0.retryDue() }
            }

        case .abort(let reason):
            discardUpstream()
            cancelTimers()
            if connection.isTunnel {
                // One side of a tunnel closed (or it was idle too long): its normal ending.
                recordCompletion(status: currentStatus)
            } else {
                shared.statistics.requestAborted(reason)
                recordCompletion(status: currentStatus, aborted: reason)
            }
            connection.closed()
            context?.close(promise: nil)
        }
    }

    /// Runs one event on the request in progress and carries out what follows.
    private func apply(_ event: (inout RequestStateMachine) -> RequestStateMachine.Action) {
        perform(connection.request(event))
    }

    private func requestEndWritten() {
        _ = connection.request { request in
            request.requestEndWritten()
            return .none
        }
    }

    private func awaitToken(_ need: TokenBroker.Need) {
        guard let context else { return }
        let generation = self.generation
        let broker = shared.broker
        let publisher = shared.publisher
        context.eventLoop.makeFutureWithTask { () -> Result<PublishedToken, TokenBrokerError> in
            do throws(TokenBrokerError) {
                _ = try await broker.token(for: need)
                // The broker published what it returned; a token it could not publish (no
                // expiry) is refused like any unusable one.
                guard let token = publisher.latest() else {
                    return .failure(.unavailable(reason: "the token has no usable expiry", retryAfter: nil))
                }
                return .success(token)
            } catch {
                return .failure(error)
            }
        }.assumeIsolated().whenSuccess { result in
            guard generation == self.generation else { return }
            switch result {
            case .success(let token):
                self.apply { $0.tokenObtained(token) }
            case .failure(let error):
                self.apply { $0.tokenFailed(error, fallback: self.shared.publisher.latest()) }
            }
        }
    }

    /// Clears the request once both its response and its body are done, and goes on with what
    /// the client sent after it (or closes).
    private func finishIfDone(keptConnection: Bool? = nil) {
        guard connection.currentRequest?.isFinished == true else { return }
        retryTimer?.cancel()
        retryTimer = nil
        timers.stopWatchingSilence()
        discardUpstream()
        generation &+= 1
        // A body that completes after its answer: the answer said whether the connection stays.
        let kept = keptConnection ?? lastAnswerKeptConnection
        perform(connection.requestFinished(keptConnection: kept && context?.channel.isActive == true))
    }

    // MARK: Wire format

    private static let nothing = ByteBuffer()
    private static let continueResponse = ByteBuffer(staticString: "HTTP/1.1 100 Continue\r\n\r\n")

    /// A promise that tells the machine when the whole request has been written (until then a
    /// failed connection means "not sent", which any method may retry).
    private func requestEndPromise(on upstream: UpstreamConnection) -> EventLoopPromise<Void> {
        let promise = upstream.channel.eventLoop.makePromise(of: Void.self)
        let generation = self.generation
        promise.futureResult.assumeIsolated().whenSuccess {
            guard generation == self.generation else { return }
            self.requestEndWritten()
        }
        return promise
    }

    private func writeRequestEnd(to upstream: UpstreamConnection) {
        upstream.write(requestWriter.end ?? Self.nothing, promise: requestEndPromise(on: upstream))
    }

    private func writeResponseHead(_ head: consuming UpstreamResponseHead, keepAlive: Bool) {
        guard let clientAcceptsChunked = connection.currentRequest?.clientAcceptsChunked else { return }
        response.start(head, keepAlive: keepAlive && connection.mayKeepAlive, clientAcceptsChunked: clientAcceptsChunked)
    }

    private func writeResponseBodyPart(_ buffer: ByteBuffer) {
        guard let context else { return }
        response.body(buffer) { context.write(wrapOutboundOut($0), promise: nil) }
    }

    private func writePendingResponseHead() {
        guard let context else { return }
        response.writeHead { context.write(wrapOutboundOut($0), promise: nil) }
    }

    private func writeResponseEnd(keepAlive: Bool) {
        guard let context else { return }
        needsFlush = false
        lastAnswerKeptConnection = keepAlive
        response.end { context.write(wrapOutboundOut($0), promise: nil) }
        if keepAlive {
            context.flush()
        } else {
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(Self.nothing)).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    private func respond(with error: ProxyError, keepAlive: Bool) {
        guard let context else { return }
        var error = error
        if error.requestID == nil { error.requestID = currentRequestID?.description }
        response.start(complete: error.response(keepAlive: keepAlive && connection.mayKeepAlive, allocator: context.channel.allocator))
        writeResponseEnd(keepAlive: keepAlive && connection.mayKeepAlive)
    }

    // MARK: Upstream side

    private func attach(_ connection: UpstreamConnection) {
        upstream = connection
        connection.receiver = self
    }

    private func discardUpstream() {
        guard let upstream else { return }
        self.upstream = nil
        upstream.close()
    }

    func upstreamRead(_ part: UpstreamResponseParser.Part) {
        switch part {
        case .head(let head):
            apply { $0.responseHead(head, jitter: random.unit()) }
        case .body(let buffer):
            apply { $0.responseBodyPart(buffer) }
        case .end(let reusable):
            let keepAlive = reusable && upstream?.isActive == true
            apply { $0.responseEnd(upstreamKeepAlive: keepAlive) }
        }
    }

    func upstreamReadComplete() {
        // Once per read, not per part: the clock is read once.
        timers.activity(now: .now())
        if needsFlush {
            needsFlush = false
            writePendingResponseHead()
            context?.flush()
        }
    }

    func upstreamClosed(error: (any Error)?) {
        upstream = nil
        let reason = error.map(Self.describe) ?? "the upstream closed the connection"
        apply { $0.upstreamFailed(reason: reason, jitter: random.unit()) }
    }

    func upstreamWritabilityChanged() {
        resumeClientReadsIfPossible()
    }

    // MARK: Timers

    private func armSilenceTimer(now: NIODeadline) {
        guard silenceTimer == nil, let context, case .checkAgain(let deadline) = timers.silenceCheck(now: now) else { return }
        silenceTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            self.silenceTimer = nil
            let now = NIODeadline.now()
            switch self.timers.silenceCheck(now: now) {
            case .stop:
                break
            case .checkAgain:
                self.armSilenceTimer(now: now)
            case .timedOut:
                self.timers.stopWatchingSilence()
                self.apply { $0.readTimedOut(after: self.shared.readTimeout) }
            }
        }
    }

    private func scheduleIdleCheck(at deadline: NIODeadline) {
        guard let context else { return }
        idleTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            self.idleTimer = nil
            self.checkIdle()
        }
    }

    private func checkIdle() {
        guard connection.readsClient, context?.channel.isActive == true else { return }
        let limits = contextBox.load().rules.limits
        timers.headerTimeout = TimeAmount(limits.headerTimeout)
        timers.idleTimeout = TimeAmount(limits.idleTimeout)
        switch timers.idleCheck(now: .now()) {
        case .checkAgain(let deadline), .busy(let deadline):
            scheduleIdleCheck(at: deadline)
        case .headTimedOut:
            startRecord(target: nil, requestID: .generate())
            let error = ProxyError(.requestTimeout, "the request head did not arrive within limits.headerTimeout (\(limits.headerTimeout.configString))")
            perform(connection.headTimedOut(error))
        case .closeIdle:
            perform(connection.idleTimedOut())
        }
    }

    private func cancelTimers() {
        idleTimer?.cancel()
        idleTimer = nil
        timers.stopWatchingSilence()
        silenceTimer?.cancel()
        silenceTimer = nil
        retryTimer?.cancel()
        retryTimer = nil
    }

    // MARK: Completion (duration metric and the log line)

    /// Every ending of a request comes here: answered (by the upstream or the proxy), refused,
    /// or aborted (`aborted` says why; `reason` adds detail).
    private func recordCompletion(
        method: HTTPMethod? = nil, status: UInt?, error: ProxyError? = nil, aborted: ProxyStatistics.AbortReason? = nil, reason: String? = nil
    ) {
        let duration = NIODeadline.now() - requestStarted
        loopStatistics.requestFinished(after: duration)
        guard shared.logger.logLevel <= .info || error != nil || (aborted != nil && aborted != .clientClosed) else { return }
        let attempts = (connection.currentRequest?.attempts ?? 0) + (connection.currentRequest?.replayedAfter401 == true ? 1 : 0)
        var metadata: Logger.Metadata = [
            "requestId": "\(currentRequestID?.description ?? "-")", "method": "\((connection.currentRequest?.method ?? method)?.rawValue ?? "-")",
            "attempts": "\(attempts)", "durationMs": "\(duration.nanoseconds / 1_000_000)", "refreshed": "\(connection.currentRequest?.refreshed ?? false)",
        ]
        if let status, status > 0 { metadata["status"] = "\(status)" }
        if let currentTarget, currentTarget.readableBytes > 0 { metadata["path"] = "\(Self.pathOnly(String(buffer: currentTarget)))" }
        if let error {
            metadata["error"] = "\(error.code.rawValue)"
            metadata["reason"] = "\(error.message)"
            shared.logger.warning("request answered by the proxy", metadata: metadata)
        } else if let aborted {
            metadata["aborted"] = "\(aborted.rawValue)"
            if let reason { metadata["reason"] = "\(reason)" }
            // A client that goes away is its own business; the upstream failing mid-answer is not.
            if aborted == .clientClosed {
                shared.logger.info("request aborted", metadata: metadata)
            } else {
                shared.logger.warning("request aborted", metadata: metadata)
            }
        } else {
            shared.logger.info("request", metadata: metadata)
        }
    }

    /// The path without its query, which may carry secrets.
    static func pathOnly(_ uri: String) -> Substring {
        uri.prefix { $0 != "?" }
    }

    static func describe(_ error: any Error) -> String {
        if let error = error as? IOError { return error.description }
        if let problem = TLSProblem.describe(error) { return problem }
        return "\(error)"
    }
}
