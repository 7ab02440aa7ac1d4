import Foundation
import NIOCore
import NIOHPACK
import NIOHTTP2

/// The response of one stream's request machine, written as HTTP/1.1 (see
/// ``HTTP2RequestHead``), as the frames of its HTTP/2 stream: the head becomes a HEADERS frame
/// (hop-by-hop and framing fields dropped, `content-length` kept), the de-framed body DATA
/// frames, and the end `END_STREAM`.
///
/// On a gRPC stream an answer of the proxy's own (`X-TokenProxy-Error`) becomes a gRPC status,
/// "Trailers-Only" (SPEC §5): HTTP 200, `grpc-status`, `grpc-message`, `x-tokenproxy-error`.
///
/// Pure: bytes in, frame payloads out.
struct HTTP2ResponseFrames {
    private var parser = UpstreamResponseParser()
    private var parts = CircularBuffer<UpstreamResponseParser.Part>(initialCapacity: 4)
    let isGRPC: Bool
    /// A head not written yet: held until the next part shows whether the stream ends with it.
    private var heldHead: HPACKHeaders?
    /// The proxy's own answer on a gRPC stream: its head and JSON body, until the body ends.
    private var ownAnswer: (head: UpstreamResponseHead, body: ByteBuffer)?
    private(set) var isComplete = false
    /// The trailer fields, sent as the last HEADERS frame (gRPC's status).
    private var trailers: HPACKHeaders?

    /// The HTTP/1 connection handler's `100 Continue`, sent before the request body.
    static let continueResponse = ByteBuffer(staticString: "HTTP/1.1 100 Continue\r\n\r\n")

    init(isHEAD: Bool, isGRPC: Bool) {
        self.isGRPC = isGRPC
        parser.expectResponse(toHEAD: isHEAD)
    }

    /// The frames that `bytes` (the next bytes of the HTTP/1.1 response) complete.
    mutating func frames(for bytes: ByteBuffer) throws(UpstreamResponseError) -> [HTTP2Frame.FramePayload] {
        guard !isComplete else { return [] }
        if heldHead == nil, ownAnswer == nil, bytes == Self.continueResponse {
            return [.headers(.init(headers: [":status": "100"]))]
        }
        try parser.feed(bytes, into: &parts)
        var frames: [HTTP2Frame.FramePayload] = []
        while let part = parts.popFirst() {
            switch part {
            case .head(let head):
                if isGRPC, head.carriesProxyError {
                    ownAnswer = (head, ByteBuffer())
                } else if isGRPC, head.status == 401, case let fields = Self.headers(of: head), fields.first(name: "grpc-status") != nil {
                    // The upstream's Trailers-Only UNAUTHENTICATED, read as a 401 for the replay
                    // (HTTP2UpstreamStreamBridge), goes back as it came.
                    var trailersOnly: HPACKHeaders = [":status": "200"]
                    for (name, value, _) in fields where name != ":status" && name != "content-length" { trailersOnly.add(name: name, value: value) }
                    heldHead = trailersOnly
                } else {
                    heldHead = Self.headers(of: head)
                }
            case .body(let buffer):
                if ownAnswer != nil {
                    ownAnswer!.body.writeImmutableBuffer(buffer)
                    continue
                }
                if let head = heldHead {
                    heldHead = nil
                    frames.append(.headers(.init(headers: head)))
                }
                if buffer.readableBytes > 0 { frames.append(.data(.init(data: .byteBuffer(buffer)))) }
            case .trailers(let lines):
                trailers = Self.fields(of: lines)
            case .end:
                isComplete = true
                if let trailers = trailers.take(), ownAnswer == nil {
                    if let head = heldHead.take() { frames.append(.headers(.init(headers: head))) }
                    frames.append(.headers(.init(headers: trailers, endStream: true)))
                } else if let answer = ownAnswer {
                    ownAnswer = nil
                    frames.append(.headers(.init(headers: Self.grpcStatus(of: answer.head, body: answer.body), endStream: true)))
                } else if let head = heldHead {
                    heldHead = nil
                    frames.append(.headers(.init(headers: head, endStream: true)))
                } else if case .data(var last)? = frames.last {
                    // The body's last bytes came with its end: one frame carries both.
                    last.endStream = true
                    frames[frames.count - 1] = .data(last)
                } else {
                    frames.append(.data(.init(data: .byteBuffer(ByteBuffer()), endStream: true)))
                }
            }
        }
        // A head whose body has not begun yet (an event stream) goes now: the client sees it
        // at once, as over HTTP/1.1.
        if let head = heldHead {
            heldHead = nil
            frames.append(.headers(.init(headers: head)))
        }
        return frames
    }

