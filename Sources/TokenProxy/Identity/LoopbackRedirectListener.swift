import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// The loopback listener that receives the browser's redirect (RFC 8252 §7.3): 127.0.0.1 on a
/// port the system picks, one small page per request. `answer` decides, for each request target,
/// the status and text of the page and whether the login is over.
final class LoopbackRedirectListener: Sendable {
    /// What to answer a request, and the outcome it brings, if any.
    struct Reply: Sendable {
        var status: HTTPResponseStatus
        var page: String
    }

    private let channel: any Channel
    var port: Int { channel.localAddress?.port ?? 0 }

    private init(channel: any Channel) {
        self.channel = channel
    }

    static func start(answer: @escaping @Sendable (String) -> Reply) async throws -> LoopbackRedirectListener {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(RedirectHandler(answer: answer))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return LoopbackRedirectListener(channel: channel)
    }

    func stop() async {
        try? await channel.close()
    }
}

private final class RedirectHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let answer: @Sendable (String) -> LoopbackRedirectListener.Reply
    private var target: String?

    init(answer: @escaping @Sendable (String) -> LoopbackRedirectListener.Reply) {
        self.answer = answer
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): target = head.method == .GET ? head.uri : nil
        case .body: break
        case .end:
            let reply = target.map(answer) ?? .init(status: .methodNotAllowed, page: "only GET")
            let html = "<!doctype html><meta charset=utf-8><title>tokenproxy</title><p>\(reply.page.replacingOccurrences(of: "<", with: "&lt;"))</p>\n"
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "text/html; charset=utf-8")
            headers.add(name: "Content-Length", value: String(html.utf8.count))
            headers.add(name: "Cache-Control", value: "no-store")
            headers.add(name: "Connection", value: "close")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: reply.status, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: html)))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        }
    }
}
