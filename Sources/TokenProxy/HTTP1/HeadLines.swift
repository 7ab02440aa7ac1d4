import Glibc
import NIOCore

/// The lines of a complete message head (request or response), without their line endings:
/// CRLF, or a bare LF (RFC 9112 §2.2).
struct HeadLines {
    let bytes: UnsafeRawBufferPointer
    let end: Int
    private var position = 0
    private(set) var lastLineEndedWithCRLF = false

    init(bytes: UnsafeRawBufferPointer, end: Int) {
        self.bytes = bytes
        self.end = end
    }

    mutating func next() -> Range<Int>? {
        guard let newline = Self.index(of: UInt8(ascii: "\n"), in: bytes, position..<end) else { return nil }
        lastLineEndedWithCRLF = newline > position && bytes[newline - 1] == UInt8(ascii: "\r")
        let line = position..<(lastLineEndedWithCRLF ? newline - 1 : newline)
        position = newline + 1
        return line
    }

    /// `range` without the spaces and tabs around it (optional white space around a field value).
    static func trimmed(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Range<Int> {
        var lower = range.lowerBound
        var upper = range.upperBound
        while lower < upper, bytes[lower] == UInt8(ascii: " ") || bytes[lower] == UInt8(ascii: "\t") { lower += 1 }
        while upper > lower, bytes[upper - 1] == UInt8(ascii: " ") || bytes[upper - 1] == UInt8(ascii: "\t") { upper -= 1 }
        return lower..<upper
    }

    /// The decimal number `bytes[range]` spells (digits only, at most 18), or `nil`.
    static func decimal(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Int? {
        guard !range.isEmpty, range.count <= 18 else { return nil }
        var value = 0
        for index in range {
            let byte = bytes[index]
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + Int(byte - UInt8(ascii: "0"))
        }
        return value
    }

    /// The index of the first `byte` in `bytes[range]` (memchr: heads are scanned a line at a time).
    static func index(of byte: UInt8, in bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Int? {
        guard !range.isEmpty, let base = bytes.baseAddress, let found = memchr(base + range.lowerBound, Int32(byte), range.count) else { return nil }
        return base.distance(to: UnsafeRawPointer(found))
    }
}

/// A line read off a buffer of message bytes (chunk size lines, chunk endings, trailers).
enum HTTPLine {
    /// The line without its ending (CRLF, or a bare LF).
    case line(ByteBuffer)
    case incomplete
    /// More than the limit came without a line ending.
    case tooLong
}

extension ByteBuffer {
    /// Reads the next line if it is complete and at most `limit` bytes long.
    mutating func readHTTPLine(limit: Int) -> HTTPLine {
        guard let newline = readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
            return readableBytes > limit ? .tooLong : .incomplete
        }
        let length = newline - readerIndex
        guard length <= limit else { return .tooLong }
        var line = readSlice(length: length)!
        moveReaderIndex(forwardBy: 1)
        if line.readableBytesView.last == UInt8(ascii: "\r") { line.moveWriterIndex(to: line.writerIndex - 1) }
        return .line(line)
    }
}
