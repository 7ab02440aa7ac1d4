import NIOCore
import NIOHTTP2

/// Sits between the socket and swift-nio-http2 so that a client opening streams beyond
/// `limits.maxConcurrentStreams` reads `GOAWAY(ENHANCE_YOUR_CALM)` (SPEC §5), the code that
/// names abuse, where swift-nio-http2 writes `PROTOCOL_ERROR`.
///
/// swift-nio-http2 writes and flushes its `GOAWAY` inside the read that broke the limit, and only
/// then reports the error. So the writes made during a read are held until the read returns (a
/// batch it would make anyway: its frames go out at the end of the read); if the error was
/// ``MaxStreamsViolation``, the held `GOAWAY`'s code is changed before it goes. Writes made
/// outside a read pass straight through.
final class GoAwayCodeRewriter: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    private var reading = false
    private var held: [(data: IOData, promise: EventLoopPromise<Void>?)] = []
    private var heldFlush = false
    private var rewrite = false

    /// The error swift-nio-http2 just reported: whether the held `GOAWAY` gets another code.
    func errorReported(_ error: any Error) {
        if error is NIOHTTP2Errors.MaxStreamsViolation { rewrite = true }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        reading = true
        context.fireChannelRead(data)
        reading = false
        release(context: context)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard reading else { return context.write(data, promise: promise) }
        held.append((unwrapOutboundIn(data), promise))
    }

    func flush(context: ChannelHandlerContext) {
        guard reading else { return context.flush() }
        heldFlush = true
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        // Closed because of the error: what was written before it still goes first.
        release(context: context)
        context.close(mode: mode, promise: promise)
    }

    private func release(context: ChannelHandlerContext) {
        guard !held.isEmpty || heldFlush else { return }
        if rewrite {
            rewrite = false
            Self.rewriteGoAway(&held, from: .protocolError, to: .enhanceYourCalm)
        }
        let writes = held
        held.removeAll(keepingCapacity: true)
        for (data, promise) in writes { context.write(wrapOutboundOut(data), promise: promise) }
        if heldFlush {
            heldFlush = false
            context.flush()
        }
    }

    /// Walks the frames of `writes` (which start at a frame boundary: swift-nio-http2 writes
    /// whole frames) and changes the error code of each `GOAWAY` that carries `from`.
    static func rewriteGoAway(_ writes: inout [(data: IOData, promise: EventLoopPromise<Void>?)], from: HTTP2ErrorCode, to: HTTP2ErrorCode) {
        var payloadLeft = 0
        for index in writes.indices {
            guard case .byteBuffer(var buffer) = writes[index].data else {
                // A file region is payload.
                if case .fileRegion(let region) = writes[index].data { payloadLeft = max(0, payloadLeft - region.readableBytes) }
                continue
            }
            var offset = buffer.readerIndex
            var changed = false
            while offset < buffer.writerIndex {
                if payloadLeft > 0 {
                    let skipped = min(payloadLeft, buffer.writerIndex - offset)
                    payloadLeft -= skipped
                    offset += skipped
                    continue
                }
                // A frame header (RFC 9113 §4.1): length (24 bits), type, flags, stream id.
                guard offset + 9 <= buffer.writerIndex, let high = buffer.getInteger(at: offset, as: UInt16.self),
                    let low = buffer.getInteger(at: offset + 2, as: UInt8.self), let type = buffer.getInteger(at: offset + 3, as: UInt8.self)
                else { return }
                let length = Int(high) << 8 | Int(low)
                let codeAt = offset + 9 + 4
                if type == 0x7, length >= 8, codeAt + 4 <= buffer.writerIndex, buffer.getInteger(at: codeAt, as: UInt32.self) == UInt32(from.networkCode) {
                    buffer.setInteger(UInt32(to.networkCode), at: codeAt)
                    changed = true
                }
                offset += 9
                payloadLeft = length
            }
            if changed { writes[index].data = .byteBuffer(buffer) }
        }
    }
}
