import Logging
import NIOCore
import NIOHTTP1

/// Serves one client connection on its own event loop, with upstream connections leased from
/// that loop's pool. It decides nothing: ``ProxyConnectionStateMachine`` (which owns the parser,
/// the timeouts and each request's ``RequestStateMachine``) decides, and this handler carries
/// out its actions — write, lease, schedule, count, log — in one loop (``run(_:)``): an event
/// gives an action, an action carried out may give the next, and when none is left the machine
/// is asked what it can do next on its own (finish a request, resume reads, parse).
final class ProxyRequestHandler: ChannelDuplexHandler, RemovableChannelHandler, UpstreamResponseReceiver {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    typealias Action = ProxyConnectionStateMachine.Action

    /// The listener's context (a reload swaps the box; a request keeps its own route).
    private var shared: ProxyContextView
    /// This event loop's upstream pools, and its position in the group (for per-loop counts).
    private let pools: UpstreamPools
    private let loop: Int
    /// The current request's route (SPEC §2.4): its identity, upstream and counts.
    private var route: RouteContext?
    /// The pool of the last upstream this connection used: a connection's requests mostly go
    /// to one route, so the lookup by target is skipped. The target is held, so that its
    /// identity cannot be taken by another while cached.
    private var lastPool: (target: UpstreamTarget, pool: UpstreamConnectionPool)?
    /// Where the current request is counted: its route's counts for this loop.
    private var requestStatistics: LoopStatistics
    private var context: ChannelHandlerContext?
    private var connection: ProxyConnectionStateMachine
    private var upstream: UpstreamConnection?
    private var response = ClientResponseWriter()
    /// Bytes written since the last flush, per side: flushed once per read, not per part.
    private var unflushed = UnflushedSides()
    private var schedule = ConnectionSchedule()
    private var record = RequestRecord()
    /// The current request's spans, when traces are on (SPEC §2.6).
    private var trace: RequestTrace?

    init(context: ProxyContextBox, pools: UpstreamPools, loop: Int) {
        shared = ProxyContextView(context)
        self.pools = pools
        self.loop = loop
        requestStatistics = shared.current.unrouted.loops[loop]
        connection = ProxyConnectionStateMachine(listener: shared.current, now: .now())
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        record.clientAddress = RequestRecord.describe(context.channel.remoteAddress)
        armCheck(now: .now())
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        schedule.cancelAll()
        self.context = nil
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            run(connection.clientInputClosed())
        } else if event is ChannelShouldQuiesceEvent {
            run(connection.quiesce())
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    // MARK: Events from the client

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        run(connection.clientRead(unwrapInboundIn(data), now: .now()))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        connection.clientReadComplete(now: .now())
        if unflushed.contains(.upstream) {
            unflushed.remove(.upstream)
            upstream?.flush()
        }
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if connection.readRequested() { context.read() }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { upstream?.resumeReading() }
        context.fireChannelWritabilityChanged()
    }

    var clientIsWritable: Bool { context?.channel.isWritable ?? false }

    func channelInactive(context: ChannelHandlerContext) {
        run(connection.clientClosed())
        schedule.cancelAll()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        run(connection.clientClosed())
        context.close(promise: nil)
    }

    // MARK: Events from the upstream

    func upstreamRead(_ part: UpstreamResponseParser.Part) {
        switch part {
        case .head(let head): run(connection.responseHead(head))
        case .body(let buffer): run(connection.responseBodyPart(buffer))
        // Kept for the end of the response being written (a response the machine does not pass
        // on, a 401 before its replay, is never written: the next one's start drops them).
        case .trailers(let lines): response.trailers = lines
        case .end(let reusable): run(connection.responseEnd(upstreamKeepAlive: reusable && upstream?.isActive == true))
        }
    }

    func upstreamReadComplete() {
        connection.upstreamReadComplete(now: .now())
        if unflushed.contains(.client) { flushClient() }
    }

    func upstreamClosed(error: (any Error)?) {
        upstream = nil
        run(connection.upstreamClosed(reason: error.map(UpstreamConnection.describe) ?? "the upstream closed the connection"))
    }

