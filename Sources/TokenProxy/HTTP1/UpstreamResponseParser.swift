import Glibc
import NIOCore

/// Reads HTTP/1.1 responses from an upstream connection, byte by byte as they arrive: the head
/// is parsed once into an ``UpstreamResponseHead`` whose client-bound bytes are copied in runs
/// of whole lines, and body bytes are handed on as slices of what was read, de-chunked.
///
/// Strict where a lenient reading could desynchronise the connection: conflicting
/// `Content-Length`, folded or malformed header lines, oversized heads and chunk lines all end
/// the exchange with an ``UpstreamResponseError``, and the connection is not reused.
struct UpstreamResponseParser {
    enum Part {
        case head(UpstreamResponseHead)
        case body(ByteBuffer)
        /// The trailer fields of a chunked body (gRPC's status travels there), each line
        /// `name: value` with a CRLF, checked as header lines are; just before its `end`.
        case trailers(ByteBuffer)
        /// The response is complete; `reusable` tells whether the connection can carry another.
        case end(reusable: Bool)
    }

    private enum State {
        /// No request is outstanding: bytes now are a protocol error.
        case idle
        case head
        case fixed(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        /// The CRLF after a chunk's data.
        case chunkDataEnd
        case trailers
        case untilClose
    }

    static let maximumHeadBytes = 64 * 1024
    static let maximumChunkLineBytes = 4 * 1024

    private var state = State.idle
    private var respondingToHEAD = false
    /// The request asked for a WebSocket upgrade: a `101` is its answer, not an error.
    private var upgradeRequested = false
    private var keepAlive = true
    /// Bytes read but not yet parsed (an incomplete head or chunk line).
    private var pending: ByteBuffer?
    /// The trailer section read so far.
    private var trailerLines: ByteBuffer?

    /// A request was sent: its response comes next. A response to HEAD has no body; after a
    /// `101` to an upgrade request, everything the upstream sends is body, until it closes.
    mutating func expectResponse(toHEAD: Bool, upgrade: Bool = false) {
        state = .head
        respondingToHEAD = toHEAD
        upgradeRequested = upgrade
        keepAlive = true
        pending = nil
        trailerLines = nil
    }

    /// Parses what was read, appending each complete part to `parts`. Parts are collected rather
    /// than delivered so that their receiver may start the next request on this connection.
    /// On a protocol error the parts before it are in `parts`.
    mutating func feed(_ input: ByteBuffer, into parts: inout CircularBuffer<Part>) throws(UpstreamResponseError) {
        var buffer: ByteBuffer
        if var pending = self.pending {
            self.pending = nil
            var input = input
            pending.writeBuffer(&input)
            buffer = pending
        } else {
            buffer = input
        }
        while buffer.readableBytes > 0 {
            switch state {
            case .idle:
                throw UpstreamResponseError("the upstream sent \(buffer.readableBytes) bytes without a request")
            case .head:
                guard let head = try parseHead(&buffer) else { return keep(buffer) }
                if let head { startBody(of: head, into: &parts) }
            case .fixed(let remaining):
                let slice = buffer.readSlice(length: min(remaining, buffer.readableBytes))!
                parts.append(.body(slice))
                if remaining == slice.readableBytes {
                    finish(into: &parts)
                } else {
                    state = .fixed(remaining: remaining - slice.readableBytes)
                }
            case .chunkSize:
                guard let line = try readLine(&buffer, limit: Self.maximumChunkLineBytes, what: "chunk size line") else { return keep(buffer) }
                let size = try Self.chunkSize(line)
                state = size == 0 ? .trailers : .chunkData(remaining: size)
            case .chunkData(let remaining):
                let slice = buffer.readSlice(length: min(remaining, buffer.readableBytes))!
                parts.append(.body(slice))
                state = remaining == slice.readableBytes ? .chunkDataEnd : .chunkData(remaining: remaining - slice.readableBytes)
            case .chunkDataEnd:
                guard let line = try readLine(&buffer, limit: 2, what: "chunk end") else { return keep(buffer) }
                guard line.readableBytes == 0 else { throw UpstreamResponseError("a chunk is longer than its declared size") }
                state = .chunkSize
            case .trailers:
                guard let line = try readLine(&buffer, limit: Self.maximumHeadBytes, what: "trailer") else { return keep(buffer) }
                guard line.readableBytes > 0 else {
                    if let lines = trailerLines.take() { parts.append(.trailers(lines)) }
                    finish(into: &parts)
                    continue
                }
                try addTrailer(line)
            case .untilClose:
                parts.append(.body(buffer))
                return
            }
        }
    }

