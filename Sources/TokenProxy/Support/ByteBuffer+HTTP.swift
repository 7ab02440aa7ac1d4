import NIOCore
import NIOHTTP1

/// HTTP/1.1 wire-format pieces, each written with as few buffer writes as possible (each write
/// is a bounds and uniqueness check).
extension ByteBuffer {
    /// `name: value` and CRLF, in one write.
    mutating func writeHeaderLine(_ name: String, _ value: String) {
        var name = name
        var value = value
        _ = name.withUTF8 { name in
            value.withUTF8 { value in
                writeWithUnsafeMutableBytes(minimumWritableBytes: name.count + value.count + 4) { target in
                    let base = target.baseAddress!
                    base.copyMemory(from: name.baseAddress!, byteCount: name.count)
                    var offset = name.count
                    base.storeBytes(of: UInt8(ascii: ":"), toByteOffset: offset, as: UInt8.self)
                    base.storeBytes(of: UInt8(ascii: " "), toByteOffset: offset + 1, as: UInt8.self)
                    offset += 2
                    if value.count > 0 { (base + offset).copyMemory(from: value.baseAddress!, byteCount: value.count) }
                    offset += value.count
                    base.storeBytes(of: UInt8(ascii: "\r"), toByteOffset: offset, as: UInt8.self)
                    base.storeBytes(of: UInt8(ascii: "\n"), toByteOffset: offset + 1, as: UInt8.self)
                    return offset + 2
                }
            }
        }
    }

    /// `HTTP/1.1 STATUS REASON` and CRLF.
    mutating func writeStatusLine(_ status: Int) {
        writeString("HTTP/1.1 \(status) \(HTTPResponseStatus(statusCode: status).reasonPhrase)\r\n")
    }

    /// `buffer` as one chunk of a chunked body: size line, bytes, CRLF.
    mutating func writeChunk(_ buffer: ByteBuffer) {
        reserveCapacity(minimumWritableBytes: buffer.readableBytes + 20)
        writeString(String(buffer.readableBytes, radix: 16))
        writeStaticString("\r\n")
        writeImmutableBuffer(buffer)
        writeStaticString("\r\n")
    }
}
