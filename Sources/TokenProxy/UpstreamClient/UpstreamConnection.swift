import NIOCore

/// Receives what one leased upstream connection reads. Called on the connection's event loop,
/// which is also the client connection's: a request never changes threads.
protocol UpstreamResponseReceiver: AnyObject {
    func upstreamRead(_ part: UpstreamResponseParser.Part)
    func upstreamReadComplete()
    /// The connection closed or failed; `error` says why, when known.
    func upstreamClosed(error: (any Error)?)
    func upstreamWritabilityChanged()
    /// Whether the client can take more bytes; when not, the upstream is not read.
    var clientIsWritable: Bool { get }
}

/// One keep-alive HTTP/1.1 connection to the upstream, leased to one request at a time.
final class UpstreamConnection {
    let channel: any Channel
    let handler: UpstreamHandler
    /// The upstream it is connected to (a reload may change the pool's).
    let target: UpstreamURL
    /// When it went back to the pool; idle connections are closed after a while.
    var idleSince: NIODeadline = .now()
    /// Frames the current request's body for this hop.
    private var requestWriter = UpstreamRequestWriter(framing: .none)
    private static let nothing = ByteBuffer()

    /// A stream of an HTTP/2 connection: it carries one request, then closes.
    let isStream: Bool

    init(channel: any Channel, handler: UpstreamHandler, target: UpstreamURL, isStream: Bool = false) {
        self.channel = channel
        self.handler = handler
        self.target = target
        self.isStream = isStream
    }

    var receiver: (any UpstreamResponseReceiver)? {
        get { handler.receiver }
        set { handler.receiver = newValue }
    }

    var isActive: Bool { channel.isActive }
    var isWritable: Bool { channel.isWritable }

    /// A new request goes out, its head first; its response comes next. `traceLines` (the
    /// attempt's `traceparent`, SPEC §2.6) go before the head's last lines.
    func startRequest(_ start: UpstreamRequestStart, traceLines: ByteBuffer? = nil) {
        handler.startRequest(isHEAD: start.isHEAD, upgrade: start.upgrade)
        requestWriter = UpstreamRequestWriter(framing: start.framing)
        write(start.head)
        if let traceLines { write(traceLines) }
        write(start.headEnding)
    }

    /// A part of the request body (after a `101`, tunnel bytes), framed for this hop.
    func writeBody(_ buffer: ByteBuffer) {
        requestWriter.body(buffer) { write($0) }
    }

    /// What ends the request body (the last chunk, if chunked); `promise` says when it was taken.
    func writeEnd(promise: EventLoopPromise<Void>?) {
        if let promise {
            write(requestWriter.end ?? Self.nothing, promise: promise)
        } else if let end = requestWriter.end {
            write(end)
        }
    }

    func write(_ bytes: ByteBuffer, promise: EventLoopPromise<Void>? = nil) {
        handler.write(bytes, promise: promise)
    }

    func flush() { handler.flush() }

    /// Reads again if reading was held back while the client was not writable.
    func resumeReading() { handler.resumeReading() }

    func close() {
        receiver = nil
        channel.close(promise: nil)
    }
}

/// The last handler of an upstream connection's pipeline: writes request bytes, parses the
/// responses into parts for the leasing request, and holds back reads while the client cannot
/// take more (backpressure).
final class UpstreamHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// The leasing request's handler. Strong, and cleared when the connection goes back to the
    /// pool, is closed or fails: a weak reference cost a weak load and a retain per part read.
    var receiver: (any UpstreamResponseReceiver)?
    private var context: ChannelHandlerContext?
    private var parser = UpstreamResponseParser()
    /// Parts parsed from the last read, delivered once parsing is done.
    private var parsedParts = CircularBuffer<UpstreamResponseParser.Part>(initialCapacity: 4)
    private var readPending = false

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var failure: UpstreamResponseError?
        do throws(UpstreamResponseError) {
            try parser.feed(unwrapInboundIn(data), into: &parsedParts)
        } catch {
            failure = error
        }
        // The receiver is read per part: one that gives the connection up gets no more of it.
        while let part = parsedParts.popFirst() { receiver?.upstreamRead(part) }
        if let failure { errorCaught(context: context, error: failure) }
    }

    func startRequest(isHEAD: Bool, upgrade: Bool) {
        parser.expectResponse(toHEAD: isHEAD, upgrade: upgrade)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        receiver?.upstreamReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        // A body delimited by the close is complete now.
        if let end = parser.connectionClosed() {
            receiver?.upstreamRead(end)
            return
        }
        let receiver = self.receiver
        self.receiver = nil
        receiver?.upstreamClosed(error: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let receiver = self.receiver
        self.receiver = nil
        receiver?.upstreamClosed(error: error)
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        receiver?.upstreamWritabilityChanged()
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if let receiver, !receiver.clientIsWritable {
            readPending = true
        } else {
            context.read()
        }
    }

    func write(_ bytes: ByteBuffer, promise: EventLoopPromise<Void>?) {
        guard let context else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        context.write(wrapOutboundOut(bytes), promise: promise)
    }

    func flush() {
        context?.flush()
    }

    func resumeReading() {
        guard readPending, let context else { return }
        readPending = false
        context.read()
    }
}

extension UpstreamConnection {
    /// Why a connection failed, in words for the client's error and the log.
    static func describe(_ error: any Error) -> String {
        if let error = error as? IOError { return error.description }
        if let problem = TLSProblem.describe(error) { return problem }
        return "\(error)"
    }
}