    /// The proxy's own error (SPEC §5) as the frames of a stream: a gRPC status on a gRPC
    /// stream, else the JSON answer.
    static func frames(for error: ProxyError, isGRPC: Bool) -> [HTTP2Frame.FramePayload] {
        var frames = HTTP2ResponseFrames(isHEAD: false, isGRPC: isGRPC)
        return (try? frames.frames(for: error.response(keepAlive: true, allocator: ByteBufferAllocator()))) ?? []
    }

    /// The fields of a response head for HPACK: names lowercase, hop-by-hop fields left out.
    static func headers(of head: UpstreamResponseHead) -> HPACKHeaders {
        var headers = HPACKHeaders()
        headers.reserveCapacity(12)
        headers.add(name: ":status", value: String(head.status))
        addFields(of: head.forwardedBytes, afterStatusLine: true, to: &headers)
        switch head.body {
        case .length, .none:
            if let length = head.contentLength { headers.add(name: "content-length", value: String(length)) }
        case .chunked, .untilClose, .tunnel:
            break
        }
        return headers
    }

    /// Trailer lines (`name: value` CRLF each, checked by the parser) as HPACK fields.
    static func fields(of lines: ByteBuffer) -> HPACKHeaders {
        var fields = HPACKHeaders()
        addFields(of: lines, afterStatusLine: false, to: &fields)
        return fields
    }

    /// The `name: value` lines of `bytes` (after its status line, for a head) as HPACK fields:
    /// names lowercase, connection-specific fields left out (RFC 9113 §8.2.2).
    private static func addFields(of bytes: ByteBuffer, afterStatusLine: Bool, to fields: inout HPACKHeaders) {
        bytes.withUnsafeReadableBytes { raw in
            var lines = HeadLines(bytes: raw, end: raw.count)
            if afterStatusLine { _ = lines.next() }
            while let line = lines.next(), !line.isEmpty {
                guard let colon = raw[line].firstIndex(of: UInt8(ascii: ":")) else { continue }
                let name = String(decoding: raw[line.lowerBound..<colon].lazy.map { $0 >= 65 && $0 <= 90 ? $0 + 32 : $0 }, as: UTF8.self)
                switch name {
                case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer": continue
                default: break
                }
                fields.add(name: name, value: String(decoding: raw[HeadLines.trimmed(raw, (colon + 1)..<line.upperBound)], as: UTF8.self))
            }
        }
    }

    /// An answer of the proxy's own on a gRPC stream, as gRPC's Trailers-Only response.
    static func grpcStatus(of head: UpstreamResponseHead, body: ByteBuffer) -> HPACKHeaders {
        let http = headers(of: head)
        let code = http.first(name: "x-tokenproxy-error").flatMap(ProxyError.Code.init(rawValue:))
        var message = "tokenproxy answered HTTP \(head.status)"
        if case .object(let fields)? = try? JSONValue.parse(Data(body.readableBytesView)), case .string(let text)? = fields["message"] {
            message = text
        }
        var headers: HPACKHeaders = [":status": "200", "content-type": "application/grpc"]
        headers.add(name: "grpc-status", value: String(code?.grpcStatus ?? 2))
        headers.add(name: "grpc-message", value: Self.percentEncoded(message))
        for name in ["x-tokenproxy-error", "retry-after", "x-tokenproxy-fault-injected", "x-request-id"] {
            if let value = http.first(name: name) { headers.add(name: name, value: value) }
        }
        return headers
    }

    /// gRPC's `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
    static func percentEncoded(_ text: String) -> String {
        var encoded = ""
        for byte in text.utf8 {
            if byte >= 0x20, byte <= 0x7E, byte != UInt8(ascii: "%") {
                encoded.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                encoded += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return encoded
    }
}

extension UpstreamResponseHead {
    /// Whether the proxy made this answer itself (its error header is among the fields).
    fileprivate var carriesProxyError: Bool {
        forwardedBytes.readableBytesView.firstRange(of: "\r\nX-TokenProxy-Error: ".utf8) != nil
    }
}

extension ProxyError.Code {
    /// The gRPC status of the proxy's own answer on a gRPC call (SPEC §5), after gRPC's table
    /// of HTTP statuses, more precise where the proxy knows more.
    var grpcStatus: Int {
        switch self {
        case .reauthenticationRequired: 16  // UNAUTHENTICATED
        case .tokenUnavailable, .upstreamUnavailable: 14  // UNAVAILABLE
        case .upstreamTimeout, .requestTimeout: 4  // DEADLINE_EXCEEDED
        case .badRequest: 13  // INTERNAL, as gRPC maps HTTP 400
        case .forbiddenRequest: 7  // PERMISSION_DENIED
        case .methodNotAllowed, .noRoute: 12  // UNIMPLEMENTED
        case .uriTooLong, .requestHeaderTooLarge: 8  // RESOURCE_EXHAUSTED
        }
    }
}
