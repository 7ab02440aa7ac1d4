import NIOCore
import NIOHPACK

/// An HTTP/2 request head (RFC 9113 §8.3) as the HTTP/1.1 head that the connection's request
/// machine reads: a stream is then one request under every rule of SPEC §5 (client guard,
/// routes, dot-segments, TRACE, limits, token, replay, retries, faults, request ids), from the one
/// parser and the one set of rules, with no second copy of them.
///
/// What only HTTP/2 can get wrong is refused here: pseudo-header rules, connection-specific
/// fields, names that are not lowercase tokens, values with CR, LF, NUL or white space at their
/// ends (RFC 9113 §8.2). Nothing of a refused stream goes anywhere.
///
/// Pure, and fuzzed with the frame path.
struct HTTP2RequestHead: Equatable {
    /// `METHOD PATH HTTP/1.1`, `host` from `:authority`, the fields, and the framing of the body:
    /// none when the stream ended with its head, its `content-length`, else chunked.
    var bytes: ByteBuffer
    /// The body goes to the request machine chunked (DATA frames of unknown total length).
    var chunkedBody: Bool
    /// `content-type: application/grpc…` (not gRPC-Web, which is HTTP/1-compatible).
    var isGRPC: Bool
    var isHEAD: Bool

    /// `headers` of a stream's first HEADERS frame; `endStream` when the request has no body.
    static func translate(_ headers: HPACKHeaders, endStream: Bool) -> Result<HTTP2RequestHead, ProxyError> {
        var method: String?
        var scheme: String?
        var path: String?
        var authority: String?
        var host: String?
        var cookies: [String] = []
        var contentLength: String?
        var isGRPC = false
        var regular: [(name: String, value: String)] = []
        var sawRegular = false
        for (name, value, _) in headers {
            if let problem = Self.valueProblem(value) {
                return .failure(.badRequest("HTTP/2 request: the value of \(Self.describe(name)) \(problem) (RFC 9113 §8.2.1)"))
            }
            if name.utf8.first == UInt8(ascii: ":") {
                // Pseudo-header fields: only the four of a request, each once, before the others.
                if sawRegular { return .failure(.badRequest("HTTP/2 request: the pseudo-header \(Self.describe(name)) follows a regular field (RFC 9113 §8.3)")) }
                func once(_ slot: inout String?) -> ProxyError? {
                    if slot != nil { return .badRequest("HTTP/2 request: the pseudo-header \(name) appears twice (RFC 9113 §8.3)") }
                    slot = value
                    return nil
                }
                let duplicate: ProxyError?
                switch name {
                case ":method": duplicate = once(&method)
                case ":scheme": duplicate = once(&scheme)
                case ":path": duplicate = once(&path)
                case ":authority": duplicate = once(&authority)
                default: return .failure(.badRequest("HTTP/2 request: the pseudo-header \(Self.describe(name)) is not one of a request (RFC 9113 §8.3.1)"))
                }
                if let duplicate { return .failure(duplicate) }
                continue
            }
            sawRegular = true
            guard !name.isEmpty, name.utf8.allSatisfy({ HeaderName.isTokenCharacter($0) && !($0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z")) }) else {
                return .failure(.badRequest("HTTP/2 request: the field name \(Self.describe(name)) is not a lowercase token (RFC 9113 §8.2.1)"))
            }
            switch name {
            case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade":
                return .failure(.badRequest("HTTP/2 request: the connection-specific field \(name) is not allowed (RFC 9113 §8.2.2)"))
            case "te":
                guard value == "trailers" else {
                    return .failure(.badRequest("HTTP/2 request: te may only be \"trailers\" (RFC 9113 §8.2.2)"))
                }
                // Hop-by-hop: the HTTP/1.1 hop does not get it.
                continue
            case "host":
                if host != nil { return .failure(.badRequest("HTTP/2 request: host appears twice")) }
                host = value
                continue
            case "cookie":
                // Split into several fields for compression; one line again for HTTP/1.1 (RFC 9113 §8.2.3).
                cookies.append(value)
                continue
            case "content-length":
                if contentLength != nil, contentLength != value { return .failure(.badRequest("HTTP/2 request: content-length values conflict")) }
                contentLength = value
                continue
            case "content-type":
                isGRPC = Self.isGRPC(value)
            default:
                break
            }
            regular.append((name, value))
        }
        guard let method, !method.isEmpty else { return .failure(.badRequest("HTTP/2 request: :method is missing (RFC 9113 §8.3.1)")) }
        guard method.utf8.allSatisfy(HeaderName.isTokenCharacter) else {
            return .failure(.badRequest("HTTP/2 request: :method \(Self.describe(method)) is not a token"))
        }
        if let authority, let host, authority != host {
            // RFC 9113 §8.3.1: an intermediary may not let the two disagree.
            return .failure(.badRequest("HTTP/2 request: :authority \(Self.describe(authority)) and host \(Self.describe(host)) differ"))
        }
        let target: String
        if method == "CONNECT" {
            // The rules refuse CONNECT (not an open proxy); it goes to them as HTTP/1.1 spells it.
            target = authority ?? host ?? ""
        } else {
            guard scheme != nil, let path, !path.isEmpty else {
                return .failure(.badRequest("HTTP/2 request: :scheme and :path are required (RFC 9113 §8.3.1)"))
            }
            target = path
        }
        guard !target.utf8.contains(where: { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }) else {
            return .failure(.badRequest("HTTP/2 request: :path holds white space"))
        }
        let chunked = !endStream && contentLength == nil
        var bytes = ByteBuffer()
        bytes.reserveCapacity(256 + regular.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 4 })
        bytes.writeString(method)
        bytes.writeStaticString(" ")
        bytes.writeString(target)
        bytes.writeStaticString(" HTTP/1.1\r\n")
        if let name = authority ?? host { bytes.writeHeaderLine("host", name) }
        for (name, value) in regular { bytes.writeHeaderLine(name, value) }
        if !cookies.isEmpty { bytes.writeHeaderLine("cookie", cookies.joined(separator: "; ")) }
        if let contentLength {
            bytes.writeHeaderLine("content-length", contentLength)
        } else if chunked {
            bytes.writeHeaderLine("transfer-encoding", "chunked")
        }
        bytes.writeStaticString("\r\n")
        return .success(HTTP2RequestHead(bytes: bytes, chunkedBody: chunked, isGRPC: isGRPC, isHEAD: method == "HEAD"))
    }

    /// Request trailers (a second HEADERS frame) as the end of a chunked body; a body framed by
    /// its length ends with its last byte, and its trailers are dropped.
    static func bodyEnd(trailers: HPACKHeaders?, chunked: Bool) -> Result<ByteBuffer?, ProxyError> {
        guard chunked else { return .success(nil) }
        var bytes = ByteBuffer(staticString: "0\r\n")
        for (name, value, _) in trailers ?? [:] {
            if name.utf8.first == UInt8(ascii: ":") { return .failure(.badRequest("HTTP/2 request: trailers may not carry pseudo-headers (RFC 9113 §8.1)")) }
            guard !name.isEmpty, name.utf8.allSatisfy(HeaderName.isTokenCharacter), valueProblem(value) == nil else {
                return .failure(.badRequest("HTTP/2 request: a trailer field is malformed (RFC 9113 §8.2.1)"))
            }
            bytes.writeHeaderLine(name, value)
        }
        bytes.writeStaticString("\r\n")
        return .success(bytes)
    }

    /// A DATA frame's bytes as the request machine reads them.
    static func bodyPart(_ data: ByteBuffer, chunked: Bool) -> ByteBuffer {
        guard chunked, data.readableBytes > 0 else { return data }
        var chunk = ByteBuffer()
        chunk.reserveCapacity(data.readableBytes + 12)
        chunk.writeChunk(data)
        return chunk
    }

    /// gRPC's content type, as the forwarding rules recognise it.
    static func isGRPC(_ contentType: String) -> Bool {
        var value = contentType
        return value.withUTF8 { ForwardingRules.isGRPC(UnsafeRawBufferPointer($0)) }
    }

    /// What is wrong with a field value, if anything: CR, LF or NUL anywhere, or white space at
    /// either end.
    private static func valueProblem(_ value: String) -> String? {
        let utf8 = value.utf8
        if utf8.contains(where: { $0 == 0 || $0 == 0x0A || $0 == 0x0D }) { return "holds CR, LF or NUL" }
        if let first = utf8.first, first == 0x20 || first == 0x09 { return "starts with white space" }
        if let last = utf8.last, last == 0x20 || last == 0x09 { return "ends with white space" }
        return nil
    }

    /// A name or value for an error message: bounded, printable.
    private static func describe(_ text: String) -> String {
        let printable = String(decoding: text.utf8.prefix(64).map { $0 >= 0x20 && $0 < 0x7F ? $0 : UInt8(ascii: "?") }, as: UTF8.self)
        return "\"\(printable)\(text.utf8.count > 64 ? "…" : "")\""
    }
}
