import Atomics
import NIOCore
import NIOHTTP1
import NIOPosix

/// The admin listener (SPEC §7): small buffered requests, answered by ``AdminRoutes`` off the
/// event loop (a route may wait for the broker).
public final class AdminServer: Sendable {
    private let channel: any Channel
    public var port: Int? { channel.localAddress?.port }

    private init(channel: any Channel) {
        self.channel = channel
    }

    public static func start(address: ListenAddress, routes: AdminRoutes, group: any EventLoopGroup) async throws -> AdminServer {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(AcceptBackoffHandler()) }
            }
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(AdminHandler(routes: routes))
                }
            }
        let channel: any Channel
        switch address {
        case .tcp(let host, let port): channel = try await bootstrap.bind(host: host, port: port).get()
        case .unix(let path): channel = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
        }
        return AdminServer(channel: channel)
    }

    public func stop() async {
        try? await channel.close()
    }
}

private final class AdminHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let routes: AdminRoutes
    private var head: HTTPRequestHead?
    private var body = ByteBuffer()
    /// The connection carries `/events` now: nothing else is read from it.
    private var streaming = false
    /// Admin requests are small; anything larger is refused.
    private static let maximumBody = 64 * 1024

    init(routes: AdminRoutes) {
        self.routes = routes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body.clear()
        case .body(var buffer):
            if body.readableBytes + buffer.readableBytes <= Self.maximumBody { body.writeBuffer(&buffer) }
        case .end:
            guard let head, !streaming else { return }
            self.head = nil
            let request = AdminRoutes.Request(method: head.method, path: String(head.uri.prefix { $0 != "?" }), query: AdminRoutes.Request.query(of: head.uri), body: String(buffer: body), headers: head.headers)
            let keepAlive = head.isKeepAlive
            let routes = self.routes
            if request.path == "/events" {
                streaming = true
                context.eventLoop.makeFutureWithTask { await routes.eventsRefusal(request) }
                    .assumeIsolated().whenSuccess { refusal in
                        if let refusal {
                            self.streaming = false
                            self.write(refusal, keepAlive: keepAlive, context: context)
                        } else {
                            self.startEventStream(context: context)
                        }
                    }
                return
            }
            context.eventLoop.makeFutureWithTask { await routes.answer(request) }
                .assumeIsolated().whenSuccess { response in
                    self.write(response, keepAlive: keepAlive, context: context)
                }
        }
    }

    private func write(_ response: AdminRoutes.Response, keepAlive: Bool, context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: String(response.body.utf8.count))
        headers.add(name: "Cache-Control", value: "no-store")
        for (name, value) in response.headers { headers.add(name: name, value: value) }
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: response.status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: response.body)))), promise: nil)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive { done.assumeIsolated().whenComplete { _ in context.close(promise: nil) } }
    }

    /// `GET /events` (SPEC §7): Server-Sent Events until the client goes, a comment every
    /// ``EventStreamWriter/heartbeat`` so that idle proxies and browsers keep it open.
    private func startEventStream(context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "text/event-stream; charset=utf-8")
        headers.add(name: "Cache-Control", value: "no-store")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: ": connected\n\n")))), promise: nil)
        let writer = EventStreamWriter(channel: context.channel)
        let events = routes.statistics.events
        let subscription = events.subscribe { writer.send($0) }
        let heartbeat = context.eventLoop.scheduleRepeatedTask(initialDelay: EventStreamWriter.heartbeat, delay: EventStreamWriter.heartbeat) { _ in
            writer.send(": keep-alive\n\n")
        }
        context.channel.closeFuture.whenComplete { _ in
            heartbeat.cancel()
            events.unsubscribe(subscription)
        }
    }
}

/// Writes one `/events` stream from any thread. A reader that does not keep up is dropped: once
/// more than ``limit`` bytes wait to be written, the connection is closed rather than buffered
/// (the browser's EventSource reconnects by itself).
final class EventStreamWriter: Sendable {
    static let limit = 256 * 1024
    static let heartbeat = TimeAmount.seconds(15)

    private let channel: any Channel
    private let waiting = ManagedAtomic<Int>(0)

    init(channel: any Channel) {
        self.channel = channel
    }

    func send(_ text: String) {
        let size = text.utf8.count
        guard waiting.wrappingIncrementThenLoad(by: size, ordering: .relaxed) <= Self.limit else {
            channel.close(promise: nil)
            return
        }
        let channel = self.channel
        channel.eventLoop.execute {
            let part = HTTPServerResponsePart.body(.byteBuffer(channel.allocator.buffer(string: text)))
            channel.writeAndFlush(part).whenComplete { _ in self.waiting.wrappingDecrement(by: size, ordering: .relaxed) }
        }
    }
}
