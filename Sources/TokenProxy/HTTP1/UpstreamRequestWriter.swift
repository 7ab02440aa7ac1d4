import NIOCore

/// The request's body on its way to the upstream, framed for the upstream's hop (each part one
/// chunk when chunked); the head and the attempt's `Authorization` line go as they are, two
/// buffers of one writev. The mirror of ``ClientResponseWriter``.
///
/// Pure: bytes leave through the `write` closure each method takes.
struct UpstreamRequestWriter {
    let framing: ForwardingRules.BodyFraming

    private static let lastChunk = ByteBuffer(staticString: "0\r\n\r\n")

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
