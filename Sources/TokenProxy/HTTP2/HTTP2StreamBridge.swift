import NIOCore
import NIOHPACK
import NIOHTTP2

/// One HTTP/2 stream as an HTTP/1.1 connection carrying one request, for the
/// ``ProxyRequestHandler`` behind it: the stream's frames become the bytes of that request
/// (``HTTP2RequestHead``), and the bytes the handler answers become the stream's frames
/// (``HTTP2ResponseFrames``). So a stream goes through the same request machine, parser and
/// rules as an HTTP/1.1 request: token, 401 → refresh → replay, retries, faults, limits, ids.
///
/// Backpressure passes through unchanged: the handler's `read()` reaches the stream channel
/// (which then stops granting the client flow-control window), and the stream channel's
/// writability (its window and buffer) reaches the handler.
final class HTTP2StreamBridge: ChannelDuplexHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = HTTP2Frame.FramePayload

    private enum Inbound {
        case awaitingHead
        case body(chunked: Bool)
        case ended
        /// The head was refused here: nothing more of the stream is passed on.
        case refused
    }

    private var inbound = Inbound.awaitingHead
    private var response = HTTP2ResponseFrames(isHEAD: false, isGRPC: false)
    /// Counts and logs a head refused here, as the request handler does its refusals.
    private let refused: (ProxyError) -> Void
    /// When the stream's last frame went out: a write after it that makes no frame (the
    /// handler's flush-then-close) completes with it.
    private var lastFrameWritten: EventLoopFuture<Void>?

    init(refused: @escaping (ProxyError) -> Void) {
        self.refused = refused
    }

    // MARK: Client → request machine

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .headers(let headers):
            switch inbound {
            case .awaitingHead:
                receiveHead(headers.headers, endStream: headers.endStream, context: context)
            case .body(let chunked):
                // Trailers: they end the request (RFC 9113 §8.1).
                inbound = .ended
                switch HTTP2RequestHead.bodyEnd(trailers: headers.headers, chunked: chunked) {
                case .success(let end): if let end { context.fireChannelRead(wrapInboundOut(end)) }
                case .failure(let error): refuse(error, context: context)
                }
            case .ended, .refused:
                break
            }
        case .data(let data):
            guard case .body(let chunked) = inbound, case .byteBuffer(let bytes) = data.data else { return }
            if bytes.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(HTTP2RequestHead.bodyPart(bytes, chunked: chunked))) }
            if data.endStream {
                inbound = .ended
                if case .success(let end?) = HTTP2RequestHead.bodyEnd(trailers: nil, chunked: chunked) {
                    context.fireChannelRead(wrapInboundOut(end))
                }
            }
        case .rstStream:
            // The client gave up on the stream; the stream channel closes next.
            inbound = .refused
        default:
            break
        }
    }

    private func receiveHead(_ headers: HPACKHeaders, endStream: Bool, context: ChannelHandlerContext) {
        switch HTTP2RequestHead.translate(headers, endStream: endStream) {
        case .success(let head):
            response = HTTP2ResponseFrames(isHEAD: head.isHEAD, isGRPC: head.isGRPC)
            inbound = endStream ? .ended : .body(chunked: head.chunkedBody)
            context.fireChannelRead(wrapInboundOut(head.bytes))
        case .failure(let error):
            response = HTTP2ResponseFrames(isHEAD: false, isGRPC: Self.isGRPC(headers))
            refuse(error, context: context)
        }
    }

    /// Answers a stream the request machine never sees (its head broke HTTP/2's own rules),
    /// counted and logged as any answer of the proxy's own, then ends it.
    private func refuse(_ error: ProxyError, context: ChannelHandlerContext) {
        inbound = .refused
        var error = error
        error.requestID = RequestID.generate().description
        refused(error)
        let frames = HTTP2ResponseFrames.frames(for: error, isGRPC: response.isGRPC)
        for frame in frames { context.write(wrapOutboundOut(frame), promise: nil) }
        context.flush()
        // Ended by our END_STREAM; a client still sending gets RST_STREAM from the close.
        context.close(promise: nil)
    }

    // MARK: Request machine → client

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .refused = inbound {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        let frames: [HTTP2Frame.FramePayload]
        do {
            frames = try response.frames(for: unwrapOutboundIn(data))
        } catch {
            // The handler's own bytes did not parse: a defect, not the client's doing.
            promise?.fail(error)
            context.fireErrorCaught(error)
            return
        }
        guard let last = frames.last else {
            if let lastFrameWritten { lastFrameWritten.cascade(to: promise) } else { promise?.succeed(()) }
            return
        }
        for frame in frames.dropLast() { context.write(wrapOutboundOut(frame), promise: nil) }
        if response.isComplete {
            let written = promise ?? context.eventLoop.makePromise()
            lastFrameWritten = written.futureResult
            context.write(wrapOutboundOut(last), promise: written)
        } else {
            context.write(wrapOutboundOut(last), promise: promise)
        }
    }

    private static func isGRPC(_ headers: HPACKHeaders) -> Bool {
        headers.first(name: "content-type").map(HTTP2RequestHead.isGRPC) ?? false
    }
}
