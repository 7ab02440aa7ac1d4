import NIOCore

/// The size line of a chunk (RFC 9112 §7.1): hexadecimal digits, then optional white space and
/// extensions, which are ignored (and not forwarded).
enum ChunkSizeLine {
    enum Problem: Error {
        case noSize, notHexadecimal, tooLarge

        var description: String {
            switch self {
            case .noSize: "a chunk size line has no size"
            case .notHexadecimal: "a chunk size line is not hexadecimal"
            case .tooLarge: "a chunk size is too large"
            }
        }
    }

    static func size(of line: ByteBuffer) throws(Problem) -> Int {
        var size = 0
        var digits = 0
        for byte in line.readableBytesView {
            let value: Int
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = Int(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): value = Int(byte - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): value = Int(byte - UInt8(ascii: "A") + 10)
            case UInt8(ascii: ";"), UInt8(ascii: " "), UInt8(ascii: "\t"):
                guard digits > 0 else { throw .noSize }
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