    /// The connection closed: the end of a response delimited by the close, else `nil` (the
    /// response, if one was expected, is cut short).
    mutating func connectionClosed() -> Part? {
        guard case .untilClose = state else { return nil }
        state = .idle
        return .end(reusable: false)
    }

    /// A trailer line, checked as a header line is; fields that frame or route the message
    /// (which a trailer may not carry, RFC 9110 §6.5.1) are dropped.
    private mutating func addTrailer(_ line: ByteBuffer) throws(UpstreamResponseError) {
        let view = line.readableBytesView
        guard let colon = view.firstIndex(of: UInt8(ascii: ":")), colon > view.startIndex,
            view[view.startIndex..<colon].allSatisfy(HeaderName.isTokenCharacter),
            !view[(colon + 1)...].contains(where: { ($0 < 0x20 && $0 != 0x09) || $0 == 0x7F })
        else { throw UpstreamResponseError("a trailer field of the upstream's chunked body is malformed") }
        let length = (trailerLines?.readableBytes ?? 0) + line.readableBytes
        guard length <= Self.maximumHeadBytes else { throw UpstreamResponseError("the upstream's trailers are larger than \(Self.maximumHeadBytes / 1024) KiB") }
        let name = line.getString(at: line.readerIndex, length: colon - view.startIndex) ?? ""
        switch HeaderName(name) {
        case .other, .retryAfter, .wwwAuthenticate: break
        default: return
        }
        if trailerLines == nil { trailerLines = ByteBuffer() }
        trailerLines!.writeImmutableBuffer(line)
        trailerLines!.writeStaticString("\r\n")
    }

    private mutating func keep(_ buffer: ByteBuffer) {
        pending = buffer.readableBytes > 0 ? buffer : nil
    }

    private mutating func finish(into parts: inout CircularBuffer<Part>) {
        state = .idle
        parts.append(.end(reusable: keepAlive))
    }

    private mutating func startBody(of head: UpstreamResponseHead, into parts: inout CircularBuffer<Part>) {
        keepAlive = head.keepAlive
        parts.append(.head(head))
        switch head.body {
        case .none, .length(0): finish(into: &parts)
        case .length(let length): state = .fixed(remaining: length)
        case .chunked: state = .chunkSize
        case .untilClose, .tunnel:
            keepAlive = false
            state = .untilClose
        }
    }

    // MARK: Lines

    /// The next line without its line ending, or `nil` until it is complete.
    private func readLine(_ buffer: inout ByteBuffer, limit: Int, what: String) throws(UpstreamResponseError) -> ByteBuffer? {
        switch buffer.readHTTPLine(limit: limit) {
        case .line(let line): return line
        case .incomplete: return nil
        case .tooLong: throw UpstreamResponseError("the upstream's \(what) is longer than \(limit) bytes")
        }
    }

    static func chunkSize(_ line: ByteBuffer) throws(UpstreamResponseError) -> Int {
        do throws(ChunkSizeLine.Problem) {
            return try ChunkSizeLine.size(of: line)
        } catch {
            throw UpstreamResponseError("the upstream sent a bad chunk: \(error.description)")
        }
    }

    // MARK: Head

    /// Parses a complete head off `buffer`: `nil` while incomplete, `.some(nil)` for an interim
    /// (1xx) response, which concerns this hop only and is skipped.
    private mutating func parseHead(_ buffer: inout ByteBuffer) throws(UpstreamResponseError) -> UpstreamResponseHead?? {
        let respondingToHEAD = self.respondingToHEAD
        let upgradeRequested = self.upgradeRequested
        let result: Result<(consumed: Int, head: UpstreamResponseHead?)?, UpstreamResponseError> = buffer.withUnsafeReadableBytes { bytes in
            do throws(UpstreamResponseError) {
                return .success(try Self.parseHead(bytes, respondingToHEAD: respondingToHEAD, upgradeRequested: upgradeRequested, allocator: ByteBufferAllocator()))
            } catch {
                return .failure(error)
            }
        }
        guard let parsed = try result.get() else {
            if buffer.readableBytes > Self.maximumHeadBytes {
                throw UpstreamResponseError("the upstream's response head is larger than \(Self.maximumHeadBytes / 1024) KiB")
            }
            return nil
        }
        buffer.moveReaderIndex(forwardBy: parsed.consumed)
        return .some(parsed.head)
    }

