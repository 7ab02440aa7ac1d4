import Glibc
import NIOCore
import NIOHTTP1

/// Reads HTTP/1.1 requests off a client connection, strictly (RFC 9112): a head is handed on
/// only once all of it was read and found valid, body bytes are handed on as slices of what was
/// read, de-chunked.
///
/// Pull-based: the connection appends what it reads and takes parts while it can use them.
/// After a request's end the parser stops until ``startNextRequest()``, so that a pipelined
/// request (or its malformation) is seen only once the one before it was answered, and bytes
/// after an upgrade request stay as they were read, for the tunnel.
struct ClientRequestParser {
    enum Part {
        case head(ClientRequestHead)
        case body(ByteBuffer)
        case end
    }

    struct Limits {
        var maxHeaderBytes: Int
        var maxURIBytes: Int
    }

    private enum State {
        case head
        case fixed(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        /// The line ending after a chunk's data.
        case chunkDataEnd
        case trailers(bytesRead: Int)
        /// The body is complete: `.end` is the next part.
        case ending
        /// A request was read whole; the next is parsed after ``startNextRequest()``.
        case complete
        case failed
    }

    static let maximumChunkLineBytes = 4 * 1024

    let limits: Limits
    private var state = State.head
    /// Read but not parsed yet.
    private var buffer = ByteBuffer()

    init(limits: Limits) {
        self.limits = limits
    }

    /// Bytes read from the client.
    mutating func append(_ bytes: ByteBuffer) {
        if buffer.readableBytes == 0 {
            buffer = bytes
        } else {
            var bytes = bytes
            buffer.writeBuffer(&bytes)
        }
    }

    /// Bytes read and not parsed yet.
    var bufferedBytes: Int { buffer.readableBytes }

    /// A request head has begun to arrive and is not complete yet.
    var isReadingHead: Bool {
        if case .head = state { buffer.readableBytes > 0 } else { false }
    }

    /// The last request was read whole and the next is not parsed yet.
    var isBetweenRequests: Bool {
        if case .complete = state { true } else { false }
    }

    /// The current request was answered: parse what follows it.
    mutating func startNextRequest() {
        if case .complete = state { state = .head }
    }

    /// What was read after the current request, which is not parsed as HTTP (a tunnel's first bytes).
    mutating func takeBufferedBytes() -> ByteBuffer {
        state = .failed
        defer { buffer = ByteBuffer() }
        return buffer
    }

    /// The next part, or `nil` until more bytes arrive (or until ``startNextRequest()``). After an
    /// error, nothing more is parsed.
    mutating func next() throws(ProxyError) -> Part? {
        do throws(ProxyError) {
            return try parseNext()
        } catch {
            state = .failed
            buffer = ByteBuffer()
            throw error
        }
    }

    private mutating func parseNext() throws(ProxyError) -> Part? {
        while true {
            switch state {
            case .complete, .failed:
                return nil
            case .ending:
                state = .complete
                return .end
            case .head:
                guard buffer.readableBytes > 0, let head = try parseHead() else { return nil }
                switch head.framing {
                case .none, .length(0): state = .ending
                case .length(let length): state = .fixed(remaining: length)
                case .chunked: state = .chunkSize
                }
                return .head(head)
            case .fixed(let remaining):
                guard let (slice, left) = readBody(upTo: remaining) else { return nil }
                state = left == 0 ? .ending : .fixed(remaining: left)
                return .body(slice)
            case .chunkSize:
                guard let line = try readLine(limit: Self.maximumChunkLineBytes, what: "chunk size line") else { return nil }
                let size = try Self.chunkSize(line)
                state = size == 0 ? .trailers(bytesRead: 0) : .chunkData(remaining: size)
            case .chunkData(let remaining):
                guard let (slice, left) = readBody(upTo: remaining) else { return nil }
                state = left == 0 ? .chunkDataEnd : .chunkData(remaining: left)
                return .body(slice)
            case .chunkDataEnd:
                guard let line = try readLine(limit: 2, what: "chunk ending") else { return nil }
                guard line.readableBytes == 0 else { throw .badRequest("a chunk of the request body is longer than its declared size") }
                state = .chunkSize
            case .trailers(let bytesRead):
                // Trailer fields are not forwarded: the upstream gets the body re-chunked without them.
                let limit = limits.maxHeaderBytes - bytesRead
                guard let line = try readLine(limit: limit, what: "trailer section") else { return nil }
                guard line.readableBytesView.allSatisfy({ $0 >= 0x20 || $0 == 0x09 }), line.readableBytesView.first != 0x20 else {
                    throw .badRequest("a trailer field of the chunked request body is malformed")
                }
                state = line.readableBytes == 0 ? .ending : .trailers(bytesRead: bytesRead + line.readableBytes + 2)
            }
        }
    }

