import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// A request as a mock server saw it.
public struct MockHTTPRequest: Sendable {
    public var method: String
    public var uri: String
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]
    /// Whether the client's connection is still open (a client killed mid-call is not).
    public var isClientConnected: @Sendable () -> Bool = { true }
    /// Whether the request came over TLS.
    public var isTLS = false

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
    /// When set, the body is streamed (chunked) by this closure instead of `body`.
    public var stream: (@Sendable (MockBodyWriter) async -> Void)?
    /// Close the connection without answering, as a crashing or resetting upstream would.
    public var dropConnection = false

    public static let drop: MockHTTPResponse = {
        var response = MockHTTPResponse(status: 500)
        response.dropConnection = true
        return response
    }()

    public static func streaming(_ status: Int = 200, headers: [(name: String, value: String)] = [], _ stream: @escaping @Sendable (MockBodyWriter) async -> Void) -> MockHTTPResponse {
        var response = MockHTTPResponse(status: status, headers: headers)
        response.stream = stream
        return response
    }

    public init(status: Int, headers: [(name: String, value: String)] = [], body: String = "") {
        self.status = status
        self.headers = headers
        self.body = Array(body.utf8)
    }

    public static func json(_ status: Int, _ body: String) -> MockHTTPResponse {
        MockHTTPResponse(status: status, headers: [("Content-Type", "application/json")], body: body)
    }
}

/// Writes parts of a streamed response body; each write waits until the bytes are handed to
/// the socket, so a slow reader slows the writer down.
public struct MockBodyWriter: Sendable {
    let channel: any Channel

    public func write(_ text: String) async throws {
        try await write(Array(text.utf8))
    }

    public func write(_ bytes: [UInt8]) async throws {
        try await channel.writeAndFlush(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: bytes))))
    }

    public func write(_ buffer: ByteBuffer) async throws {
        try await channel.writeAndFlush(HTTPServerResponsePart.body(.byteBuffer(buffer)))
    }
}

/// A small HTTP/1.1 server on 127.0.0.1 for stand-in token issuers and APIs.
public final class MockHTTPServer: Sendable {
    public typealias Handler = @Sendable (MockHTTPRequest) async -> MockHTTPResponse

    private let channel: any Channel
    public let port: Int

    private let scheme: String

    private init(channel: any Channel, scheme: String) {
        self.channel = channel
        self.scheme = scheme
        self.port = channel.localAddress?.port ?? 0
    }

    /// Starts listening on `127.0.0.1:port` (0 picks a free port); with `tls`, as an https
    /// server (a context that verifies peers requires a client certificate).
    public static func start(port: Int = 0, tls: NIOSSLContext? = nil, handler: @escaping Handler) async throws -> MockHTTPServer {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // NIO's default of 128 overflowed when 200 clients connected at once on a loaded
            // machine: Linux then drops the handshake's last ACK, and the request sent on that
            // half-open connection waited out retransmissions until the client's read timeout.
            .serverChannelOption(.backlog, value: 1024)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls)) }
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(RequestHandler(handler: handler))
                }
            }
            .bind(host: "127.0.0.1", port: port)
            .get()
        return MockHTTPServer(channel: channel, scheme: tls == nil ? "http" : "https")
    }

    public var baseURL: String { "\(scheme)://127.0.0.1:\(port)" }

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
                let channel = context.channel
                let request = MockHTTPRequest(
                    method: head.method.rawValue, uri: head.uri,
                    headers: head.headers.map { ($0.name, $0.value) }, body: body,
                    isClientConnected: { channel.isActive },
                    isTLS: (try? channel.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self)) != nil
                )
                let keepAlive = head.isKeepAlive
                let handler = self.handler
                Task {
                    let response = await handler(request)
                    if response.dropConnection {
                        // SO_LINGER 0 makes the close a reset (RST), not an orderly FIN.
                        try? await (channel as? any SocketOptionProvider)?.setSoLinger(linger(l_onoff: 1, l_linger: 0)).get()
                        try? await channel.close()
                        return
                    }
                    var headers = HTTPHeaders(response.headers.map { ($0.name, $0.value) })
                    if response.stream == nil {
                        headers.replaceOrAdd(name: "Content-Length", value: "\(response.body.count)")
                    } else if !headers.contains(name: "content-length") {
                        headers.replaceOrAdd(name: "Transfer-Encoding", value: "chunked")
                    }
                    if !keepAlive { headers.replaceOrAdd(name: "Connection", value: "close") }
                    let responseHead = HTTPResponseHead(version: .http1_1, status: .init(statusCode: response.status), headers: headers)
                    let body = response.body
                    try? await channel.writeAndFlush(HTTPServerResponsePart.head(responseHead))
                    if let stream = response.stream {
                        await stream(MockBodyWriter(channel: channel))
                    } else if !body.isEmpty {
                        try? await channel.writeAndFlush(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: body))))
                    }
                    try? await channel.writeAndFlush(HTTPServerResponsePart.end(nil))
                    if !keepAlive { try? await channel.close() }
                }
            }
        }
    }
}
