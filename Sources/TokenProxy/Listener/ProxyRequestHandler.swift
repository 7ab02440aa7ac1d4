import Atomics
import Logging
import NIOCore
import NIOHTTP1

/// Serves one client connection: carries out what ``RequestStateMachine`` decides for each
/// request, on the connection's own event loop, with the upstream connection leased from that
/// loop's pool. Reads are held back in both directions while the other side cannot take more.
///
/// Requests are read by ``ClientRequestParser``, which stops after each one: a pipelined request
/// (or malformed bytes) is parsed only once the request before it was answered, and reads pause
/// meanwhile. After a WebSocket upgrade's `101` the connection is a byte tunnel to the upstream.
final class ProxyRequestHandler: ChannelDuplexHandler, UpstreamResponseReceiver {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let contextBox: ManagedAtomic<ProxyContext>
    /// The context of the current request (a reload swaps the box; a request keeps its own).
    private var shared: ProxyContext
    private let pool: UpstreamConnectionPool
    /// Set by a graceful shutdown: close once the current response is complete.
    private var closeAfterResponse = false
    private var context: ChannelHandlerContext?
    private var machine: RequestStateMachine?
    private var upstream: UpstreamConnection?
    /// Bumped per request, so that late callbacks of a finished request are ignored.
    private var generation = 0
    private var clientReadPending = false
    private var parser: ClientRequestParser
    /// Set while parts are taken from the parser, so that a request finished meanwhile does not
    /// start parsing again from inside the loop.
    private var parsing = false
    /// After a `101`: client bytes go upstream as they are.
    private var tunneling = false
    private var needsFlush = false
    /// Body parts were written upstream since the last flush.
    private var upstreamNeedsFlush = false
    private var response = ClientResponseWriter()
    private var readTimeout: Scheduled<Void>?
    private var readTimeoutActive = false
    /// `upstream.readTimeout` of the current request's context (a reload may change it).
    private var readTimeoutAmount = TimeAmount.zero
    /// The last byte from the upstream (or, in a tunnel, either way).
    private var lastActivity = NIODeadline.now()
    private var retryTimer: Scheduled<Void>?
    private var requestStarted = NIODeadline.now()
    private var clientAddress = "unknown"
    private var random = SplitMix64()
    private var currentURI = ""
    private var currentStatus: UInt = 0
    private var currentRequestID = RequestID.generate()
    /// Set once the proxy refused something on this connection: nothing read after it is
    /// forwarded, and the connection closes once the answers owed are written.
    private var refusing = false

    /// The most body bytes held for a request that has no upstream connection yet.
    private static let maximumUnsentBytes = 256 * 1024

    /// Watches the connection while no request is in progress (header and idle timeouts).
    private var idleTimer: Scheduled<Void>?
    private var idleSince = NIODeadline.now()
    /// When the bytes of a head first arrived since the connection became idle.
    private var firstBytesSinceIdle: NIODeadline?

