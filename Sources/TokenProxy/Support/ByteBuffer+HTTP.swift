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

    /// Writes `value` in decimal at `target` (room for 20 digits), returning how many bytes.
    static func decimalDigits(_ value: UInt64, into target: UnsafeMutableRawPointer) -> Int {
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)
        return withUnsafeMutableBytes(of: &digits) { scratch in
            var value = value
            var start = scratch.count
            repeat {
                start -= 1
                scratch[start] = UInt8(ascii: "0") + UInt8(value % 10)
                value /= 10
            } while value > 0
            let count = scratch.count - start
            target.copyMemory(from: scratch.baseAddress! + start, byteCount: count)
            return count
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

/// Copies the pieces of a message head into memory a ``ByteBuffer`` lent for one write (see
/// ``ByteBuffer/writeInOnePiece(maximumBytes:_:)``): one capacity and uniqueness check for the
/// whole head instead of one per piece, which on the data path was most of what writing cost.
struct RawByteWriter {
    private let base: UnsafeMutableRawPointer
    private let capacity: Int
    private(set) var count = 0

    fileprivate init(_ target: UnsafeMutableRawBufferPointer) {
        base = target.baseAddress!
        capacity = target.count
    }

    mutating func write(_ bytes: UnsafeRawBufferPointer) {
        guard let source = bytes.baseAddress, bytes.count > 0 else { return }
        precondition(count + bytes.count <= capacity, "a head piece beyond the room asked for")
        (base + count).copyMemory(from: source, byteCount: bytes.count)
        count += bytes.count
    }

    mutating func write(_ text: StaticString) {
        write(UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    mutating func write(_ text: String) {
        // Native strings (all of ours) are contiguous: no copy.
        if text.utf8.withContiguousStorageIfAvailable({ write(UnsafeRawBufferPointer($0)) }) == nil {
            let bytes = Array(text.utf8)
            bytes.withUnsafeBytes { write($0) }
        }
    }

    mutating func write(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { write($0) }
    }

    mutating func writeDecimal(_ value: UInt64) {
        precondition(count + 20 <= capacity, "a decimal beyond the room asked for")
        count += ByteBuffer.decimalDigits(value, into: base + count)
    }

    mutating func writeDecimal(_ value: Int) {
        precondition(value >= 0, "a negative decimal")
        writeDecimal(UInt64(value))
    }
}

extension ByteBuffer {
    /// Writes what `body` gives its writer, at most `maximumBytes`, as one write.
    mutating func writeInOnePiece(maximumBytes: Int, _ body: (inout RawByteWriter) -> Void) {
        writeWithUnsafeMutableBytes(minimumWritableBytes: maximumBytes) { target in
            var writer = RawByteWriter(target)
            body(&writer)
            return writer.count
        }
    }
}