    func upstreamWritabilityChanged() {
        connection.upstreamWritabilityChanged(writable: upstream?.isWritable ?? true)
        run(nil)
    }

    // MARK: The loop

    /// Carries out `first` and what follows from it, then what the machine can do next.
    private func run(_ first: Action?) {
        var action = first ?? connection.next(now: NIODeadline.now())
        while let current = action {
            action = perform(current) ?? connection.next(now: NIODeadline.now())
        }
    }

    /// Carries out one action; returns the machine's answer to an effect that completed at once.
    private func perform(_ action: Action) -> Action? {
        switch action {
        case .prepare(let head):
            shared.refresh()
            let prepared = shared.current.prepare(head, clientAddress: record.clientAddress, random: &connection.random)
            route = prepared.route
            requestStatistics = (prepared.route?.statistics ?? shared.current.unrouted).loops[loop]
            requestStatistics.requestStarted()
            record.start(target: head.targetBytes, requestID: prepared.requestID, method: head.method, route: prepared.route?.name)
            if let tracer = shared.current.tracer {
                trace = RequestTrace(
                    tracer: tracer, method: head.method.rawValue, path: RequestRecord.pathOnly(head.target), route: prepared.route?.route,
                    incoming: TraceHeaders(traceparent: head.first(.traceparent), tracestate: head.first(.tracestate)))
            }
            return connection.requestHead(
                prepared.machine, expectsContinue: head.expectsContinue, readTimeout: prepared.route?.readTimeout ?? Self.unroutedReadTimeout)
        case .startRequest(let sendContinue):
            if sendContinue { context?.writeAndFlush(wrapOutboundOut(Self.continueResponse), promise: nil) }
            return obtainToken(.usable)
        case .obtainToken:
            return obtainToken(.usable)
        case .refreshAndReplay(let rejected, let discard):
            if discard { discardUpstream() }
            trace?.endAttempt(status: 401)
            shared.current.statistics.retried(.upstream401)
            return obtainToken(.replacing(rejected: rejected))
        case .connect:
            return connect()
        case .injectFault(let kind):
            shared.current.statistics.faultInjected()
            shared.current.logger.info("fault injected", metadata: ["fault": "\(kind.headerValue)", "requestId": "\(record.requestID?.description ?? "-")"])
            return connection.injectedFaultReady()
        case .sendRequest(let start, let body, let end, let confirm):
            guard let upstream else { return nil }
            let traceLines = route.flatMap { route in trace?.startAttempt(method: record.method?.rawValue ?? "GET", upstream: route.route.upstream.url) }
            upstream.startRequest(start, traceLines: traceLines)
            for part in body { upstream.writeBody(part) }
            if end { writeRequestEnd(to: upstream, confirm: confirm) }
            upstream.flush()
            unflushed.remove(.upstream)
            armCheck(now: .now())
        case .sendBodyPart(let buffer):
            upstream?.writeBody(buffer)
            unflushed.insert(.upstream)
        case .sendEnd(let confirm):
            guard let upstream else { return nil }
            writeRequestEnd(to: upstream, confirm: confirm)
            upstream.flush()
        case .writeResponseHead(let head, let keepAlive):
            record.status = UInt(head.status)
            trace?.attemptAnswered(status: Int(head.status))
            if head.status != 401, connection.currentRequest?.refreshed == true, let route { recovered401(on: route) }
            response.start(head, keepAlive: keepAlive, clientAcceptsChunked: connection.currentRequest?.clientAcceptsChunked ?? false)
            unflushed.insert(.client)
        case .openTunnel(let head, let early):
            record.status = UInt(head.status)
            response.start(head, keepAlive: false, clientAcceptsChunked: connection.currentRequest?.clientAcceptsChunked ?? true)
            flushClient()
            // What the client sent after its upgrade request goes first.
            if early.readableBytes > 0 { upstream?.writeBody(early) }
            upstream?.flush()
            armCheck(now: .now())
        case .writeResponseBodyPart(let buffer):
            guard let context else { return nil }
            response.body(buffer) { context.write(wrapOutboundOut($0), promise: nil) }
            unflushed.insert(.client)
        case .writeResponseEnd(let reuse, let keepAlive):
            discardUpstream(reuse: reuse)
            finishRecord(.init(status: record.status))
            writeResponseEnd(keepAlive: keepAlive)
        case .respondInjected(let head, let keepAlive):
            discardUpstream()
            response.start(head, keepAlive: keepAlive, clientAcceptsChunked: connection.currentRequest?.clientAcceptsChunked ?? false)
            finishRecord(.init(status: UInt(head.status)))
            writeResponseEnd(keepAlive: keepAlive)
        case .respond(let error, let discard, let keepAlive):
            if discard { discardUpstream() }
            respond(with: error, keepAlive: keepAlive)
        case .refuse(let error):
            discardUpstream()
            if !record.isOpen {
                requestStatistics = shared.current.unrouted.loops[loop]
                record.start(target: nil, requestID: .generate(), method: nil, route: nil)
            }
            respond(with: error, keepAlive: false)
        case .retry(let delay, let discard, let reason):
            if discard { discardUpstream() }
            trace?.endAttempt(failure: reason.rawValue)
            shared.current.statistics.retried(reason)
            shared.current.logger.debug("retrying", metadata: ["reason": "\(reason.rawValue)", "delayMs": "\(delay.nanoseconds / 1_000_000)"])
            guard let context else { return nil }
            let number = connection.requestNumber
            schedule.scheduleRetry(in: delay, on: context.eventLoop) { self.run(self.connection.retryDue(request: number)) }
        case .abort(let reason):
            shared.current.statistics.requestAborted(reason)
            close(.init(status: record.status, aborted: reason))
        case .endTunnel:
            close(.init(status: record.status))
        case .closeForMalformedBody(let error):
            shared.current.statistics.requestAborted(.malformedBody)
            close(.init(status: nil, aborted: .malformedBody, reason: error.message))
        case .requestFinished:
            schedule.cancelRetry()
            discardUpstream()
        case .readClient:
            context?.read()
        case .close:
            close()
        }
        return nil
    }

