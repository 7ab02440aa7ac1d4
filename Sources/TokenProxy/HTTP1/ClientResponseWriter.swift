import NIOCore

/// The response's way back to the client: frames the body for the client's connection, and
/// holds the head until the first body bytes (or the end) so that a small response is one
/// write, and one system call.
///
/// Pure: bytes leave through the `write` closure each method takes.
struct ClientResponseWriter {
    /// How the current response's body is delimited on the client's connection.
    enum Framing {
        /// As the upstream framed it (`Content-Length`, or no body).
        case asIs
        case chunked
        /// Until the proxy closes the connection (an HTTP/1.0 client, a body of unknown length).
        case untilClose
    }

    private(set) var framing = Framing.asIs
    private var pendingHead: ByteBuffer?
    /// The upstream's trailer fields (``UpstreamResponseParser/Part/trailers(_:)``): sent with
    /// the last chunk when the client's hop is chunked; a hop framed otherwise has no place for them.
    var trailers: ByteBuffer?

    /// Body bytes up to this size are copied behind the head or into their chunk: a copy is
    /// cheaper than another write; larger ones are written as they are.
    static let copyLimit = 16 * 1024

    private static let crlf = ByteBuffer(staticString: "\r\n")
    private static let lastChunk = ByteBuffer(staticString: "0\r\n\r\n")

    /// Whether a response body framed as `body` upstream can only end by closing the client's
    /// connection (an HTTP/1.0 client cannot take chunks).
    static func endsWithClose(_ body: UpstreamResponseHead.Body, clientAcceptsChunked: Bool) -> Bool {
        switch body {
        case .none, .length, .tunnel: false
        case .chunked, .untilClose: !clientAcceptsChunked
        }
    }

    /// Starts an upstream response: its head, framed for the client. `keepAlive` false adds
    /// `Connection: close`; so does a body that can only end with the connection.
    mutating func start(_ head: consuming UpstreamResponseHead, keepAlive: Bool, clientAcceptsChunked: Bool) {
        var keepAlive = keepAlive
        trailers = nil
        // The head's own buffer, which the parser made with room for the framing lines and a
        // small body: appended to in place when nothing else holds it.
        var copiedBody = 0
        if case .length(let length) = head.body, length <= Self.copyLimit { copiedBody = length }
        var bytes = head.forwardedBytes
        head.forwardedBytes = ByteBuffer()
        bytes.reserveCapacity(minimumWritableBytes: 96 + copiedBody)
        // The framing lines and the blank line, in one write.
        bytes.writeInOnePiece(maximumBytes: 96) { writer in
            switch head.body {
            case .none, .length:
                framing = .asIs
                if let length = head.contentLength {
                    writer.write("Content-Length: ")
                    writer.writeDecimal(length)
                    writer.write("\r\n")
                }
            case .tunnel:
                // The hop-by-hop pair that makes a 101 mean something; bytes then pass as they are.
                framing = .untilClose
                keepAlive = true
                writer.write("Connection: Upgrade\r\nUpgrade: websocket\r\n")
            case .chunked, .untilClose:
                if clientAcceptsChunked {
                    framing = .chunked
                    writer.write("Transfer-Encoding: chunked\r\n")
                } else {
                    framing = .untilClose
                    keepAlive = false
                }
            }
            if !keepAlive {
                writer.write("Connection: close\r\n")
            } else if !clientAcceptsChunked {
                // An HTTP/1.0 client keeps the connection only when told so.
                writer.write("Connection: keep-alive\r\n")
            }
            writer.write("\r\n")
        }
        pendingHead = bytes
    }

    /// Starts a response the proxy made whole (its own errors).
    mutating func start(complete response: ByteBuffer) {
        framing = .asIs
        trailers = nil
        pendingHead = response
    }

    mutating func body(_ buffer: ByteBuffer, write: (ByteBuffer) -> Void) {
        // Taken out of the property first, so that appending to it does not copy it.
        var head = pendingHead
        pendingHead = nil
        switch framing {
        case .chunked:
            guard buffer.readableBytes > 0 else { break }
            if buffer.readableBytes <= Self.copyLimit {
                var chunk = head ?? ByteBuffer()
                head = nil
                chunk.writeChunk(buffer)
                write(chunk)
                return
            }
            if let head { write(head) }
            var sizeLine = ByteBuffer()
            sizeLine.writeString(String(buffer.readableBytes, radix: 16))
            sizeLine.writeStaticString("\r\n")
            write(sizeLine)
            write(buffer)
            write(Self.crlf)
            return
        case .asIs, .untilClose:
            if head != nil, buffer.readableBytes <= Self.copyLimit {
                head!.writeImmutableBuffer(buffer)
                write(head!)
                return
            }
        }
        if let head { write(head) }
        if buffer.readableBytes > 0 { write(buffer) }
    }

    /// Writes a held head (before a flush, so that a head without body bytes yet, such as an
    /// event stream's, reaches the client).
    mutating func writeHead(_ write: (ByteBuffer) -> Void) {
        guard let head = pendingHead else { return }
        pendingHead = nil
        write(head)
    }

    /// Completes the response: the last chunk, if chunked, with whatever is still held.
    mutating func end(write: (ByteBuffer) -> Void) {
        if framing == .chunked {
            var last = pendingHead.take() ?? ByteBuffer()
            if let trailers = trailers.take() {
                last.writeStaticString("0\r\n")
                last.writeImmutableBuffer(trailers)
                last.writeStaticString("\r\n")
            } else {
                last.writeImmutableBuffer(Self.lastChunk)
            }
            pendingHead = last
        }
        writeHead(write)
        framing = .asIs
    }
}
