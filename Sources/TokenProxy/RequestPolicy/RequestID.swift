import Atomics
import NIOCore

/// A request's id (SPEC §5): the client's `X-Request-Id`, or one generated for it, unique for
/// the process's lifetime (a random per-process prefix and a counter). A generated one is
/// written upstream without allocating and turned into text only for a log line or an error.
struct RequestID: Sendable, CustomStringConvertible {
    private enum Source: Sendable {
        case client(String)
        case generated(UInt64)
    }

    private let source: Source

    private static let processPrefix = String(UInt32.random(in: 0...UInt32.max), radix: 16)
    private static let counter = ManagedAtomic<UInt64>(0)

    /// The client's own id, forwarded as it is.
    static func client(_ value: String) -> RequestID {
        RequestID(source: .client(value))
    }

    static func generate() -> RequestID {
        RequestID(source: .generated(counter.wrappingIncrementThenLoad(ordering: .relaxed)))
    }

    var isGenerated: Bool {
        if case .generated = source { true } else { false }
    }

    var description: String {
        switch source {
        case .client(let value): value
        case .generated(let number): "\(Self.processPrefix)-\(number)"
        }
    }

    /// `X-Request-Id: ` and the process prefix of generated ids, written as one piece.
    private static let generatedLineStart = Array("X-Request-Id: \(processPrefix)-".utf8)

    /// `X-Request-Id: <id>` and CRLF (at most 64 bytes for a generated id).
    func writeHeaderLine(to writer: inout RawByteWriter) {
        switch source {
        case .client(let value):
            writer.write("X-Request-Id: ")
            writer.write(value)
        case .generated(let number):
            Self.generatedLineStart.withUnsafeBytes { writer.write($0) }
            writer.writeDecimal(number)
        }
        writer.write("\r\n")
    }
}
