import Glibc
import NIOCore
import NIOHTTP1

/// What a client request becomes on its way upstream (SPEC §5), decided without I/O: the client
/// is checked (``ClientGuard``), the target too (not an open proxy, no dot-segments), framing
/// ambiguities and malformed fields are refused, hop-by-hop headers dropped, `Host` rewritten,
/// the `X-Forwarded-*` headers and `X-Request-Id` set.
final class ForwardingRules: Sendable {
    let upstream: UpstreamURL
    let clientGuard: ClientGuard
    let limits: Configuration.Limits
    /// Authorities an absolute-form target may name besides loopback ones: the upstream's.
    let upstreamAuthorities: Set<String>
    /// `Host` and `X-Forwarded-Proto`, the same on every request: written once.
    private let fixedLines: ByteBuffer
    /// How many bytes of the path the route's `stripPrefix` removes (its prefix without the
    /// trailing `/`); 0 when the path goes upstream whole.
    let stripPrefix: Int

    /// The upstream is reached over HTTP/2 (`upstream.protocol`): it can carry gRPC.
    let upstreamSpeaksHTTP2: Bool

    init(upstream: UpstreamURL, clientGuard: ClientGuard, limits: Configuration.Limits, stripPrefix: Int = 0, upstreamSpeaksHTTP2: Bool = false) {
        self.upstream = upstream
        self.upstreamSpeaksHTTP2 = upstreamSpeaksHTTP2
        self.clientGuard = clientGuard
        self.limits = limits
        self.stripPrefix = stripPrefix
        upstreamAuthorities = [upstream.hostHeader.lowercased(), "\(upstream.host.lowercased()):\(upstream.port)"]
        var fixedLines = ByteBuffer()
        fixedLines.writeHeaderLine("Host", upstream.hostHeader)
        fixedLines.writeHeaderLine("X-Forwarded-Proto", "http")
        self.fixedLines = fixedLines
    }

    /// An absolute-form target is served only when it names the upstream or this host (the
    /// proxy itself); the request still goes to the upstream, never to the named host.
    func acceptsAbsoluteTarget(authority: Substring) -> Bool {
        let lowered = authority.lowercased()
        // `http://127.0.0.1@evil.example/` names evil.example: user information is never accepted.
        if lowered.contains("@") { return false }
        if upstreamAuthorities.contains(lowered) { return true }
        return ListenAddress.isLoopbackName(ClientGuard.split(lowered).host)
    }

    /// The limits the request parser enforces (SPEC §2.2 `limits`).
    var parserLimits: ClientRequestParser.Limits {
        ClientRequestParser.Limits(maxHeaderBytes: limits.maxHeaderBytes, maxURIBytes: limits.maxUriBytes)
    }

    /// A request ready to be sent, but for the `Authorization` header of each attempt.
    struct PreparedRequest {
        var method: HTTPMethod
        /// The request line and headers as the upstream gets them, each line ending in CRLF,
        /// without `Authorization` and the blank line that ends the head.
        var head: ByteBuffer
        var bodyFraming: BodyFraming
        /// Safe to send twice: an idempotent method, or an `Idempotency-Key`.
        var isRetryableAfterSending: Bool
        var clientKeepAlive: Bool
        /// HTTP/1.1 or later: a body of unknown length can be sent to the client chunked.
        var clientAcceptsChunked: Bool
        var fault: FaultPlan?
        /// The client's `X-Request-Id`, or the one generated for it; sent upstream either way.
        var requestID: RequestID
        var upgrade: Upgrade
    }

    /// What becomes of a client's protocol upgrade (SPEC §5).
    enum Upgrade: Equatable {
        case none
        /// A WebSocket upgrade, passed on: after the upstream's `101` the connection is a tunnel.
        case websocket
        /// Another protocol (`h2c`): the request goes upstream without it, and the connection
        /// closes after the answer, so that whatever the client sends next is never read as HTTP.
        case refused
    }

    /// How the request body is delimited on the way upstream.
    enum BodyFraming {
        case none
        /// `Content-Length`: body bytes are sent as they are.
        case length
        /// `Transfer-Encoding: chunked`: each part is sent as one chunk.
        case chunked
    }

    static func isIdempotent(_ method: HTTPMethod) -> Bool {
        switch method {
        case .GET, .HEAD, .OPTIONS, .PUT, .DELETE: true
        default: false
        }
    }