    /// As many of the `remaining` body bytes as were read, and how many are left; `nil` if none were.
    private mutating func readBody(upTo remaining: Int) -> (ByteBuffer, left: Int)? {
        guard buffer.readableBytes > 0 else { return nil }
        let slice = buffer.readSlice(length: min(remaining, buffer.readableBytes))!
        return (slice, remaining - slice.readableBytes)
    }

    // MARK: Lines

    /// The next line without its line ending, or `nil` until it is complete.
    private mutating func readLine(limit: Int, what: String) throws(ProxyError) -> ByteBuffer? {
        switch buffer.readHTTPLine(limit: limit) {
        case .line(let line): return line
        case .incomplete: return nil
        case .tooLong: throw .badRequest("the request's \(what) is longer than \(limit) bytes")
        }
    }

    static func chunkSize(_ line: ByteBuffer) throws(ProxyError) -> Int {
        do throws(ChunkSizeLine.Problem) {
            return try ChunkSizeLine.size(of: line)
        } catch {
            throw .badRequest("\(error.description) in the request body")
        }
    }

    // MARK: Head

    private mutating func parseHead() throws(ProxyError) -> ClientRequestHead? {
        // Empty lines before a request line are ignored (RFC 9112 §2.2).
        while let first = buffer.readableBytesView.first, first == UInt8(ascii: "\r") || first == UInt8(ascii: "\n") {
            if first == UInt8(ascii: "\r") {
                guard buffer.readableBytes >= 2 else { return nil }
                guard buffer.getInteger(at: buffer.readerIndex + 1, as: UInt8.self) == UInt8(ascii: "\n") else {
                    throw .badRequest("malformed HTTP request: a bare CR before the request line")
                }
                buffer.moveReaderIndex(forwardBy: 2)
            } else {
                buffer.moveReaderIndex(forwardBy: 1)
            }
        }
        let limits = self.limits
        let end: Int? = try buffer.withUnsafeReadableBytes { bytes throws(ProxyError) in try Self.headEnd(bytes, limits: limits) }
        guard let end else { return nil }
        let bytes = buffer.readSlice(length: end)!
        return try bytes.withUnsafeReadableBytes { raw throws(ProxyError) in
            do throws(ProxyError) {
                return try Self.parseHead(raw, bytes: bytes, limits: limits)
            } catch {
                // The client's own X-Request-Id names the refusal too, so that it can find it.
                var error = error
                if error.requestID == nil { error.requestID = Self.clientRequestID(in: raw) }
                throw error
            }
        }
    }

    /// The value of a well-formed `X-Request-Id` line in a head that was refused (visible ASCII,
    /// at most 200 bytes), if there is one.
    static func clientRequestID(in bytes: UnsafeRawBufferPointer) -> String? {
        var lines = HeadLines(bytes: bytes, end: bytes.count)
        _ = lines.next()
        while let line = lines.next(), !line.isEmpty {
            guard let colon = HeadLines.index(of: UInt8(ascii: ":"), in: bytes, line),
                HeaderName(bytes: UnsafeRawBufferPointer(rebasing: bytes[line.lowerBound..<colon])) == .requestID
            else { continue }
            let value = HeadLines.trimmed(bytes, (colon + 1)..<line.upperBound)
            guard !value.isEmpty, value.count <= 200, bytes[value].allSatisfy({ $0 >= 0x21 && $0 <= 0x7E }) else { return nil }
            return String(decoding: bytes[value], as: UTF8.self)
        }
        return nil
    }

