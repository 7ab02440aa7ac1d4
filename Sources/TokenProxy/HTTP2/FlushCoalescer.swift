import NIOCore

/// Makes the flushes that an HTTP/2 connection's streams ask for outside the connection's own
/// reads one flush per event-loop tick, so that their frames leave in one `writev`.
///
/// Each stream flushes when its part is written: a client stream when its answer is written, an
/// upstream stream when its request is. Those writes come from the other side's reads (100
/// upstream answers in one read burst → 100 client-stream flushes), and each flush reached the
/// socket as a system call of its own: a third of the proxy's time under `h2load -m 100`
/// (`bench/h2.sh`, docs/BENCHMARKS.md). Held here, they go out in one, once the tick's I/O is
/// handled. Inside the connection's own read (up to and with its read-complete, where
/// swift-nio-http2 flushes once what the read produced) flushes pass straight through.
///
/// Placed between the socket (or TLS) and swift-nio-http2's handler. A close flushes what is
/// held first, so that a `GOAWAY` written just before it still goes.
final class FlushCoalescer: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    private var reading = false
    private var flushHeld = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        reading = true
        context.fireChannelRead(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // swift-nio-http2 flushes what the read produced here: that flush is the read's own.
        context.fireChannelReadComplete()
        reading = false
    }

    func flush(context: ChannelHandlerContext) {
        if reading {
            flushHeld = false
            return context.flush()
        }
        guard !flushHeld else { return }
        flushHeld = true
        context.eventLoop.assumeIsolated().execute {
            guard self.flushHeld else { return }
            self.flushHeld = false
            context.flush()
        }
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        releaseFlush(context: context)
        context.close(mode: mode, promise: promise)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        releaseFlush(context: context)
    }

    private func releaseFlush(context: ChannelHandlerContext) {
        guard flushHeld else { return }
        flushHeld = false
        context.flush()
    }
}