    /// `tracing`: the client's `traceparent` and `tracestate` are left out, since each attempt
    /// sends its own (SPEC §2.6); without tracing they pass through unchanged.
    func prepare(_ head: ClientRequestHead, clientAddress: String, faultsEnabled: Bool, tracing: Bool = false) -> Result<PreparedRequest, ProxyError> {
        // Pattern matches, not `==`: HTTPMethod's `==` compares raw-value strings.
        switch head.method {
        case .CONNECT:
            return .failure(.badRequest("CONNECT is refused: tokenproxy forwards to its one upstream and is not an open proxy"))
        case .TRACE:
            // A TRACE echoes the request, the token included, back to whoever sent it.
            return .failure(ProxyError(.methodNotAllowed, "TRACE is refused: it would echo the credentials tokenproxy attaches"))
        default:
            break
        }
        // The path goes upstream as the bytes the client sent: the whole origin-form target, or
        // what follows the authority of an absolute-form one.
        var pathRange = head.targetRange
        var needsSlash = false
        let originForm = head.withBytes(pathRange) { $0.first == UInt8(ascii: "/") }
        if !originForm {
            let target = head.target
            guard let schemeEnd = target.firstRange(of: "://") else {
                return .failure(.badRequest("request target \"\(target.prefix(100))\" is not a path"))
            }
            let rest = target.utf8[schemeEnd.upperBound...]
            let authority = Substring(rest.prefix { $0 != UInt8(ascii: "/") && $0 != UInt8(ascii: "?") })
            guard acceptsAbsoluteTarget(authority: authority) else {
                return .failure(.badRequest("absolute-form target for \(authority) is refused: tokenproxy forwards only to its upstream and is not an open proxy"))
            }
            let pathStart = target.utf8.distance(from: target.utf8.startIndex, to: rest.startIndex) + authority.utf8.count
            pathRange = (head.targetRange.lowerBound + pathStart)..<head.targetRange.upperBound
            needsSlash = head.withBytes(pathRange) { $0.first != UInt8(ascii: "/") }
        }
        if head.withBytes(pathRange, Self.hasDotSegment) {
            return .failure(.badRequest("the path holds a dot-segment (/./ or /../, also percent-encoded); it could leave the upstream's path prefix"))
        }
        if stripPrefix > 0 {
            // The route matched this prefix on a segment boundary: what is left starts with `/`
            // or `?`, or is empty, and keeps (or gets) its leading `/` (SPEC §2.4).
            pathRange = min(pathRange.lowerBound + stripPrefix, pathRange.upperBound)..<pathRange.upperBound
            needsSlash = head.withBytes(pathRange) { $0.first != UInt8(ascii: "/") }
        }

        // One pass over the fields: note where the values the rules need are.
        var host: Range<Int>?
        var forwardedFor: [Range<Int>] = []
        var fault: Range<Int>?
        var hasIdempotencyKey = false
        var origin: Range<Int>?
        var fetchSite: Range<Int>?
        var requestID: Range<Int>?
        var websocket = false
        var grpc = false
        for field in head.fields {
            switch field.kind {
            case .host: host = field.value
            case .origin: origin = field.value
            case .secFetchSite: fetchSite = field.value
            case .requestID: requestID = field.value
            case .forwardedFor: forwardedFor.append(field.value)
            case .fault: fault = field.value
            case .idempotencyKey: hasIdempotencyKey = true
            case .contentType: grpc = head.withBytes(field.value, Self.isGRPC)
            case .upgrade:
                websocket = head.withBytes(field.value) { HeaderName.equalsIgnoringCase($0.assumingMemoryBound(to: UInt8.self), "websocket") }
            default: break
            }
        }
        // Browsers' headers are made text only when present (a request from curl has neither).
        let refusal = head.bytes.withUnsafeReadableBytes { raw in
            clientGuard.refusal(
                host: host.map { UnsafeRawBufferPointer(rebasing: raw[$0]) }, origin: origin.map(head.text),
                fetchSite: fetchSite.map(head.text), carries: head.contains(name:)
            )
        }
        if let refusal { return .failure(refusal) }
        if grpc, !upstreamSpeaksHTTP2 {
            // gRPC's status travels in trailers, which an HTTP/1.1 upstream cannot carry.
            return .failure(ProxyError(
                .upstreamUnavailable,
                "a gRPC call needs an HTTP/2 upstream, and tokenproxy reaches \(upstream) over HTTP/1.1, which cannot carry gRPC's trailers; set upstream.protocol to http2 if it speaks HTTP/2"))
        }

        var faultPlan: FaultPlan?
        if faultsEnabled, let fault {
            switch FaultPlan.parse(head.text(fault)) {
            case .success(let plan): faultPlan = plan
            case .failure(let error): return .failure(error)
            }
        }

        // Only a WebSocket upgrade is passed on (SPEC §5); any other (h2c) is dropped.
        let upgrade = head.upgradeRequested && websocket && head.framing == .none
        let id = requestID.map { RequestID.client(head.text($0)) } ?? .generate()
        // Everything copied comes from the head once, but for the CRLF each line gets (a line may
        // have ended in a bare LF) and the lines added here.
        let room = head.bytes.readableBytes + head.fields.count + 2 * forwardedFor.count + upstream.pathPrefix.utf8.count
            + fixedLines.readableBytes + clientAddress.utf8.count + 256
        var bytes = ByteBufferAllocator().buffer(capacity: room)
        head.bytes.withUnsafeReadableBytes { raw in
            bytes.writeInOnePiece(maximumBytes: room) { writer in
                // The method as the client spelled it (methods are case-sensitive), then the path.
                writer.write(UnsafeRawBufferPointer(rebasing: raw[0..<(head.targetRange.lowerBound)]))
                if !upstream.pathPrefix.isEmpty { writer.write(upstream.pathPrefix) }
                if needsSlash { writer.write("/") }
                writer.write(UnsafeRawBufferPointer(rebasing: raw[pathRange]))
                writer.write(" HTTP/1.1\r\n")
                var wroteContentLength = false
                for field in head.fields {
                    switch field.kind {
                    case .contentLength:
                        if wroteContentLength { continue }
                        wroteContentLength = true
                    case .transferEncoding, .idempotencyKey, .wwwAuthenticate, .retryAfter, .origin, .secFetchSite, .requestID, .contentType, .other:
                        break
                    case .traceparent, .tracestate:
                        if tracing { continue }
                    // Replaced below, or answered by the proxy itself (`Expect: 100-continue`), or hop-by-hop.
                    case .host, .forwardedFor, .fault, .connection, .authorization, .expect, .forwardedHost, .forwardedProto, .hopByHop, .upgrade:
                        continue
                    }
                    if !head.connectionOptions.isEmpty, head.connectionOptions.contains(head.name(of: field).lowercased()) { continue }
                    // The line as the client sent it, up to the end of its value, with a CRLF ending.
                    writer.write(UnsafeRawBufferPointer(rebasing: raw[field.name.lowerBound..<field.value.upperBound]))
                    writer.write("\r\n")
                }
                writer.write(fixedLines)
                if upgrade { writer.write("Connection: Upgrade\r\nUpgrade: websocket\r\n") }
                writer.write("X-Forwarded-For: ")
                for value in forwardedFor {
                    writer.write(UnsafeRawBufferPointer(rebasing: raw[value]))
                    writer.write(", ")
                }
                writer.write(clientAddress)
                writer.write("\r\n")
                if let host {
                    writer.write("X-Forwarded-Host: ")
                    writer.write(UnsafeRawBufferPointer(rebasing: raw[host]))
                    writer.write("\r\n")
                }
                if id.isGenerated { id.writeHeaderLine(to: &writer) }
            }
        }

        let bodyFraming: BodyFraming
        switch head.framing {
        case .none: bodyFraming = .none
        case .length: bodyFraming = .length
        case .chunked: bodyFraming = .chunked
        }
        return .success(PreparedRequest(
            method: head.method,
            head: bytes,
            bodyFraming: bodyFraming,
            isRetryableAfterSending: Self.isIdempotent(head.method) || hasIdempotencyKey,
            clientKeepAlive: head.keepAlive && !head.upgradeRequested,
            clientAcceptsChunked: head.version.minor >= 1,
            fault: faultPlan,
            requestID: id,
            upgrade: upgrade ? .websocket : head.upgradeRequested ? .refused : .none
        ))
    }

