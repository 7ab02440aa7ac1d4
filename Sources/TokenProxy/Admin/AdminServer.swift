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
            guard let head else { return }
            self.head = nil
            let request = AdminRoutes.Request(method: head.method, path: String(head.uri.prefix { $0 != "?" }), query: AdminRoutes.Request.query(of: head.uri), body: String(buffer: body), headers: head.headers)
            let keepAlive = head.isKeepAlive
            let routes = self.routes
            context.eventLoop.makeFutureWithTask { await routes.answer(request) }
                .assumeIsolated().whenSuccess { response in
                    var headers = HTTPHeaders()
                    headers.add(name: "Content-Type", value: response.contentType)
                    headers.add(name: "Content-Length", value: String(response.body.utf8.count))
                    headers.add(name: "Cache-Control", value: "no-store")
                    for (name, value) in response.headers { headers.add(name: name, value: value) }
                    if !keepAlive { headers.add(name: "Connection", value: "close") }
                    context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: response.status, headers: headers))), promise: nil)
                    context.write(self.wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: response.body)))), promise: nil)
                    let done = context.writeAndFlush(self.wrapOutboundOut(.end(nil)))
                    if !keepAlive { done.assumeIsolated().whenComplete { _ in context.close(promise: nil) } }
                }
        }
    }
}
