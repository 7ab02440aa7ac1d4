import NIOCore
import NIOHTTP1

/// A client's request head as ``ClientRequestParser`` read it: valid by RFC 9112, with its
/// fields left in the bytes they arrived in and located by offsets, so that forwarding copies
/// them instead of making a string of each.
struct ClientRequestHead: Equatable {
    struct Field: Equatable {
        let kind: HeaderName
        /// Offsets into `bytes`' readable bytes: the name, and the value without surrounding white space.
        let name: Range<Int>
        let value: Range<Int>
    }

    /// How the request's body is delimited (RFC 9112 §6.3).
    enum BodyFraming: Equatable {
        case none
        case length(Int)
        case chunked
    }

    let method: HTTPMethod
    /// Where the request target is in `bytes`' readable bytes (the method is before it).
    let targetRange: Range<Int>
    let version: HTTPVersion
    /// The head as read, request line to blank line.
    let bytes: ByteBuffer
    let fields: [Field]
    let framing: BodyFraming
    /// The client keeps the connection after this request (its version and `Connection`).
    let keepAlive: Bool
    /// `Connection` names `upgrade` and an `Upgrade` header is present.
    let upgradeRequested: Bool
    /// The options of `Connection` other than `close`, `keep-alive` and `upgrade`, lowercased:
    /// headers of this hop only.
    let connectionOptions: [String]

    /// `Expect: 100-continue`: the client waits for a `100 Continue` before sending its body.
    var expectsContinue: Bool { first(.expect)?.lowercased() == "100-continue" }

    /// The request target, as text (the forwarding rules read it in place).
    var target: String {
        bytes.getString(at: bytes.readerIndex + targetRange.lowerBound, length: targetRange.count) ?? ""
    }

    /// The request target's bytes (a slice of `bytes`).
    var targetBytes: ByteBuffer {
        bytes.getSlice(at: bytes.readerIndex + targetRange.lowerBound, length: targetRange.count) ?? ByteBuffer()
    }

    /// Where the path is in the head (up to the end of the target, query included): the whole
    /// origin-form target, or what follows the authority of an absolute-form one (possibly empty).
    var pathRange: Range<Int> {
        withBytes(targetRange) { target -> Range<Int> in
            if target.first == UInt8(ascii: "/") { return targetRange }
            var index = 0
            // After `scheme://`, the authority runs to the first `/` or `?`.
            while index + 2 < target.count, !(target[index] == UInt8(ascii: ":") && target[index + 1] == UInt8(ascii: "/") && target[index + 2] == UInt8(ascii: "/")) {
                index += 1
            }
            guard index + 2 < target.count else { return targetRange.upperBound..<targetRange.upperBound }
            index += 3
            while index < target.count, target[index] != UInt8(ascii: "/"), target[index] != UInt8(ascii: "?") { index += 1 }
            return (targetRange.lowerBound + index)..<targetRange.upperBound
        }
    }

    /// The value of a field, as text.
    func value(of field: Field) -> String {
        text(field.value)
    }

    /// The bytes at `range` (offsets into the head), as text.
    func text(_ range: Range<Int>) -> String {
        bytes.getString(at: bytes.readerIndex + range.lowerBound, length: range.count) ?? ""
    }

    /// The name of a field, as the client spelled it.
    func name(of field: Field) -> String {
        bytes.getString(at: bytes.readerIndex + field.name.lowerBound, length: field.name.count) ?? ""
    }

    /// The first value of a field the rules know by name.
    func first(_ kind: HeaderName) -> String? {
        fields.first { $0.kind == kind }.map(value(of:))
    }

    /// Whether a field named `name` (any case) is present; compared in place, without a string per field.
    func contains(name: String) -> Bool {
        let wanted = Array(name.lowercased().utf8)
        return fields.contains { field in
            field.name.count == wanted.count && withBytes(field.name) { bytes in
                zip(bytes, wanted).allSatisfy { byte, lowered in (byte >= 0x41 && byte <= 0x5A ? byte + 32 : byte) == lowered }
            }
        }
    }

    /// Calls `body` with the bytes of `range` (offsets into the head).
    func withBytes<Result>(_ range: Range<Int>, _ body: (UnsafeRawBufferPointer) -> Result) -> Result {
        bytes.withUnsafeReadableBytes { body(UnsafeRawBufferPointer(rebasing: $0[range])) }
    }
}