    // MARK: Carrying out

    /// The route identity's published token when it is usable now; else its broker's answer, later.
    private func obtainToken(_ need: TokenBroker.Need) -> Action? {
        let number = connection.requestNumber
        guard let route else { preconditionFailure("a token was asked for a request without a route") }
        if case .usable = need, let token = route.publisher.usableToken() {
            return connection.tokenObtained(token, request: number)
        }
        guard let context else { return nil }
        let publisher = route.publisher
        // A traced request links to the refresh it waited for (SPEC §2.6).
        let refreshes = trace == nil ? nil : route.broker.refreshTraces
        let mark = refreshes?.mark()
        route.broker.tokenForRequest(need, on: context.eventLoop).assumeIsolated().whenSuccess { result in
            if let refreshes, let mark, number == self.connection.requestNumber, let refresh = refreshes.refresh(since: mark) {
                self.trace?.link(toRefresh: refresh)
            }
            self.run(self.connection.tokenArrived(result, fallback: publisher.latest(), request: number))
        }
        return nil
    }

    private func connect() -> Action? {
        guard let route else { preconditionFailure("a connection was asked for a request without a route") }
        let pool = pool(for: route.upstream)
        if let leased = pool.lease() {
            attach(leased)
            return connection.connected(now: .now())
        }
        let number = connection.requestNumber
        pool.connect().assumeIsolated().whenComplete { result in
            switch result {
            case .success(let opened):
                guard self.connection.acceptsConnection(request: number) else { return pool.release(opened) }
                self.attach(opened)
                self.run(self.connection.connected(now: .now()))
            case .failure(let error):
                self.run(self.connection.connectFailed(reason: UpstreamConnection.describe(error), request: number))
            }
        }
        return nil
    }

    private func attach(_ connection: UpstreamConnection) {
        upstream = connection
        connection.receiver = self
    }

    /// Lets go of the upstream connection: back to its route's pool when `reuse`, else closed.
    private func discardUpstream(reuse: Bool = false) {
        guard let upstream else { return }
        self.upstream = nil
        if reuse, let route { pool(for: route.upstream).release(upstream) } else { upstream.close() }
    }

