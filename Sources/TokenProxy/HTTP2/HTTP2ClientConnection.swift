import Logging
import NIOCore
import NIOHTTP2

/// A client connection served as HTTP/2 (SPEC §5): swift-nio-http2 frames it, enforces the
/// protocol's limits and runs each stream in a child channel of its own, where an
/// ``HTTP2StreamBridge`` puts the stream in front of a ``ProxyRequestHandler`` of this event loop.
///
/// The limits, announced in SETTINGS and enforced by the framing layer: `maxConcurrentStreams`;
/// `maxHeaderBytes` for a decoded header list (HPACK bombs, CONTINUATION floods); a client
/// resetting more than `maxResetsPerSecond` streams a second gets `GOAWAY(ENHANCE_YOUR_CALM)`
/// (rapid reset, CVE-2023-44487); SETTINGS and PING floods are bounded by swift-nio-http2's
/// control-frame rate limit. Flow-control windows per stream and per connection bound what a
/// slow reader or a fast writer costs.
///
/// The connection's life: `NIOHTTP2ServerConnectionManagementHandler` closes it after
/// `idleTimeout` without streams and, on a graceful stop (`ChannelShouldQuiesceEvent`), sends
/// `GOAWAY` and closes once the open streams are done; ``HTTP2ConnectionGuard`` closes it on a
/// connection error, and when no stream came within `headerTimeout`; ``GoAwayCodeRewriter``
/// makes streams beyond the limit a `GOAWAY(ENHANCE_YOUR_CALM)`.
enum HTTP2ClientConnection {
    /// Replaces the connection's HTTP/1.1 handler `http1` with HTTP/2's; `makeRequestHandler`
    /// makes the handler of each stream.
    static func takeOver(
        _ pipeline: ChannelPipeline.SynchronousOperations, from http1: ProxyRequestHandler, eventLoop: any EventLoop,
        context: ProxyContextBox, makeRequestHandler: @escaping @Sendable () -> ProxyRequestHandler
    ) throws {
        let limits = context.load().limits
        pipeline.removeHandler(context: try pipeline.context(handler: http1), promise: nil)
        let management = NIOHTTP2ServerConnectionManagementHandler(
            eventLoop: eventLoop,
            configuration: .init(maxIdleTime: TimeAmount(limits.idleTimeout), maxAge: nil, maxGraceTime: nil, keepalive: nil))
        let rewriter = GoAwayCodeRewriter()
        let connectionGuard = HTTP2ConnectionGuard(firstStreamTimeout: TimeAmount(limits.headerTimeout), rewriter: rewriter, logger: context.load().logger)
        let http2 = NIOHTTP2Handler(
            mode: .server, eventLoop: eventLoop, connectionConfiguration: connectionConfiguration(limits),
            streamConfiguration: streamConfiguration(limits),
            // Streams open and close in the multiplexer: both handlers hear of it from here.
            streamDelegate: StreamEvents(management: management.http2StreamDelegate, connectionGuard: NIOLoopBound(connectionGuard, eventLoop: eventLoop))
        ) { stream in
            stream.eventLoop.makeCompletedFuture {
                try stream.pipeline.syncOperations.addHandlers([HTTP2StreamBridge(refused: { refused($0, context: context) }), makeRequestHandler()])
            }
        }
        // The answers that one upstream read burst completes leave in one write.
        try pipeline.addHandlers([FlushCoalescer(), rewriter, http2, management, connectionGuard])
    }

    /// A stream whose head broke HTTP/2's own rules: counted and logged as any answer of the
    /// proxy's own (`tokenproxy_proxy_errors_total`, a `request answered by the proxy` line).
    private static func refused(_ error: ProxyError, context: ProxyContextBox) {
        let current = context.load()
        current.statistics.answeredByProxy(error.code)
        current.unrouted.answeredByProxy(error.code)
        current.logger.warning(
            "request answered by the proxy",
            metadata: [
                "protocol": "HTTP/2", "status": "\(error.code.status.code)", "error": "\(error.code.rawValue)", "reason": "\(error.message)",
                "requestId": "\(error.requestID ?? "-")",
            ])
    }