    /// `application/grpc`, `application/grpc+proto`…, but not gRPC-Web (which HTTP/1.1 carries).
    static func isGRPC(_ value: UnsafeRawBufferPointer) -> Bool {
        let prefix: StaticString = "application/grpc"
        guard value.count >= prefix.utf8CodeUnitCount else { return false }
        for index in 0..<prefix.utf8CodeUnitCount {
            var byte = value[index]
            if byte >= UInt8(ascii: "A"), byte <= UInt8(ascii: "Z") { byte += 32 }
            if byte != prefix.utf8Start[index] { return false }
        }
        let rest = value[prefix.utf8CodeUnitCount...]
        return rest.first.map { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: ";") } ?? true
    }

    /// Whether a path (before its query) has a `.` or `..` segment, plain or percent-encoded.
    static func hasDotSegment(_ path: UnsafeRawBufferPointer) -> Bool {
        // Most paths hold no dot and no percent sign at all: two memchr decide.
        guard let base = path.baseAddress, memchr(base, Int32(UInt8(ascii: ".")), path.count) != nil || memchr(base, Int32(UInt8(ascii: "%")), path.count) != nil
        else { return false }
        let text = String(decoding: path, as: UTF8.self)
        let beforeQuery = text.prefix { $0 != "?" && $0 != "#" }
        for segment in beforeQuery.split(separator: "/", omittingEmptySubsequences: false) where segment.count <= 6 {
            // Count the dots, each spelled `.` or `%2e`; anything else makes it a name.
            var dots = 0
            var rest = Substring(segment.lowercased())
            while !rest.isEmpty {
                if rest.hasPrefix(".") { rest = rest.dropFirst() } else if rest.hasPrefix("%2e") { rest = rest.dropFirst(3) } else { break }
                dots += 1
            }
            if rest.isEmpty, dots == 1 || dots == 2 { return true }
        }
        return false
    }
}
