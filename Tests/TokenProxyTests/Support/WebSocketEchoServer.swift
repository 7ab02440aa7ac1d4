import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket

/// A WebSocket upstream built on NIO's own WebSocket support (not the proxy's code): it accepts
/// an upgrade whose bearer token `accepts`, answers any other with 401, and echoes every text
/// frame back with `echo: ` before it.
final class WebSocketEchoServer: Sendable {
    private let channel: any Channel
    private let state = NIOLockedValueBox(State())

    struct State {
        var upgradeAuthorizations: [String] = []
        var upgrades = 0
        var closedTunnels = 0
    }

    var port: Int { channel.localAddress?.port ?? 0 }
    var url: String { "http://127.0.0.1:\(port)" }
    /// The `Authorization` of every upgrade request, in order.
    var authorizations: [String] { state.withLockedValue { $0.upgradeAuthorizations } }
    var upgrades: Int { state.withLockedValue { $0.upgrades } }
    /// Upgraded connections that have closed since.
    var closedTunnels: Int { state.withLockedValue { $0.closedTunnels } }

    init(accepts: @escaping @Sendable (_ token: String) -> Bool) async throws {
        let state = self.state
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                let upgrader = NIOWebSocketServerUpgrader(
                    shouldUpgrade: { channel, head in
                        let authorization = head.headers.first(name: "Authorization") ?? ""
                        state.withLockedValue { $0.upgradeAuthorizations.append(authorization) }
                        let token = authorization.hasPrefix("Bearer ") ? String(authorization.dropFirst(7)) : ""
                        return channel.eventLoop.makeSucceededFuture(accepts(token) ? HTTPHeaders() : nil)
                    },
                    upgradePipelineHandler: { channel, _ in
                        state.withLockedValue { $0.upgrades += 1 }
                        channel.closeFuture.whenComplete { _ in state.withLockedValue { $0.closedTunnels += 1 } }
                        return channel.pipeline.addHandler(EchoHandler())
                    }
                )
                let refusal = RefusalHandler()
                return channel.pipeline.configureHTTPServerPipeline(
                    // Once upgraded, frames are not HTTP: the refusal handler leaves with the HTTP ones.
                    withServerUpgrade: (upgraders: [upgrader], completionHandler: { context in context.pipeline.removeHandler(refusal, promise: nil) })
                ).flatMap {
                    channel.pipeline.addHandler(refusal)
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    func shutdown() async {
        try? await channel.close()
    }

    /// Answers a request that was not upgraded: 401, as a resource server does for a bad token.
    private final class RefusalHandler: ChannelInboundHandler, RemovableChannelHandler, Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard case .end = unwrapInboundIn(data) else { return }
            var headers = HTTPHeaders()
            headers.add(name: "WWW-Authenticate", value: #"Bearer error="invalid_token""#)
            headers.add(name: "Content-Length", value: "0")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .unauthorized, headers: headers))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }

    private final class EchoHandler: ChannelInboundHandler {
        typealias InboundIn = WebSocketFrame
        typealias OutboundOut = WebSocketFrame

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let frame = unwrapInboundIn(data)
            switch frame.opcode {
            case .text:
                var payload = context.channel.allocator.buffer(string: "echo: ")
                var data = frame.unmaskedData
                payload.writeBuffer(&data)
                context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .text, data: payload)), promise: nil)
            case .connectionClose:
                context.close(promise: nil)
            default:
                break
            }
        }
    }
}

/// WebSocket frames as a client writes and reads them (RFC 6455 §5), for raw-socket tests.
enum WebSocketWire {
    /// The upgrade request; the key is the RFC's example, so the accept value is known.
    static func upgradeRequest(path: String = "/ws") -> String {
        "GET \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    }

    static let expectedAccept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

    /// A masked text frame (clients must mask), payload under 126 bytes.
    static func clientText(_ text: String) -> [UInt8] {
        let payload = Array(text.utf8)
        precondition(payload.count < 126)
        let mask: [UInt8] = [0x12, 0x34, 0x56, 0x78]
        return [0x81, 0x80 | UInt8(payload.count)] + mask + payload.enumerated().map { $0.element ^ mask[$0.offset % 4] }
    }

    /// The text of every unmasked text frame in `bytes` (what a server sends).
    static func serverTexts(_ bytes: [UInt8]) -> [String] {
        var texts: [String] = []
        var position = 0
        while position + 2 <= bytes.count {
            let length = Int(bytes[position + 1] & 0x7F)
            guard length < 126, position + 2 + length <= bytes.count else { break }
            if bytes[position] & 0x0F == 0x1 { texts.append(String(decoding: bytes[(position + 2)..<(position + 2 + length)], as: UTF8.self)) }
            position += 2 + length
        }
        return texts
    }
}