    static func parseHead(
        _ bytes: UnsafeRawBufferPointer, respondingToHEAD: Bool, upgradeRequested: Bool = false, allocator: ByteBufferAllocator
    ) throws(UpstreamResponseError) -> (consumed: Int, head: UpstreamResponseHead?)? {
        // One pass: each line is found once, and the head is parsed as its lines are found; it
        // counts only once its blank line has come (until then, `nil`: wait for more bytes).
        var lines = HeadLines(bytes: bytes, end: bytes.count)
        guard let statusLine = lines.next() else {
            if bytes.count > maximumHeadBytes { throw UpstreamResponseError("the upstream's response head is larger than \(maximumHeadBytes / 1024) KiB") }
            return nil
        }
        let (status, http11) = try parseStatusLine(bytes, statusLine)
        if status == 101, !upgradeRequested { throw UpstreamResponseError("the upstream switched protocols (101) for a request that did not ask for it") }
        let interim = status < 200 && status != 101

        // Room for the framing lines the client's hop gets and for a small body read with the
        // head, so that the client's bytes are built in this one buffer.
        var forwarded = allocator.buffer(capacity: min(bytes.count, maximumHeadBytes + ClientResponseWriter.copyLimit) + 96)
        // Lines passed on unchanged are copied in runs: [runStart, runEnd) of `bytes`. An
        // HTTP/1.1 status line ending in CRLF starts the first run as it is.
        var runStart = -1
        var runEnd = -1
        if http11, lines.lastLineEndedWithCRLF {
            runStart = statusLine.lowerBound
            runEnd = statusLine.upperBound + 2
        } else {
            forwarded.writeInOnePiece(maximumBytes: statusLine.count + 2) { writer in
                writer.write("HTTP/1.1 ")
                writer.write(UnsafeRawBufferPointer(rebasing: bytes[(statusLine.lowerBound + 9)..<statusLine.upperBound]))
                writer.write("\r\n")
            }
        }
        let statusLineBytes = statusLine.count + 2

        var contentLength: Int?
        var transferEncoding: [UInt8]?
        var keepAlive = http11
        var connectionOptions: [String] = []
        var wwwAuthenticate: [String] = []
        var retryAfter: String?
        let base = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        var headEnd = -1

        while let line = lines.next() {
            if line.isEmpty {
                headEnd = lines.position
                break
            }
            if line.upperBound > maximumHeadBytes { break }
            if interim { continue }
            // The name: token characters up to the colon.
            var colon = line.lowerBound
            while colon < line.upperBound, HeaderName.isTokenCharacter(base[colon]) { colon += 1 }
            guard colon < line.upperBound, colon > line.lowerBound, base[colon] == UInt8(ascii: ":") else {
                throw UpstreamResponseError("the upstream sent a folded or malformed header line")
            }
            let nameRange = line.lowerBound..<colon
            let value = HeadLines.trimmed(bytes, (colon + 1)..<line.upperBound)
            if HeadLines.containsControlCharacter(base, value) {
                // A bare CR or a NUL reads differently to different parsers downstream.
                throw UpstreamResponseError("the upstream sent a control character (CR, NUL, …) in a header value")
            }
            var forward = false
            switch HeaderName(bytes: UnsafeRawBufferPointer(rebasing: bytes[nameRange])) {
            case .contentLength:
                guard let length = HeadLines.decimal(bytes, value) else { throw UpstreamResponseError("the upstream sent an invalid Content-Length") }
                if let contentLength, contentLength != length { throw UpstreamResponseError("the upstream sent conflicting Content-Length values") }
                contentLength = length
            case .transferEncoding:
                transferEncoding = (transferEncoding.map { $0 + [UInt8(ascii: ",")] } ?? []) + bytes[value]
            case .connection:
                let options = UnsafeRawBufferPointer(rebasing: bytes[value])
                if HeaderName.equalsIgnoringCase(options.assumingMemoryBound(to: UInt8.self), "keep-alive") {
                    // The common case, without making a string.
                    if !http11 { keepAlive = true }
                    break
                }
                for option in String(decoding: options, as: UTF8.self).split(separator: ",") {
                    let option = option.trimmingWhitespace().lowercased()
                    if option == "close" { keepAlive = false } else if option == "keep-alive" { if !http11 { keepAlive = true } } else { connectionOptions.append(option) }
                }
            case .hopByHop, .upgrade:
                break
            case .wwwAuthenticate:
                wwwAuthenticate.append(String(decoding: UnsafeRawBufferPointer(rebasing: bytes[value]), as: UTF8.self))
                forward = true
            case .retryAfter:
                retryAfter = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[value]), as: UTF8.self)
                forward = true
            default:
                forward = true
            }
            if forward, lines.lastLineEndedWithCRLF {
                if runStart < 0 { runStart = line.lowerBound }
                runEnd = line.upperBound + 2
                continue
            }
            if runStart >= 0 {
                forwarded.writeBytes(UnsafeRawBufferPointer(start: base + runStart, count: runEnd - runStart))
                runStart = -1
            }
            if forward {
                forwarded.writeInOnePiece(maximumBytes: line.count + 2) { writer in
                    writer.write(UnsafeRawBufferPointer(rebasing: bytes[line]))
                    writer.write("\r\n")
                }
            }
        }
        guard headEnd > 0 else {
            if lines.position > maximumHeadBytes || bytes.count > maximumHeadBytes {
                throw UpstreamResponseError("the upstream's response head is larger than \(maximumHeadBytes / 1024) KiB")
            }
            return nil
        }
        // An interim (1xx) response concerns this hop only: skipped.
        if interim { return (headEnd, nil) }
        if runStart >= 0 { forwarded.writeBytes(UnsafeRawBufferPointer(start: base + runStart, count: runEnd - runStart)) }
        if !connectionOptions.isEmpty {
            // Rare: `Connection` names headers of this hop, which may come before it.
            forwarded.moveWriterIndex(to: forwarded.readerIndex + statusLineBytes)
            var lines = HeadLines(bytes: bytes, end: headEnd)
            _ = lines.next()
            while let line = lines.next(), !line.isEmpty {
                let colon = HeadLines.index(of: UInt8(ascii: ":"), in: bytes, line)!
                let name = UnsafeRawBufferPointer(rebasing: bytes[line.lowerBound..<colon])
                switch HeaderName(bytes: name) {
                case .contentLength, .transferEncoding, .connection, .hopByHop, .upgrade: continue
                default:
                    if connectionOptions.contains(String(decoding: name, as: UTF8.self).lowercased()) { continue }
                    forwarded.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[line]))
                    forwarded.writeStaticString("\r\n")
                }
            }
        }

        if transferEncoding != nil, contentLength != nil {
            // RFC 9112 §6.1: a message with both is a smuggling attempt or a broken server; which
            // framing a client would pick is unknowable, so the response is not passed on.
            throw UpstreamResponseError("the upstream sent both Content-Length and Transfer-Encoding")
        }
        let body: UpstreamResponseHead.Body
        if status == 101 {
            body = .tunnel
            contentLength = nil
        } else if respondingToHEAD || status == 204 || status == 304 {
            body = .none
        } else if let transferEncoding {
            // RFC 9112 §6.3: chunked must be the final coding, else the body runs to the close.
            let codings = String(decoding: transferEncoding, as: UTF8.self).split(separator: ",")
            body = codings.last.map { $0.trimmingWhitespace().lowercased() == "chunked" } == true ? .chunked : .untilClose
            contentLength = nil
        } else if let contentLength {
            body = .length(contentLength)
        } else {
            body = .untilClose
        }
        return (headEnd, UpstreamResponseHead(
            status: status, forwardedBytes: forwarded, contentLength: contentLength, body: body,
            keepAlive: keepAlive && body != .untilClose, wwwAuthenticate: wwwAuthenticate, retryAfter: retryAfter
        ))
    }

    private static func parseStatusLine(_ bytes: UnsafeRawBufferPointer, _ line: Range<Int>) throws(UpstreamResponseError) -> (status: Int, http11: Bool) {
        // "HTTP/1.x SSS[ reason]"
        let prefix: StaticString = "HTTP/1."
        guard line.count >= 12, (0..<7).allSatisfy({ bytes[line.lowerBound + $0] == prefix.utf8Start[$0] }),
            bytes[line.lowerBound + 8] == UInt8(ascii: " "),
            line.count == 12 || bytes[line.lowerBound + 12] == UInt8(ascii: " "),
            (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[line.lowerBound + 7]),
            let status = HeadLines.decimal(bytes, (line.lowerBound + 9)..<(line.lowerBound + 12)), status >= 100
        else {
            throw UpstreamResponseError("the upstream did not answer with an HTTP/1.x status line")
        }
        // The reason phrase goes to the client as it is: visible characters and white space only
        // (found by fuzzing: a NUL or bare CR in it reached the client).
        for index in (line.lowerBound + 12)..<line.upperBound where bytes[index] < 0x20 && bytes[index] != 0x09 || bytes[index] == 0x7F {
            throw UpstreamResponseError("the upstream sent a control character (CR, NUL, …) in its status line")
        }
        return (status, bytes[line.lowerBound + 7] == UInt8(ascii: "1"))
    }
}

/// The upstream's response could not be read as HTTP/1.1; the connection is dropped.
struct UpstreamResponseError: Error, CustomStringConvertible {
    let description: String

    init(_ description: String) {
        self.description = description
    }
}

extension Optional {
    /// The value, leaving `nil` behind.
    mutating func take() -> Wrapped? {
        defer { self = nil }
        return self
    }
}
