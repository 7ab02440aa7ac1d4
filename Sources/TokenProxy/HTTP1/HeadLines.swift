import Glibc

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

    /// The index of the first `byte` in `bytes[range]` (memchr: heads are scanned a line at a time).
    static func index(of byte: UInt8, in bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Int? {
        guard !range.isEmpty, let base = bytes.baseAddress, let found = memchr(base + range.lowerBound, Int32(byte), range.count) else { return nil }
        return base.distance(to: UnsafeRawPointer(found))
    }
}