    /// Where the head ends (after its blank line), or `nil` while it is incomplete.
    static func headEnd(_ bytes: UnsafeRawBufferPointer, limits: Limits) throws(ProxyError) -> Int? {
        // A request line starts with a method and one space. Bytes that cannot start one (a TLS
        // ClientHello sent to this plain-HTTP port, binary noise) are refused at once instead of
        // being waited on until the header timeout.
        var methodEnd = 0
        while methodEnd < bytes.count, HeaderName.isTokenCharacter(bytes[methodEnd]) { methodEnd += 1 }
        if methodEnd < bytes.count, methodEnd == 0 || bytes[methodEnd] != UInt8(ascii: " ") {
            if bytes[0] == 0x16 {
                throw .badRequest("malformed HTTP request: a TLS handshake was sent to a plain-HTTP port (use http://, not https://)")
            }
            throw .badRequest("malformed HTTP request: the request line does not start with a method and one space")
        }
        var lineStart = 0
        while let newline = HeadLines.index(of: UInt8(ascii: "\n"), in: bytes, lineStart..<bytes.count) {
            // A request line this long cannot hold a target within the limit.
            if lineStart == 0, newline > limits.maxURIBytes + 32 { throw uriTooLong(limits) }
            let lineLength = newline - lineStart - (newline > lineStart && bytes[newline - 1] == UInt8(ascii: "\r") ? 1 : 0)
            if lineLength == 0, lineStart > 0 {
                guard newline + 1 <= limits.maxHeaderBytes else { throw headTooLarge(limits) }
                return newline + 1
            }
            lineStart = newline + 1
            if lineStart > limits.maxHeaderBytes { throw headTooLarge(limits) }
        }
        if lineStart == 0, bytes.count > limits.maxURIBytes + 32 { throw uriTooLong(limits) }
        if bytes.count > limits.maxHeaderBytes { throw headTooLarge(limits) }
        return nil
    }

    private static func uriTooLong(_ limits: Limits) -> ProxyError {
        ProxyError(.uriTooLong, "the request target is longer than limits.maxUriBytes (\(limits.maxURIBytes) bytes)")
    }

    private static func headTooLarge(_ limits: Limits) -> ProxyError {
        ProxyError(.requestHeaderTooLarge, "the request head is larger than limits.maxHeaderBytes (\(limits.maxHeaderBytes) bytes)")
    }

    static func parseHead(_ bytes: UnsafeRawBufferPointer, bytes buffer: ByteBuffer, limits: Limits) throws(ProxyError) -> ClientRequestHead {
        var lines = HeadLines(bytes: bytes, end: bytes.count)
        let requestLine = lines.next()!
        let (method, targetRange, version) = try parseRequestLine(bytes, requestLine, limits: limits)
        let http11 = version.minor == 1

        var fields: [ClientRequestHead.Field] = []
        fields.reserveCapacity(16)
        var contentLength: Int?
        var chunked = false
        var hosts = 0
        var close = false
        var keepAliveOption = false
        var connectionUpgrade = false
        var upgradeHeader = false
        var connectionOptions: [String] = []
        let base = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        let all = UnsafeBufferPointer(start: base, count: bytes.count)

        while let line = lines.next(), !line.isEmpty {
            guard base[line.lowerBound] != UInt8(ascii: " "), base[line.lowerBound] != UInt8(ascii: "\t") else {
                throw .badRequest("malformed HTTP request: a folded header line (obsolete line folding is refused)")
            }
            var colon = line.lowerBound
            while colon < line.upperBound, HeaderName.isTokenCharacter(base[colon]) { colon += 1 }
            guard colon < line.upperBound, base[colon] == UInt8(ascii: ":"), colon > line.lowerBound else {
                throw .badRequest("malformed HTTP request: a header name holds a character a name may not hold, or the line has no colon")
            }
            let value = HeadLines.trimmed(bytes, (colon + 1)..<line.upperBound)
            for position in value where base[position] < 0x20 && base[position] != 0x09 || base[position] == 0x7F {
                throw .badRequest("malformed HTTP request: a header value holds a control character (CR, LF, NUL, …)")
            }
            let name = line.lowerBound..<colon
            let kind = HeaderName(bytes: UnsafeRawBufferPointer(rebasing: bytes[name]))
            fields.append(.init(kind: kind, name: name, value: value))
            switch kind {
            case .contentLength:
                guard let length = HeadLines.decimal(bytes, value) else {
                    throw .badRequest("malformed HTTP request: Content-Length is not a decimal number")
                }
                if let contentLength, contentLength != length { throw .badRequest("conflicting Content-Length values") }
                contentLength = length
            case .transferEncoding:
                // Only `chunked`, once: any other coding (identity, xchunked, "chunked, gzip") would
                // be framed one way here and another way upstream.
                let valueBytes = UnsafeBufferPointer(rebasing: all[value])
                guard !chunked, HeaderName.equalsIgnoringCase(valueBytes, "chunked") else {
                    let text = String(decoding: valueBytes.prefix(50), as: UTF8.self)
                    throw .badRequest("Transfer-Encoding \"\(text)\" is refused: only a single chunked is accepted")
                }
                chunked = true
            case .host:
                hosts += 1
                if hosts > 1 { throw .badRequest("two Host headers") }
            case .connection:
                let valueBytes = UnsafeBufferPointer(rebasing: all[value])
                if HeaderName.equalsIgnoringCase(valueBytes, "keep-alive") {
                    keepAliveOption = true
                    break
                }
                for option in String(decoding: valueBytes, as: UTF8.self).split(separator: ",") {
                    switch option.trimmingWhitespace().lowercased() {
                    case "close": close = true
                    case "keep-alive": keepAliveOption = true
                    case "upgrade": connectionUpgrade = true
                    case "": break
                    case let other: connectionOptions.append(other)
                    }
                }
            case .upgrade:
                upgradeHeader = true
            default:
                break
            }
        }
        if chunked, contentLength != nil {
            throw .badRequest("Content-Length together with Transfer-Encoding is ambiguous")
        }
        if chunked, !http11 {
            // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
            throw .badRequest("Transfer-Encoding in an HTTP/1.0 request is refused")
        }
        if http11, hosts == 0 {
            throw .badRequest("an HTTP/1.1 request needs a Host header")
        }
        let framing: ClientRequestHead.BodyFraming = chunked ? .chunked : contentLength.map { .length($0) } ?? .none
        return ClientRequestHead(
            method: method, targetRange: targetRange, version: version, bytes: buffer, fields: fields, framing: framing,
            keepAlive: !close && (http11 || keepAliveOption),
            upgradeRequested: upgradeHeader && connectionUpgrade,
            connectionOptions: connectionOptions
        )
    }

