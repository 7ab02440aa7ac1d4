import NIOCore
import NIOEmbedded
import NIOHTTP2

extension FuzzTargets {
    /// HTTP/2 frames from a client (the bytes after the preface), through swift-nio-http2 with the
    /// proxy's limits and each stream's ``HTTP2StreamBridge``: whatever the frames, the HTTP/1.1
    /// bytes a stream hands the request machine parse as requests, and nothing the rules let
    /// through carries a bare CR, LF or NUL upstream. Each request is answered, so the response
    /// path runs too.
    static func http2Frames(_ bytes: UnsafeRawBufferPointer) {
        let channel = EmbeddedChannel()
        let limits = rules.limits
        let handler = NIOHTTP2Handler(
            mode: .server, eventLoop: channel.embeddedEventLoop, connectionConfiguration: HTTP2ClientConnection.connectionConfiguration(limits),
            streamConfiguration: HTTP2ClientConnection.streamConfiguration(limits)
        ) { stream in
            stream.eventLoop.makeCompletedFuture {
                try stream.pipeline.syncOperations.addHandlers([HTTP2StreamBridge(refused: { _ in }), StreamRequestChecker(rules: rules)])
            }
        }
        try! channel.pipeline.syncOperations.addHandler(handler)
        // Active, as a real connection is: swift-nio-http2 closes a connection's streams when it
        // goes inactive only if it was active first. On a channel never connected the stream
        // channels and the multiplexer kept each other alive after `finish()` (LeakSanitizer:
        // ~12 KB per input, which stopped the first long run).
        try! channel.connect(to: try! SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        var input = ByteBuffer(staticString: ClientProtocolSniffer.preface)
        input.writeBytes(bytes)
        _ = try? channel.writeInbound(input)
        channel.embeddedEventLoop.run()
        _ = try? channel.finish(acceptAlreadyClosed: true)
    }
}

/// Stands in for the request handler behind a stream's bridge: parses what arrives and checks
/// it as ``FuzzTargets/requestParser(_:)`` does, then answers each whole request.
private final class StreamRequestChecker: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let rules: ForwardingRules
    private var parser: ClientRequestParser

    init(rules: ForwardingRules) {
        self.rules = rules
        parser = ClientRequestParser(limits: rules.parserLimits)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        parser.append(unwrapInboundIn(data))
        while true {
            let part: ClientRequestParser.Part?
            do throws(ProxyError) {
                part = try parser.next()
            } catch {
                context.writeAndFlush(wrapOutboundOut(error.response(keepAlive: false, allocator: context.channel.allocator)), promise: nil)
                context.close(promise: nil)
                return
            }
            guard let part else { return }
            switch part {
            case .head(let head):
                if case .success(let prepared) = rules.prepare(head, clientAddress: "127.0.0.1", faultsEnabled: true) {
                    FuzzTargets.checkLines(prepared.head, what: "prepared request head of an HTTP/2 stream")
                }
            case .body:
                break
            case .end:
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(staticString: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")), promise: nil)
                parser.startNextRequest()
            }
        }
    }
}