    private func pool(for target: UpstreamTarget) -> UpstreamConnectionPool {
        if let lastPool, lastPool.target === target { return lastPool.pool }
        let pool = pools.pool(for: target)
        lastPool = (target, pool)
        return pool
    }

    /// Closes both connections, after recording how the request ended, if it had not.
    private func close(_ ending: RequestRecord.Ending? = nil) {
        if let ending { finishRecord(ending) }
        discardUpstream()
        schedule.cancelAll()
        context?.close(promise: nil)
    }

    private func finishRecord(_ ending: RequestRecord.Ending) {
        record.finish(ending, statistics: requestStatistics, logger: shared.current.logger, tries: tries, traceMetadata: { trace?.logMetadata })
        if var trace {
            let (attempts, replayed) = tries()
            trace.finish(status: ending.status ?? 0, attempts: attempts, replayed: replayed, error: ending.error?.code.rawValue ?? ending.aborted?.rawValue)
            self.trace = nil
        }
    }

    /// The current request's attempts, and whether it was replayed after a 401.
    private func tries() -> (attempts: Int, refreshed: Bool) {
        (connection.currentRequest?.triesMade ?? 0, connection.currentRequest?.refreshed ?? false)
    }

    /// Keeps the check timer armed at the machine's next check, moving it earlier when a new
    /// deadline (a request's read timeout) comes before it.
    private func armCheck(now: NIODeadline) {
        guard let context, connection.readsClient else { return }
        schedule.armCheck(at: connection.nextCheck(now: now), on: context.eventLoop) {
            self.schedule.checkFired()
            let now = NIODeadline.now()
            self.shared.refresh()
            let limits = self.shared.current.limits
            self.run(self.connection.timerFired(now: now, headerTimeout: limits.headerTimeout, idleTimeout: limits.idleTimeout))
            self.armCheck(now: now)
        }
    }

    // MARK: Wire format

    private static let nothing = ByteBuffer()
    /// A request no route took is answered by the proxy at once; this bounds nothing real.
    private static let unroutedReadTimeout = Duration.seconds(60)
    private static let continueResponse = ByteBuffer(staticString: "HTTP/1.1 100 Continue\r\n\r\n")

    /// Ends the request body upstream. With `confirm` the machine hears when the socket took it
    /// (until then a failed connection means "not sent", which any method may retry); requests
    /// that may be sent twice skip the promise: a failed write closes the connection anyway.
    private func writeRequestEnd(to upstream: UpstreamConnection, confirm: Bool) {
        let number = connection.requestNumber
        let promise = confirm ? upstream.channel.eventLoop.makePromise(of: Void.self) : nil
        promise?.futureResult.assumeIsolated().whenSuccess { self.connection.requestEndWritten(request: number) }
        upstream.writeEnd(promise: promise)
        if !confirm, upstream.isActive { connection.requestEndWritten(request: number) }
    }

    /// Writes a response head still held back (an event stream's has no body bytes yet), and flushes.
    private func flushClient() {
        guard let context else { return }
        unflushed.remove(.client)
        response.writeHead { context.write(wrapOutboundOut($0), promise: nil) }
        context.flush()
    }

    private func writeResponseEnd(keepAlive: Bool) {
        guard let context else { return }
        unflushed.remove(.client)
        response.end { context.write(wrapOutboundOut($0), promise: nil) }
        if keepAlive {
            context.flush()
        } else {
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(Self.nothing)).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    /// A request answered after its 401 and a replay with a new token (SPEC §5): counted for
    /// the route and told to `/events`.
    private func recovered401(on route: RouteContext) {
        route.statistics.recovered401()
        shared.current.statistics.events.publish(.recovered401, ["route": .string(route.name)])
    }

    /// Answers with the proxy's own error, counted and logged.
    private func respond(with error: ProxyError, keepAlive: Bool) {
        shared.current.statistics.answeredByProxy(error.code)
        route?.statistics.answeredByProxy(error.code)
        var error = error
        if error.requestID == nil { error.requestID = record.requestID?.description }
        finishRecord(.init(status: error.code.status.code, error: error))
        guard let context else { return }
        response.start(complete: error.response(keepAlive: keepAlive, allocator: context.channel.allocator))
        writeResponseEnd(keepAlive: keepAlive)
    }
}
