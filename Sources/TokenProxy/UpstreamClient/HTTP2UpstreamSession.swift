import NIOCore
import NIOHTTP2
import NIOPosix
import NIOSSL
import NIOTLS

/// One multiplexed HTTP/2 connection to an upstream, on one event loop: every request of that
/// loop to that upstream is a stream of it (SPEC §5). swift-nio-http2 keeps the streams within
/// the peer's `SETTINGS_MAX_CONCURRENT_STREAMS` (a stream beyond it waits for one to close).
/// After the peer's `GOAWAY`, or once it failed, the pool opens another for new streams; the
/// streams it still carries finish on it.
final class HTTP2UpstreamSession {
    let channel: any Channel
    private let multiplexer: NIOHTTP2Handler.StreamMultiplexer
    private let scheme: String
    private(set) var openStreams = 0
    /// Told `GOAWAY`, or failed: no new stream goes on it.
    private(set) var isGoingAway = false
    /// When its last stream closed: a session idle for the pool's idle timeout is closed.
    private(set) var idleSince = NIODeadline.now()

    var isUsable: Bool { channel.isActive && !isGoingAway }

    private init(channel: any Channel, multiplexer: NIOHTTP2Handler.StreamMultiplexer, scheme: String) {
        self.channel = channel
        self.multiplexer = multiplexer
        self.scheme = scheme
    }

    /// Connects (TLS with ALPN `h2` for https, prior knowledge for http) and sets HTTP/2 up.
    static func connect(
        on eventLoop: any EventLoop, target: UpstreamURL, connectTimeout: TimeAmount, tls: UpstreamConnectionPool.TLSSettings?
    ) -> EventLoopFuture<HTTP2UpstreamSession> {
        UpstreamConnectionPool.connect(on: eventLoop, to: target, timeout: connectTimeout, tls: tls) { operations in
            if tls != nil { try operations.addHandler(ALPNRequirement()) }
        }
        .flatMapThrowing { channel in try configure(channel, target: target) }
    }

    /// Sets HTTP/2 up on a connected channel (after TLS chose `h2`, or for prior knowledge).
    static func configure(_ channel: any Channel, target: UpstreamURL) throws -> HTTP2UpstreamSession {
        let operations = channel.pipeline.syncOperations
        var connection = NIOHTTP2Handler.ConnectionConfiguration()
        // The upstream does not push; its answers may be large.
        connection.initialSettings = [
            HTTP2Setting(parameter: .enablePush, value: 0),
            HTTP2Setting(parameter: .initialWindowSize, value: HTTP2ClientConnection.streamWindow),
            HTTP2Setting(parameter: .maxHeaderListSize, value: UpstreamResponseParser.maximumHeadBytes),
        ]
        connection.targetWindowSize = 1 << 20
        var stream = NIOHTTP2Handler.StreamConfiguration()
        stream.targetWindowSize = HTTP2ClientConnection.streamWindow
        // The requests of one client read burst leave in one write.
        try operations.addHandler(FlushCoalescer())
        let multiplexer = try operations.configureHTTP2Pipeline(
            mode: .client, connectionConfiguration: connection, streamConfiguration: stream, streamDelegate: nil
        ) { pushed in pushed.close() }
        let watcher = SessionWatcher()
        try operations.addHandler(watcher)
        let session = HTTP2UpstreamSession(channel: channel, multiplexer: multiplexer, scheme: target.scheme == .https ? "https" : "http")
        watcher.session = session
        return session
    }

    /// A new stream, as an ``UpstreamConnection`` that carries one request.
    func openStream(target: UpstreamURL) -> EventLoopFuture<UpstreamConnection> {
        openStreams += 1
        let scheme = self.scheme
        let loopBound = NIOLoopBound(self, eventLoop: channel.eventLoop)
        let opened = multiplexer.createStreamChannel { stream in
            stream.eventLoop.makeCompletedFuture {
                let bridge = HTTP2UpstreamStreamBridge(scheme: scheme) { loopBound.value.failure }
                try stream.pipeline.syncOperations.addHandlers([bridge, UpstreamHandler()])
            }
        }
        opened.whenComplete { result in
            switch result {
            case .success(let stream): stream.closeFuture.whenComplete { _ in loopBound.value.streamClosed() }
            case .failure: loopBound.value.streamClosed()
            }
        }
        return opened.flatMapErrorThrowing { error in
            // A stream on a failed connection: the connection's own failure says more.
            throw loopBound.value.failure ?? error
        }.flatMapThrowing { stream in
            UpstreamConnection(channel: stream, handler: try stream.pipeline.syncOperations.handler(type: UpstreamHandler.self), target: target, isStream: true)
        }
    }

    private func streamClosed() {
        openStreams -= 1
        if openStreams == 0 {
            idleSince = .now()
            if isGoingAway { channel.close(promise: nil) }
        }
    }

    /// No new stream goes on it; it closes once its streams are done.
    func retire() {
        isGoingAway = true
        if openStreams == 0 { channel.close(promise: nil) }
    }

    /// Why it failed, for the requests whose streams it could not open.
    fileprivate(set) var failure: (any Error)?
}

/// Notes the peer's `GOAWAY` (and a failed connection) on its session.
private final class SessionWatcher: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame

    var session: HTTP2UpstreamSession?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .goAway = unwrapInboundIn(data).payload { session?.retire() }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        session?.failure = error
        session?.retire()
        context.close(promise: nil)
    }
}

/// Over TLS, `upstream.protocol: http2` needs the server to choose `h2` by ALPN: a server that
/// does not is told so by a failed connection, rather than sent frames it cannot read.
private final class ALPNRequirement: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted(let negotiated) = event {
            if negotiated != "h2" {
                context.fireErrorCaught(UpstreamProtocolError(negotiated: negotiated))
                context.close(promise: nil)
                return
            }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }
}

struct UpstreamProtocolError: Error, CustomStringConvertible {
    var negotiated: String?
    var description: String {
        "the upstream did not agree to HTTP/2 over TLS (ALPN chose \(negotiated.map { "\"\($0)\"" } ?? "nothing")); set upstream.protocol to http1 or auto"
    }
}

/// Reports the protocol TLS chose by ALPN (`upstream.protocol: auto`), then leaves.
final class ALPNReporter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private var chosen: EventLoopPromise<String?>?

    init(chosen: EventLoopPromise<String?>) {
        self.chosen = chosen
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted(let negotiated) = event {
            chosen.take()?.succeed(negotiated)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        chosen.take()?.fail(error)
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        chosen.take()?.fail(ChannelError.eof)
        context.fireChannelInactive()
    }
}
