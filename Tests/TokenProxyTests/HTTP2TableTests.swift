import Foundation
import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP2
import Testing

@testable import TokenProxy

/// What HTTP/2 adds, as tables against the pure translators (SPEC §5): a stream's head as the
/// HTTP/1.1 head the rules read, a response as frames, the proxy's own answers as gRPC
/// statuses, and the first bytes that choose the protocol.
@Suite("HTTP/2 translation")
struct HTTP2TableTests {
    static func head(_ fields: [(String, String)], endStream: Bool = true) -> Result<HTTP2RequestHead, ProxyError> {
        HTTP2RequestHead.translate(HPACKHeaders(fields), endStream: endStream)
    }

    static let get: [(String, String)] = [(":method", "GET"), (":scheme", "http"), (":authority", "127.0.0.1:8787"), (":path", "/v1/items?x=1")]

    @Test func aHeadBecomesTheHTTP1HeadTheRulesRead() throws {
        let plain = try Self.head(Self.get + [("accept", "application/json"), ("cookie", "a=1"), ("cookie", "b=2")]).get()
        #expect(String(buffer: plain.bytes) == "GET /v1/items?x=1 HTTP/1.1\r\nhost: 127.0.0.1:8787\r\naccept: application/json\r\ncookie: a=1; b=2\r\n\r\n")
        #expect(!plain.chunkedBody && !plain.isGRPC && !plain.isHEAD)

        let post = [(":method", "POST"), (":scheme", "http"), (":authority", "localhost"), (":path", "/orders")]
        let sized = try Self.head(post + [("content-length", "18")], endStream: false).get()
        #expect(String(buffer: sized.bytes).hasSuffix("content-length: 18\r\n\r\n"))
        #expect(!sized.chunkedBody)
        let unsized = try Self.head(post + [("content-type", "application/grpc+proto"), ("te", "trailers")], endStream: false).get()
        #expect(String(buffer: unsized.bytes) == "POST /orders HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/grpc+proto\r\ntransfer-encoding: chunked\r\n\r\n")
        #expect(unsized.chunkedBody && unsized.isGRPC)
        #expect(try Self.head(post + [("content-type", "application/grpc-web")]).get().isGRPC == false)
        #expect(try Self.head([(":method", "HEAD")] + Self.get.dropFirst()).get().isHEAD)
    }

    @Test("a head that breaks RFC 9113 §8 is refused before the rules", arguments: [
        ("uppercase name", get + [("Accept", "x")]),
        ("connection-specific", get + [("connection", "keep-alive")]),
        ("transfer-encoding", get + [("transfer-encoding", "chunked")]),
        ("te other than trailers", get + [("te", "gzip")]),
        ("pseudo after regular", [(":method", "GET"), ("accept", "x"), (":scheme", "http"), (":path", "/")]),
        ("unknown pseudo", get + [(":status", "200")]),
        ("duplicate :path", get + [(":path", "/other")]),
        ("missing :scheme", [(":method", "GET"), (":authority", "a"), (":path", "/")]),
        ("empty :path", [(":method", "GET"), (":scheme", "http"), (":path", "")]),
        (":authority and host differ", get + [("host", "evil.example")]),
        ("CR in a value", get + [("x-a", "1\r\nx-b: 2")]),
        ("NUL in a value", get + [("x-a", "1\u{0}")]),
        ("white space at a value's end", get + [("x-a", "1 ")]),
        ("white space in the path", [(":method", "GET"), (":scheme", "http"), (":path", "/a b")]),
        ("space in a name", get + [("x a", "1")]),
        ("conflicting content-length", get + [("content-length", "1"), ("content-length", "2")]),
    ] as [(String, [(String, String)])])
    func refusedHeads(_ name: String, fields: [(String, String)]) {
        guard case .failure(let error) = Self.head(fields) else {
            Issue.record("\(name): accepted")
            return
        }
        #expect(error.code == .badRequest, "\(name)")
    }

    @Test func aConnectGoesToTheRulesAsHTTP1SpellsIt() throws {
        let connect = try Self.head([(":method", "CONNECT"), (":authority", "evil.example:443")]).get()
        #expect(String(buffer: connect.bytes).hasPrefix("CONNECT evil.example:443 HTTP/1.1\r\n"))
    }

    @Test func theRequestBodyIsChunkedOnlyWithoutALength() throws {
        let data = ByteBuffer(string: "hello")
        #expect(String(buffer: HTTP2RequestHead.bodyPart(data, chunked: true)) == "5\r\nhello\r\n")
        #expect(String(buffer: HTTP2RequestHead.bodyPart(data, chunked: false)) == "hello")
        #expect(try HTTP2RequestHead.bodyEnd(trailers: nil, chunked: false).get() == nil)
        #expect(try HTTP2RequestHead.bodyEnd(trailers: ["grpc-timeout": "1S"], chunked: true).get().map { String(buffer: $0) } == "0\r\ngrpc-timeout: 1S\r\n\r\n")
        guard case .failure = HTTP2RequestHead.bodyEnd(trailers: [":path": "/"], chunked: true) else {
            Issue.record("a pseudo-header in trailers was accepted")
            return
        }
    }

    /// Frame payloads as text: `H` headers (with `!` when they end the stream), `D` data.
    static func describe(_ frames: [HTTP2Frame.FramePayload]) -> [String] {
        frames.map { frame in
            switch frame {
            case .headers(let headers):
                "H\(headers.endStream ? "!" : "") " + headers.headers.map { "\($0.name)=\($0.value)" }.joined(separator: " ")
            case .data(let data):
                if case .byteBuffer(let bytes) = data.data { "D\(data.endStream ? "!" : "") \(String(buffer: bytes))" } else { "D?" }
            default:
                "?"
            }
        }
    }

