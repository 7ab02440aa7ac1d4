import Glibc
import NIOCore

/// The lines of a complete message head (request or response), without their line endings:
/// CRLF, or a bare LF (RFC 9112 §2.2).
struct HeadLines {
    let bytes: UnsafeRawBufferPointer
    let end: Int
    /// Where the next line starts.
    private(set) var position = 0
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

    /// Whether `bytes[range]` holds a control character other than a tab (or DEL): what a field
    /// value may not hold. Eight bytes at a time; a word that may hold one is checked byte by byte.
    static func containsControlCharacter(_ base: UnsafePointer<UInt8>, _ range: Range<Int>) -> Bool {
        var index = range.lowerBound
        while index + 8 <= range.upperBound {
            let word = UnsafeRawPointer(base + index).loadUnaligned(as: UInt64.self)
            let ones: UInt64 = 0x0101_0101_0101_0101
            let highs: UInt64 = 0x8080_8080_8080_8080
            // A byte below 0x20, or a byte equal to 0x7F (zero after the xor).
            let below20 = (word &- ones &* 0x20) & ~word & highs
            let del = word ^ (ones &* 0x7F)
            let isDEL = (del &- ones) & ~del & highs
            if below20 | isDEL != 0 {
                for offset in 0..<8 where isControl(base[index + offset]) { return true }
            }
            index += 8
        }
        while index < range.upperBound {
            if isControl(base[index]) { return true }
            index += 1
        }
        return false
    }

    @inline(__always)
    private static func isControl(_ byte: UInt8) -> Bool {
        (byte < 0x20 && byte != 0x09) || byte == 0x7F
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
