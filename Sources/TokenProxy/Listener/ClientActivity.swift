import NIOCore

/// When the client last began sending, as seen below the HTTP decoder: lets the request
/// handler tell an idle keep-alive connection (`limits.idleTimeout`) from one that is sending a
/// head too slowly (`limits.headerTimeout`, a slowloris). Lives on the connection's event loop.
final class ClientActivity {
    /// The first bytes that arrived since the connection was last idle, if any.
    var firstBytesSinceIdle: NIODeadline?

    /// The connection is idle again (a request was answered, or it just opened).
    func becameIdle() {
        firstBytesSinceIdle = nil
    }
}

/// Notes arriving bytes in a ``ClientActivity`` and passes them on unchanged; sits before the
/// request decoder.
final class ClientActivityHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let activity: ClientActivity

    init(activity: ClientActivity) {
        self.activity = activity
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if activity.firstBytesSinceIdle == nil { activity.firstBytesSinceIdle = .now() }
        context.fireChannelRead(data)
    }
}
