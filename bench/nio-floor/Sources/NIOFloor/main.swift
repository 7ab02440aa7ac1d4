import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix

/// Copies what one side reads to the other side, flushing once per read burst.
final class RelayHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    var peer: (any Channel)?
    /// Bytes read before the peer was connected.
    private var early: [ByteBuffer] = []
    private var wrote = false

    func connected(to peer: any Channel) {
        self.peer = peer
        for buffer in early { peer.write(buffer, promise: nil) }
        early.removeAll()
        peer.flush()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        guard let peer else {
            early.append(buffer)
            return
        }
        peer.write(buffer, promise: nil)
        wrote = true
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if wrote {
            wrote = false
            peer?.flush()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        peer?.close(promise: nil)
        peer = nil
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// Answers every HTTP/2 stream itself: `200` with `{"ok":true}`, as the bench backend does. The
/// floor of any HTTP/2 server on swift-nio-http2's stream channels, before it proxies anything.
final class StreamAnswer: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .headers(let headers) = unwrapInboundIn(data), headers.endStream else { return }
        context.write(wrapOutboundOut(.headers(.init(headers: answerHeaders))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.data(.init(data: .byteBuffer(answerBody), endStream: true))), promise: nil)
    }
}

/// The same answer on the connection's frames, with no stream channel at all: the floor of
/// swift-nio-http2's framing, HPACK and stream state alone.
final class FrameAnswer: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame
    private var wrote = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard case .headers(let headers) = frame.payload, headers.endStream else { return }
        context.write(wrapOutboundOut(HTTP2Frame(streamID: frame.streamID, payload: .headers(.init(headers: answerHeaders)))), promise: nil)
        context.write(
            wrapOutboundOut(HTTP2Frame(streamID: frame.streamID, payload: .data(.init(data: .byteBuffer(answerBody), endStream: true)))),
            promise: nil)
        wrote = true
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if wrote {
            wrote = false
            context.flush()
        }
        context.fireChannelReadComplete()
    }
}

let answerHeaders: HPACKHeaders = [":status": "200", "content-type": "application/json", "content-length": "12"]
let answerBody = ByteBuffer(string: "{\"ok\":true}\n")

let arguments = CommandLine.arguments
let group = MultiThreadedEventLoopGroup.singleton

/// `h2 PORT` and `h2-frames PORT`: HTTP/2 (prior knowledge) answered by the floor itself.
if arguments.count == 3, arguments[1] == "h2" || arguments[1] == "h2-frames", let listenPort = Int(arguments[2]) {
    let streams = arguments[1] == "h2"
    let server = try await ServerBootstrap(group: group)
        .serverChannelOption(.backlog, value: 1024)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
        .childChannelInitializer { client in
            client.eventLoop.makeCompletedFuture {
                var connection = NIOHTTP2Handler.ConnectionConfiguration()
                connection.initialSettings = [HTTP2Setting(parameter: .maxConcurrentStreams, value: 100)]
                if streams {
                    try client.pipeline.syncOperations.addHandler(
                        NIOHTTP2Handler(mode: .server, eventLoop: client.eventLoop, connectionConfiguration: connection, streamConfiguration: .init()) {
                            stream in stream.eventLoop.makeCompletedFuture { try stream.pipeline.syncOperations.addHandler(StreamAnswer()) }
                        })
                } else {
                    try client.pipeline.syncOperations.addHandlers([NIOHTTP2Handler(mode: .server, connectionConfiguration: connection), FrameAnswer()])
                }
            }
        }
        .bind(host: "127.0.0.1", port: listenPort)
        .get()
    try await server.closeFuture.get()
    exit(0)
}

guard arguments.count == 3, let listenPort = Int(arguments[1]), let upstreamPort = Int(arguments[2]) else {
    print("usage: NIOFloor LISTEN_PORT UPSTREAM_PORT | NIOFloor h2|h2-frames LISTEN_PORT")
    exit(2)
}
let server = try await ServerBootstrap(group: group)
    .serverChannelOption(.backlog, value: 1024)
    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
    .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
    .childChannelInitializer { client in
        let clientSide = RelayHandler()
        return client.eventLoop.makeCompletedFuture {
            try client.pipeline.syncOperations.addHandler(clientSide)
        }.flatMap {
            ClientBootstrap(group: client.eventLoop)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { upstream in
                    upstream.eventLoop.makeCompletedFuture {
                        let upstreamSide = RelayHandler()
                        upstreamSide.peer = client
                        try upstream.pipeline.syncOperations.addHandler(upstreamSide)
                    }
                }
                .connect(host: "127.0.0.1", port: upstreamPort)
                .assumeIsolated()
                .map { upstream in clientSide.connected(to: upstream) }
                .nonisolated()
        }
    }
    .bind(host: "127.0.0.1", port: listenPort)
    .get()
try await server.closeFuture.get()