    static func connectionConfiguration(_ limits: Configuration.Limits) -> NIOHTTP2Handler.ConnectionConfiguration {
        var configuration = NIOHTTP2Handler.ConnectionConfiguration()
        configuration.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: limits.maxConcurrentStreams),
            HTTP2Setting(parameter: .maxHeaderListSize, value: limits.maxHeaderBytes),
            HTTP2Setting(parameter: .initialWindowSize, value: streamWindow),
        ]
        // What all streams together may have in flight towards the proxy.
        configuration.targetWindowSize = 1 << 20
        return configuration
    }

    static func streamConfiguration(_ limits: Configuration.Limits) -> NIOHTTP2Handler.StreamConfiguration {
        var configuration = NIOHTTP2Handler.StreamConfiguration()
        configuration.targetWindowSize = streamWindow
        // A stream is unwritable (and its upstream read pauses) beyond this much unsent.
        configuration.outboundBufferSizeHighWatermark = 64 * 1024
        configuration.outboundBufferSizeLowWatermark = 32 * 1024
        configuration.streamResetFrameRateLimit.maximumCount = limits.maxResetsPerSecond
        configuration.streamResetFrameRateLimit.windowLength = .seconds(1)
        return configuration
    }

    /// The flow-control window of each stream, both ways: what a client can send before the
    /// request machine reads it.
    static let streamWindow = 65_535
}

/// Closes an HTTP/2 connection whose framing layer gave up on it (a connection error: its
/// `GOAWAY` is already written), or that opened no stream within the header timeout, or whose
/// client stopped sending and has no stream left.
final class HTTP2ConnectionGuard: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame

    private let firstStreamTimeout: TimeAmount
    private let rewriter: GoAwayCodeRewriter
    private let logger: Logger
    private var firstStreamDeadline: Scheduled<Void>?
    private var openStreams = 0
    private var inputClosed = false

    init(firstStreamTimeout: TimeAmount, rewriter: GoAwayCodeRewriter, logger: Logger) {
        self.firstStreamTimeout = firstStreamTimeout
        self.rewriter = rewriter
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let channel = context.channel
        firstStreamDeadline = context.eventLoop.scheduleTask(in: firstStreamTimeout) { channel.close(promise: nil) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        firstStreamDeadline?.cancel()
        self.context = nil
    }

    private var context: ChannelHandlerContext?

    func streamCreated() {
        firstStreamDeadline?.cancel()
        firstStreamDeadline = nil
        openStreams += 1
    }

    func streamClosed() {
        openStreams -= 1
        if inputClosed, openStreams == 0 { context?.close(promise: nil) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            inputClosed = true
            if openStreams == 0 { context.close(promise: nil) }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A stream error reset its stream and leaves the connection open; anything else ends it.
        guard Self.endsConnection(error), !closing else { return }
        closing = true
        rewriter.errorReported(error)
        logger.info(
            "HTTP/2 connection closed", metadata: ["client": "\(RequestRecord.describe(context.channel.remoteAddress))", "reason": "\(error)"])
        // The GOAWAY first, then our side of the connection; its side a moment later. Closed
        // at once with the client's frames still unread, the kernel would answer them with a
        // reset that can destroy the GOAWAY before the client reads it.
        context.close(mode: .output, promise: nil)
        let channel = context.channel
        context.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
    }

    private var closing = false

    /// Whether swift-nio-http2 answered `error` with `GOAWAY` (a connection error), or it is
    /// not HTTP/2's at all (the socket failed).
    static func endsConnection(_ error: any Error) -> Bool {
        guard error is any NIOHTTP2Error else { return true }
        switch error {
        case is NIOHTTP2Errors.ExcessiveRSTFrames, is NIOHTTP2Errors.ExcessiveControlFrames, is NIOHTTP2Errors.ExcessiveContinuationFrames,
            is NIOHTTP2Errors.ExcessiveEmptyDataFrames, is NIOHTTP2Errors.ExcessiveNumberOfGlitches, is NIOHTTP2Errors.ExcessiveStreamErrors,
            is NIOHTTP2Errors.ExcessivelyLargeHeaderBlock, is NIOHTTP2Errors.ExcessiveOutboundFrameBuffering, is NIOHTTP2Errors.UnableToParseFrame,
            is NIOHTTP2Errors.BadClientMagic, is NIOHTTP2Errors.MaxStreamsViolation, is NIOHTTP2Errors.NoSuchStream,
            is NIOHTTP2Errors.StreamIDTooSmall, is NIOHTTP2Errors.InvalidStreamIDForPeer:
            return true
        default:
            return false
        }
    }
}

/// Tells the connection's handlers that a stream opened or closed (the multiplexer knows; the
/// pipeline does not see it).
private struct StreamEvents: NIOHTTP2StreamDelegate {
    let management: NIOHTTP2ServerConnectionManagementHandler.HTTP2StreamDelegate
    let connectionGuard: NIOLoopBound<HTTP2ConnectionGuard>

    func streamCreated(_ id: HTTP2StreamID, channel: any Channel) {
        management.streamCreated(id, channel: channel)
        connectionGuard.value.streamCreated()
    }

    func streamClosed(_ id: HTTP2StreamID, channel: any Channel) {
        management.streamClosed(id, channel: channel)
        connectionGuard.value.streamClosed()
    }
}