    init(context: ManagedAtomic<ProxyContext>, pool: UpstreamConnectionPool) {
        self.contextBox = context
        self.shared = context.load(ordering: .acquiring)
        self.pool = pool
        self.parser = ClientRequestParser(limits: shared.rules.parserLimits)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            clientInputClosed(context: context)
            return
        }
        guard event is ChannelShouldQuiesceEvent else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        closeAfterResponse = true
        if machine == nil { context.close(promise: nil) }
    }

    /// The client half-closed (sent its FIN): a request it sent whole is still answered, then
    /// the connection closes; anything else ends now.
    private func clientInputClosed(context: ChannelHandlerContext) {
        if let machine, machine.body.isComplete, !tunneling, !refusing {
            closeAfterResponse = true
            return
        }
        if machine != nil { apply { $0.clientClosed() } }
        context.close(promise: nil)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        becameIdle()
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

    // MARK: Client side

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if refusing { return }
        let bytes = unwrapInboundIn(data)
        if tunneling {
            lastActivity = .now()
            apply { $0.clientBodyPart(bytes) }
            return
        }
        parser.append(bytes)
        parseAvailable()
    }

    /// Hands on what the parser has, as long as the current request can take it.
    private func parseAvailable() {
        guard !parsing else { return }
        parsing = true
        defer { parsing = false }
        while !refusing, !tunneling {
            let part: ClientRequestParser.Part?
            do throws(ProxyError) {
                part = try parser.next()
            } catch {
                parseFailed(error)
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

    /// Malformed bytes: a request not yet sent upstream is answered with the error; one whose
    /// body broke off while being sent cannot be answered, and the connection is closed.
    private func parseFailed(_ refusal: ProxyError) {
        refusing = true
        if machine == nil || machine?.state == .waitingForToken || machine?.state == .connecting {
            discardUpstream()
            if machine == nil { currentRequestID = .generate() }
            shared.statistics.answeredByProxy(refusal.code)
            respond(with: refusal, keepAlive: false)
            if machine != nil {
                recordCompletion(status: refusal.code.status.code, error: refusal)
            } else {
                recordCompletion(method: nil, uri: nil, status: refusal.code.status.code, attempts: 0, refreshed: false, error: refusal)
            }
            machine = nil
            return
        }
        shared.statistics.requestAborted(.malformedBody)
        recordCompletion(status: nil, aborted: .malformedBody, reason: refusal.message)
        discardUpstream()
        cancelTimers()
        machine = nil
        context?.close(promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if firstBytesSinceIdle == nil, machine == nil, parser.isReadingHead { firstBytesSinceIdle = .now() }
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
        if refusing || (parser.isBetweenRequests && parser.bufferedBytes > 0) { return true }
        if let upstream { return !upstream.isWritable }
        return (machine?.body.unsentBytes ?? 0) > Self.maximumUnsentBytes
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
        cancelTimers()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        apply { $0.clientClosed() }
        context.close(promise: nil)
    }

    private func startRequest(_ head: ClientRequestHead) {
        guard let context else { return }
        generation &+= 1
        requestStarted = .now()
        currentStatus = 0
        currentURI = head.target
        shared = contextBox.load(ordering: .acquiring)
        shared.statistics.requestStarted()
        let faultsEnabled = shared.faults.enabled
        switch shared.rules.prepare(head, clientAddress: clientAddress, faultsEnabled: faultsEnabled) {
        case .failure(let error):
            // Nothing of this request, nor anything after it on this connection, goes upstream.
            refusing = true
            currentRequestID = head.first(.requestID).map(RequestID.client) ?? .generate()
            shared.statistics.answeredByProxy(error.code)
            respond(with: error, keepAlive: false)
            recordCompletion(method: head.method, uri: head.target, status: error.code.status.code, attempts: 0, refreshed: false, error: error)
        case .success(let prepared):
            currentRequestID = prepared.requestID
            if prepared.upgrade == .refused {
                // Nothing after an upgrade request is HTTP: read no more of it (SPEC §5: never
                // buffered without bound). The connection closes after this answer.
                refusing = true
            }
            if head.first(.expect)?.lowercased() == "100-continue" {
                context.writeAndFlush(wrapOutboundOut(Self.continueResponse), promise: nil)
            }
            machine = RequestStateMachine(
                request: prepared, policy: shared.retryPolicy, replayLimit: shared.replayLimit,
                injectFirst401: faultsEnabled && shared.faults.drawUpstream401(using: &random)
            )
            perform(.obtainToken)
        }
    }

    // MARK: Actions

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
            cancelReadTimeout()
            shared.statistics.retried(.upstream401)
            awaitToken(.replacing(rejected: rejected))

        case .connect:
            if let connection = pool.lease() {
                attach(connection)
                apply { $0.connected() }
            } else {
                let generation = self.generation
                pool.connect().assumeIsolated().whenComplete { result in
                    guard generation == self.generation, self.machine?.state == .connecting else {
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
            shared.logger.info("fault injected", metadata: ["fault": "\(kind.headerValue)", "method": "\(machine?.method.rawValue ?? "")"])
            apply { $0.injectedFaultReady(jitter: random.unit()) }

        case .sendRequest(let head, let headEnding, let body, let end):
            // Fields are read one by one: binding the machine to a local would copy all of it.
            guard let upstream, let bodyFraming = machine?.bodyFraming else { return }
            upstream.startRequest(isHEAD: machine?.method == .HEAD, upgrade: machine?.upgrade == .websocket)
            // One buffer for the head: a copy of ~200 bytes costs less than a second write.
            var bytes = head
            bytes.writeImmutableBuffer(headEnding)
            if body.isEmpty, end, bodyFraming != .chunked {
                // The whole request is this one buffer. Whether its write completed matters only
                // for requests that may not be sent twice; the others (the common GET) skip the
                // promise: a head this small is taken by the socket during the flush, and a failed
                // write closes the connection right there.
                let confirmed = machine?.isRetryableAfterSending == false
                upstream.write(bytes, promise: confirmed ? requestEndPromise(on: upstream) : nil)
                upstream.flush()
                if !confirmed, upstream.isActive { machine?.requestEndWritten() }
            } else {
                upstream.write(bytes)
                for part in body { writeBodyPart(part, to: upstream) }
                if end { writeRequestEnd(to: upstream) }
                upstream.flush()
            }
            upstreamNeedsFlush = false
            armReadTimeout()
            resumeClientReadsIfPossible()

        case .sendBodyPart(let buffer):
            if let upstream {
                writeBodyPart(buffer, to: upstream)
                upstreamNeedsFlush = true
            }

        case .sendEnd:
            if let upstream {
                writeRequestEnd(to: upstream)
                upstream.flush()
            }

        case .forwardResponseHead(let head):
            currentStatus = UInt(head.status)
            writeResponseHead(head)
            needsFlush = true

        case .openTunnel(let head):
            currentStatus = UInt(head.status)
            writeResponseHead(head, keepAlive: false)
            writePendingResponseHead()
            context?.flush()
            tunneling = true
            // The idle timeout now watches both directions, on a timer of its own length.
            readTimeout?.cancel()
            readTimeout = nil
            armReadTimeout()
            // What the client sent after its upgrade request goes first.
            let early = parser.takeBufferedBytes()
            if early.readableBytes > 0 { apply { $0.clientBodyPart(early) } }
            upstream?.flush()
            resumeClientReadsIfPossible()

        case .forwardResponseBodyPart(let buffer):
            writeResponseBodyPart(buffer)
            needsFlush = true

        case .forwardResponseEnd(let reuse):
            cancelReadTimeout()
            if let upstream {
                self.upstream = nil
                if reuse { pool.release(upstream) } else { upstream.close() }
            }
            let keepAlive = (machine?.clientKeepAlive ?? false) && response.framing != .untilClose
            recordCompletion(status: currentStatus)
            writeResponseEnd(keepAlive: keepAlive && machine?.body.isComplete == true)
            finishIfDone()

        case .respondInjected(let head):
            discardUpstream()
            let keepAlive = (machine?.clientKeepAlive ?? false) && machine?.body.isComplete == true
            writeResponseHead(head, keepAlive: keepAlive)
            recordCompletion(status: UInt(head.status))
            writeResponseEnd(keepAlive: keepAlive)
            finishIfDone()

        case .respond(let error, let discard):
            if discard { discardUpstream() }
            cancelReadTimeout()
            shared.statistics.answeredByProxy(error.code)
            let keepAlive = (machine?.clientKeepAlive ?? false) && machine?.body.isComplete == true
            respond(with: error, keepAlive: keepAlive)
            recordCompletion(status: error.code.status.code, error: error)
            finishIfDone()

        case .retry(let delay, let discard, let reason):
            if discard { discardUpstream() }
            cancelReadTimeout()
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
            if tunneling {
                // One side of a tunnel closed (or it was idle too long): its normal ending.
                recordCompletion(status: currentStatus)
            } else {
                shared.statistics.requestAborted(reason)
                recordCompletion(status: currentStatus, aborted: reason)
            }
            machine = nil
            context?.close(promise: nil)
        }
    }

    /// Runs one event on the machine and performs what it returns. The machine is mutated in
    /// place: copying it out and back would copy its body buffers and cost a retain per field.
    private func apply(_ event: (inout RequestStateMachine) -> RequestStateMachine.Action) {
        guard machine != nil else { return }
        perform(event(&machine!))
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

    // MARK: Wire format (the request's way upstream, the response's way back)

    private static let lastChunk = ByteBuffer(staticString: "0\r\n\r\n")
    private static let nothing = ByteBuffer()
    private static let continueResponse = ByteBuffer(staticString: "HTTP/1.1 100 Continue\r\n\r\n")

    /// A promise that tells the machine when the whole request has been written (until then a
    /// failed connection means "not sent", which any method may retry).
    private func requestEndPromise(on upstream: UpstreamConnection) -> EventLoopPromise<Void> {
        let promise = upstream.channel.eventLoop.makePromise(of: Void.self)
        let generation = self.generation
        promise.futureResult.assumeIsolated().whenSuccess {
            guard generation == self.generation else { return }
            self.machine?.requestEndWritten()
        }
        return promise
    }

    private func writeBodyPart(_ buffer: ByteBuffer, to upstream: UpstreamConnection) {
        guard machine?.bodyFraming == .chunked else {
            upstream.write(buffer)
            return
        }
        guard buffer.readableBytes > 0 else { return }
        var chunk = ByteBuffer()
        chunk.writeChunk(buffer)
        upstream.write(chunk)
    }

    private func writeRequestEnd(to upstream: UpstreamConnection) {
        let ending = machine?.bodyFraming == .chunked ? Self.lastChunk : Self.nothing
        upstream.write(ending, promise: requestEndPromise(on: upstream))
    }

    private func writeResponseHead(_ head: UpstreamResponseHead, keepAlive: Bool? = nil) {
        guard let context, let clientKeepAlive = machine?.clientKeepAlive else { return }
        response.start(
            head, keepAlive: (keepAlive ?? clientKeepAlive) && !closeAfterResponse,
            clientAcceptsChunked: machine?.clientAcceptsChunked ?? false, allocator: context.channel.allocator
        )
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
        response.end { context.write(wrapOutboundOut($0), promise: nil) }
        if keepAlive, !closeAfterResponse {
            context.flush()
        } else {
            // The last answer on this connection: nothing the client sent after it is read.
            refusing = true
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(Self.nothing)).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    private func respond(with error: ProxyError, keepAlive: Bool) {
        guard let context else { return }
        var error = error
        if error.requestID == nil { error.requestID = currentRequestID.description }
        response.start(complete: error.response(keepAlive: keepAlive && !closeAfterResponse, allocator: context.channel.allocator))
        writeResponseEnd(keepAlive: keepAlive)
    }

    /// Clears the request once both its response and its body are done, and goes on with what
    /// the client sent after it.
    private func finishIfDone() {
        guard machine?.isFinished == true else { return }
        machine = nil
        // The connection's read timer stays scheduled for the next request; it is only disarmed.
        readTimeoutActive = false
        retryTimer?.cancel()
        retryTimer = nil
        discardUpstream()
        generation &+= 1
        guard !refusing, !tunneling, context?.channel.isActive == true else { return }
        becameIdle()
        parser.startNextRequest()
        parseAvailable()
        resumeClientReadsIfPossible()
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
        lastActivity = .now()
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

    /// `readTimeout` is the longest silence of the upstream while a request waits or streams
    /// (nginx's proxy_read_timeout): an SSE stream never times out while events flow. One timer
    /// per connection, re-armed only when it fires, so that a request costs no timer of its own.
    private func armReadTimeout() {
        lastActivity = .now()
        // In a tunnel, silence both ways for limits.idleTimeout closes it.
        readTimeoutAmount = TimeAmount(tunneling ? shared.rules.limits.idleTimeout : shared.readTimeout)
        readTimeoutActive = true
        guard readTimeout == nil, let context else { return }
        scheduleReadTimeout(at: lastActivity + readTimeoutAmount, on: context.eventLoop)
    }

    private func scheduleReadTimeout(at deadline: NIODeadline, on eventLoop: any EventLoop) {
        readTimeout = eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            self.readTimeout = nil
            guard self.readTimeoutActive else { return }
            let silentUntil = self.lastActivity + self.readTimeoutAmount
            if silentUntil > .now() {
                self.scheduleReadTimeout(at: silentUntil, on: eventLoop)
            } else {
                self.readTimeoutActive = false
                self.apply { $0.readTimedOut(after: self.shared.readTimeout) }
            }
        }
    }

    private func cancelReadTimeout() {
        readTimeoutActive = false
    }

    /// No request in progress: the client has `limits.idleTimeout` to start one, and once its
    /// first bytes arrived, `limits.headerTimeout` to finish the head (else 408 and close).
    /// One timer per connection, re-armed only when it fires (as the read timeout): a request
    /// costs no timer of its own.
    private func becameIdle() {
        idleSince = .now()
        firstBytesSinceIdle = nil
        if idleTimer == nil { scheduleIdleCheck(at: idleSince + idleCheckInterval) }
    }

    private var idleCheckInterval: TimeAmount {
        let limits = shared.rules.limits
        return TimeAmount(min(limits.headerTimeout, limits.idleTimeout))
    }

    private func scheduleIdleCheck(at deadline: NIODeadline) {
        guard let context else { return }
        idleTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            self.idleTimer = nil
            self.checkIdle()
        }
    }

    private func checkIdle() {
        guard !refusing, let context, context.channel.isActive else { return }
        let limits = contextBox.load(ordering: .relaxed).rules.limits
        let now = NIODeadline.now()
        // A request in progress has its own timeouts; look again later.
        guard machine == nil else { return scheduleIdleCheck(at: now + idleCheckInterval) }
        if let started = firstBytesSinceIdle {
            let deadline = started + TimeAmount(limits.headerTimeout)
            guard now >= deadline else { return scheduleIdleCheck(at: deadline) }
            refusing = true
            currentRequestID = .generate()
            let error = ProxyError(.requestTimeout, "the request head did not arrive within limits.headerTimeout (\(limits.headerTimeout.configString))")
            shared.statistics.answeredByProxy(error.code)
            shared.logger.warning("request head timed out; connection closed", metadata: ["requestId": "\(currentRequestID)", "client": "\(clientAddress)"])
            respond(with: error, keepAlive: false)
            return
        }
        let deadline = idleSince + TimeAmount(limits.idleTimeout)
        // Bytes may start arriving before the idle deadline: look again when a head would be late.
        guard now >= deadline else { return scheduleIdleCheck(at: min(deadline, now + TimeAmount(limits.headerTimeout))) }
        context.close(promise: nil)
    }

    private func cancelTimers() {
        idleTimer?.cancel()
        idleTimer = nil
        readTimeoutActive = false
        readTimeout?.cancel()
        readTimeout = nil
        retryTimer?.cancel()
        retryTimer = nil
    }

    // MARK: Completion (duration metric and the log line)

    /// Every ending of a request comes here: answered (by the upstream or the proxy), refused,
    /// or aborted (`aborted` says why; `reason` adds detail).
    private func recordCompletion(status: UInt?, error: ProxyError? = nil, aborted: ProxyStatistics.AbortReason? = nil, reason: String? = nil) {
        guard let method = machine?.method else { return }
        let attempts = (machine?.attempts ?? 0) + (machine?.replayedAfter401 == true ? 1 : 0)
        recordCompletion(
            method: method, uri: currentURI, status: status, attempts: attempts, refreshed: machine?.refreshed ?? false, error: error,
            aborted: aborted, reason: reason)
    }

    private func recordCompletion(
        method: HTTPMethod?, uri: String?, status: UInt?, attempts: Int, refreshed: Bool, error: ProxyError? = nil,
        aborted: ProxyStatistics.AbortReason? = nil, reason: String? = nil
    ) {
        shared.statistics.requestFinished(after: NIODeadline.now() - requestStarted)
        guard shared.logger.logLevel <= .info || error != nil || (aborted != nil && aborted != .clientClosed) else { return }
        var metadata: Logger.Metadata = [
            "requestId": "\(currentRequestID)", "method": "\(method?.rawValue ?? "-")", "attempts": "\(attempts)",
            "durationMs": "\((NIODeadline.now() - requestStarted).nanoseconds / 1_000_000)", "refreshed": "\(refreshed)",
        ]
        if let status, status > 0 { metadata["status"] = "\(status)" }
        if let uri { metadata["path"] = "\(Self.pathOnly(uri))" }
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
        return "\(error)"
    }
}
