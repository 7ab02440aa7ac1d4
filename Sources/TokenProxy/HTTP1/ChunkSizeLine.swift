import NIOCore

/// The size line of a chunk (RFC 9112 §7.1): hexadecimal digits, then optional white space and
/// extensions, which are ignored (and not forwarded). An extension may hold visible characters,
/// spaces and tabs only: a NUL or a bare CR in one is refused, as RFC 9112's grammar does, so that
/// no peer behind or before the proxy can read the line another way.
enum ChunkSizeLine {
    enum Problem: Error {
        case noSize, notHexadecimal, tooLarge, controlCharacterInExtension

        var description: String {
            switch self {
            case .noSize: "a chunk size line has no size"
            case .notHexadecimal: "a chunk size line is not hexadecimal"
            case .tooLarge: "a chunk size is too large"
            case .controlCharacterInExtension: "a chunk extension holds a control character (NUL, CR, …)"
            }
        }
    }

    static func size(of line: ByteBuffer) throws(Problem) -> Int {
        var size = 0
        var digits = 0
        let bytes = line.readableBytesView
        for (offset, byte) in zip(bytes.indices, bytes) {
            let value: Int
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = Int(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): value = Int(byte - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): value = Int(byte - UInt8(ascii: "A") + 10)
            case UInt8(ascii: ";"), UInt8(ascii: " "), UInt8(ascii: "\t"):
                guard digits > 0 else { throw .noSize }
                for byte in bytes[offset...] where byte < 0x20 && byte != UInt8(ascii: "\t") || byte == 0x7F {
                    throw .controlCharacterInExtension
                }
                return size
            default:
                throw .notHexadecimal
            }
            digits += 1
            guard digits <= 15 else { throw .tooLarge }
            size = size << 4 | value
        }
        guard digits > 0 else { throw .noSize }
        return size
    }
}