    @Test func aResponseBecomesHeadersDataAndTheEndOfTheStream() throws {
        var sized = HTTP2ResponseFrames(isHEAD: false, isGRPC: false)
        let whole = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello"
        #expect(Self.describe(try sized.frames(for: ByteBuffer(string: whole))) == ["H :status=200 content-type=text/plain content-length=5", "D! hello"])
        #expect(sized.isComplete)

        var chunked = HTTP2ResponseFrames(isHEAD: false, isGRPC: false)
        #expect(Self.describe(try chunked.frames(for: ByteBuffer(string: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"))) == ["H :status=200"])
        #expect(Self.describe(try chunked.frames(for: ByteBuffer(string: "3\r\nabc\r\n"))) == ["D abc"])
        #expect(Self.describe(try chunked.frames(for: ByteBuffer(string: "0\r\n\r\n"))) == ["D! "])

        var empty = HTTP2ResponseFrames(isHEAD: false, isGRPC: false)
        #expect(Self.describe(try empty.frames(for: ByteBuffer(string: "HTTP/1.1 204 No Content\r\n\r\n"))) == ["H! :status=204"])

        var continued = HTTP2ResponseFrames(isHEAD: false, isGRPC: false)
        #expect(Self.describe(try continued.frames(for: HTTP2ResponseFrames.continueResponse)) == ["H :status=100"])
    }

    @Test func theProxysOwnAnswerToAGRPCCallIsAGRPCStatus() throws {
        var error = ProxyError(.tokenUnavailable, "token endpoint failing: 100% down", retryAfter: 5)
        error.requestID = "req-1"
        let frames = Self.describe(HTTP2ResponseFrames.frames(for: error, isGRPC: true))
        #expect(frames == [
            "H! :status=200 content-type=application/grpc grpc-status=14 grpc-message=token endpoint failing: 100%25 down x-tokenproxy-error=token_unavailable retry-after=5"
        ])
        let json = Self.describe(HTTP2ResponseFrames.frames(for: error, isGRPC: false))
        #expect(json.first?.hasPrefix("H :status=503 content-type=application/json") == true)
        #expect(json.first?.contains("x-tokenproxy-error=token_unavailable") == true)
        #expect(ProxyError.Code.reauthenticationRequired.grpcStatus == 16)
        #expect(ProxyError.Code.upstreamUnavailable.grpcStatus == 14)
    }

    @Test("the first bytes choose the protocol", arguments: [
        ("GET / HTTP/1.1\r\n", ClientProtocolSniffer.Match.http1),
        ("POST / HTTP/1.1\r\n", .http1),
        ("PRI * HTTP/1.1\r\n", .http1),
        ("P", .undecided),
        ("PRI * HTTP/2.0\r\n", .undecided),
        ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", .http2),
        ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\u{0}\u{0}", .http2),
        ("", .undecided),
    ])
    func sniffing(_ bytes: String, expected: ClientProtocolSniffer.Match) {
        #expect(ClientProtocolSniffer.match(ByteBuffer(string: bytes)) == expected)
    }

    @Test func aGRPCCallIsRecognisedByItsContentType() {
        for (value, expected) in [("application/grpc", true), ("application/grpc+proto", true), ("Application/GRPC;x=1", true), ("application/grpc-web", false), ("application/grpcx", false), ("text/plain", false)] {
            #expect(HTTP2RequestHead.isGRPC(value) == expected, "\(value)")
        }
    }

    /// Stream flushes outside the connection's read wait for the loop's tick and leave as one;
    /// inside a read they pass (swift-nio-http2 flushes once at its end); a close sends what is
    /// held first.
    @Test func flushesOutsideAReadLeaveOncePerTick() throws {
        let channel = EmbeddedChannel(handler: FlushCoalescer())
        defer { _ = try? channel.finish(acceptAlreadyClosed: true) }
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        var flushes = 0
        let counter = FlushCounter { flushes += 1 }
        try channel.pipeline.syncOperations.addHandler(counter, position: .first)

        for part in ["a", "b", "c"] { channel.writeAndFlush(ByteBuffer(string: part), promise: nil) }
        #expect(flushes == 0, "held until the tick's tasks run")
        channel.embeddedEventLoop.run()
        #expect(flushes == 1)
        var sent = ""
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { sent += String(buffer: buffer) }
        #expect(sent == "abc")

        // swift-nio-http2 answering inside the connection's read (a PING, say).
        try channel.pipeline.syncOperations.addHandler(AnswerInRead())
        try channel.writeInbound(ByteBuffer(string: "frames"))
        #expect(flushes == 3, "inside a read and its read-complete a flush passes")

        channel.writeAndFlush(ByteBuffer(string: "goaway"), promise: nil)
        channel.close(mode: .output, promise: nil)
        #expect(flushes == 4, "a close sends what is held first")
    }
}

/// Counts the flushes that reach the socket.
private final class FlushCounter: ChannelOutboundHandler {
    typealias OutboundIn = IOData
    let flushed: () -> Void
    init(_ flushed: @escaping () -> Void) { self.flushed = flushed }
    func flush(context: ChannelHandlerContext) {
        flushed()
        context.flush()
    }
}

/// Answers each read at once, with a flush, as swift-nio-http2 does a PING, and flushes again
/// at the read's end, as it does what the read produced.
private final class AnswerInRead: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.writeAndFlush(data, promise: nil)
    }
    func channelReadComplete(context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: "settings-ack")), promise: nil)
    }
}
