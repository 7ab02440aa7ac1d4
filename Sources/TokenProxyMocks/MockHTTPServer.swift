import NIOCore
import NIOHTTP1
import NIOPosix

/// A request as a mock server saw it.
public struct MockHTTPRequest: Sendable {
    public var method: String
    public var uri: String
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]

    public func header(_ name: String) -> String? {
        headers.first { $0.name.lowercased() == name.lowercased() }?.value
    }

    public var bodyText: String { String(decoding: body, as: UTF8.self) }
}

/// What a mock server answers.
public struct MockHTTPResponse: Sendable {
    public var status: Int
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]

    public init(status: Int, headers: [(name: String, value: String)] = [], body: String = "") {
        self.status = status
        self.headers = headers
        self.body = Array(body.utf8)
    }

    public static func json(_ status: Int, _ body: String) -> MockHTTPResponse {
        MockHTTPResponse(status: status, headers: [("Content-Type", "application/json")], body: body)
    }
}

/// A small HTTP/1.1 server on 127.0.0.1 for stand-in token issuers and APIs.
public final class MockHTTPServer: Sendable {
    public typealias Handler = @Sendable (MockHTTPRequest) async -> MockHTTPResponse

    private let channel: any Channel
    public let port: Int

    private init(channel: any Channel) {
        self.channel = channel
        self.port = channel.localAddress?.port ?? 0
    }

    /// Starts listening on `127.0.0.1:port` (0 picks a free port).
    public static func start(port: Int = 0, handler: @escaping Handler) async throws -> MockHTTPServer {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(RequestHandler(handler: handler))
                }
            }
            .bind(host: "127.0.0.1", port: port)
            .get()
        return MockHTTPServer(channel: channel)
    }

    public var baseURL: String { "http://127.0.0.1:\(port)" }

    public func shutdown() async {
        try? await channel.close()
    }

    private final class RequestHandler: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        private let handler: Handler
        private var head: HTTPRequestHead?
        private var body: [UInt8] = []

        init(handler: @escaping Handler) {
            self.handler = handler
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                self.head = head
                body = []
            case .body(var buffer):
                body += buffer.readBytes(length: buffer.readableBytes) ?? []
            case .end:
                guard let head else { return }
                let request = MockHTTPRequest(
                    method: head.method.rawValue, uri: head.uri,
                    headers: head.headers.map { ($0.name, $0.value) }, body: body
                )
                let keepAlive = head.isKeepAlive
                let handler = self.handler
                let loopBound = NIOLoopBound((context, self), eventLoop: context.eventLoop)
                let eventLoop = context.eventLoop
                let channel = context.channel
                Task {
                    let response = await handler(request)
                    eventLoop.execute {
                        let (context, _) = loopBound.value
                        var headers = HTTPHeaders(response.headers.map { ($0.name, $0.value) })
                        headers.replaceOrAdd(name: "Content-Length", value: "\(response.body.count)")
                        if !keepAlive { headers.replaceOrAdd(name: "Connection", value: "close") }
                        let responseHead = HTTPResponseHead(version: .http1_1, status: .init(statusCode: response.status), headers: headers)
                        context.write(NIOAny(HTTPServerResponsePart.head(responseHead)), promise: nil)
                        context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: response.body)))), promise: nil)
                        context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil))).whenComplete { _ in
                            if !keepAlive { channel.close(promise: nil) }
                        }
                    }
                }
            }
        }
    }
}
