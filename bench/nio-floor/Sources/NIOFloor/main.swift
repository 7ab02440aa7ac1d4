import NIOCore
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

let arguments = CommandLine.arguments
guard arguments.count == 3, let listenPort = Int(arguments[1]), let upstreamPort = Int(arguments[2]) else {
    print("usage: NIOFloor LISTEN_PORT UPSTREAM_PORT")
    exit(2)
}
let group = MultiThreadedEventLoopGroup.singleton
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
