import NIOCore

/// Tells HTTP/2 from HTTP/1.1 by a connection's first bytes (SPEC §5): a connection that opens
/// with the HTTP/2 preface (prior knowledge, "h2c", as gRPC clients and
/// `curl --http2-prior-knowledge` send it) is handed to HTTP/2; anything else stays with the
/// HTTP/1.1 handler behind this one. Then it leaves the pipeline, passing on what it read.
///
/// It holds at most the 24 bytes of the preface, and only while they match it: an HTTP/1.1
/// request differs at its first byte (`G`) or within a few (`P`OST, `P`UT, `P`ATCH). The HTTP/1.1
/// handler stays in the pipeline meanwhile, so its header timeout bounds a client that stops
/// half-way through the preface.
final class ClientProtocolSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// RFC 9113 §3.4: the client connection preface.
    static let preface: StaticString = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

    /// Hands the connection to HTTP/2: removes the HTTP/1.1 handler, adds the HTTP/2 ones.
    private let switchToHTTP2: (ChannelHandlerContext) throws -> Void
    private var held: ByteBuffer?

    init(switchToHTTP2: @escaping (ChannelHandlerContext) throws -> Void) {
        self.switchToHTTP2 = switchToHTTP2
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if var held = held.take() {
            held.writeImmutableBuffer(bytes)
            bytes = held
        }
        switch Self.match(bytes) {
        case .http1:
            leave(context: context, passing: bytes)
        case .undecided:
            held = bytes
        case .http2:
            do {
                try switchToHTTP2(context)
            } catch {
                context.fireErrorCaught(error)
                return
            }
            leave(context: context, passing: bytes)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let held = held.take() { context.fireChannelRead(wrapInboundOut(held)) }
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // The client stopped sending before the preface was whole: what it sent is HTTP/1.1's
        // to refuse.
        if let event = event as? ChannelEvent, event == .inputClosed, let held = held.take() {
            leave(context: context, passing: held)
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func leave(context: ChannelHandlerContext, passing bytes: ByteBuffer) {
        context.fireChannelRead(wrapInboundOut(bytes))
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    enum Match: Equatable {
        case http1, undecided, http2
    }

    /// What a connection's first bytes say about its protocol.
    static func match(_ bytes: ByteBuffer) -> Match {
        let view = bytes.readableBytesView
        let count = min(view.count, preface.utf8CodeUnitCount)
        for offset in 0..<count where view[view.startIndex + offset] != preface.utf8Start[offset] {
            return .http1
        }
        return count == preface.utf8CodeUnitCount ? .http2 : .undecided
    }
}
