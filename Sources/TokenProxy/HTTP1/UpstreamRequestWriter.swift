import NIOCore

/// The request's way to the upstream: the head with the attempt's `Authorization`, and the
/// body framed for the upstream's hop (each part one chunk when chunked). The mirror of
/// ``ClientResponseWriter``.
///
/// Pure: bytes leave through the `write` closure each method takes.
struct UpstreamRequestWriter {
    let framing: ForwardingRules.BodyFraming

    private static let lastChunk = ByteBuffer(staticString: "0\r\n\r\n")

    /// The head in one buffer: a copy of ~200 bytes costs less than a second write.
    func head(_ head: ByteBuffer, ending: ByteBuffer) -> ByteBuffer {
        var bytes = head
        bytes.writeImmutableBuffer(ending)
        return bytes
    }

    /// A body part (after a `101`, tunnel bytes, which are never chunked).
    func body(_ buffer: ByteBuffer, write: (ByteBuffer) -> Void) {
        guard framing == .chunked else {
            write(buffer)
            return
        }
        // An empty chunk would end the body.
        guard buffer.readableBytes > 0 else { return }
        var chunk = ByteBuffer()
        chunk.writeChunk(buffer)
        write(chunk)
    }

    /// What ends the body on the wire: the last chunk, or nothing.
    var end: ByteBuffer? {
        framing == .chunked ? Self.lastChunk : nil
    }
}