    /// `METHOD SP request-target SP HTTP/1.x`, single spaces, a visible-ASCII target.
    private static func parseRequestLine(
        _ bytes: UnsafeRawBufferPointer, _ line: Range<Int>, limits: Limits
    ) throws(ProxyError) -> (HTTPMethod, Range<Int>, HTTPVersion) {
        let base = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        var position = line.lowerBound
        while position < line.upperBound, HeaderName.isTokenCharacter(base[position]) { position += 1 }
        let methodEnd = position
        guard methodEnd > line.lowerBound, position < line.upperBound, base[position] == UInt8(ascii: " ") else {
            throw .badRequest("malformed HTTP request: the request line does not start with a method and one space")
        }
        position += 1
        let targetStart = position
        while position < line.upperBound, base[position] > 0x20, base[position] < 0x7F { position += 1 }
        let targetEnd = position
        guard targetEnd > targetStart, position < line.upperBound, base[position] == UInt8(ascii: " ") else {
            throw .badRequest("malformed HTTP request: the request target is missing or holds a space, a control or a non-ASCII byte")
        }
        if targetEnd - targetStart > limits.maxURIBytes { throw uriTooLong(limits) }
        position += 1
        let version = UnsafeBufferPointer(start: base + position, count: line.upperBound - position)
        let parsedVersion: HTTPVersion
        // HTTP-name is case-sensitive (RFC 9112 §2.3).
        if spells(version, "HTTP/1.1") {
            parsedVersion = .http1_1
        } else if spells(version, "HTTP/1.0") {
            parsedVersion = .http1_0
        } else {
            throw .badRequest("malformed HTTP request: the request line does not end with HTTP/1.1 or HTTP/1.0")
        }
        let methodBytes = UnsafeBufferPointer(start: base + line.lowerBound, count: methodEnd - line.lowerBound)
        return (method(methodBytes), targetStart..<targetEnd, parsedVersion)
    }

    /// Whether `bytes` are exactly `text`.
    private static func spells(_ bytes: UnsafeBufferPointer<UInt8>, _ text: StaticString) -> Bool {
        text.utf8CodeUnitCount == bytes.count && memcmp(bytes.baseAddress!, text.utf8Start, bytes.count) == 0
    }

    /// The method, without making a string for the common ones (methods are case-sensitive).
    private static func method(_ bytes: UnsafeBufferPointer<UInt8>) -> HTTPMethod {
        func spells(_ name: StaticString) -> Bool { Self.spells(bytes, name) }
        switch bytes.count {
        case 3:
            if spells("GET") { return .GET }
            if spells("PUT") { return .PUT }
        case 4:
            if spells("POST") { return .POST }
            if spells("HEAD") { return .HEAD }
        case 5:
            if spells("PATCH") { return .PATCH }
            if spells("TRACE") { return .TRACE }
        case 6:
            if spells("DELETE") { return .DELETE }
        case 7:
            if spells("OPTIONS") { return .OPTIONS }
            if spells("CONNECT") { return .CONNECT }
        default:
            break
        }
        return HTTPMethod(rawValue: String(decoding: bytes, as: UTF8.self))
    }
}
