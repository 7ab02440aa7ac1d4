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

    init(upstream: UpstreamURL, clientGuard: ClientGuard, limits: Configuration.Limits) {
        self.upstream = upstream
        self.clientGuard = clientGuard
        self.limits = limits
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
        return ListenAddress.isLoopbackHost(ClientGuard.split(lowered).host)
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

    func prepare(_ head: ClientRequestHead, clientAddress: String, faultsEnabled: Bool) -> Result<PreparedRequest, ProxyError> {
        if head.method == .CONNECT {
            return .failure(.badRequest("CONNECT is refused: tokenproxy forwards to its one upstream and is not an open proxy"))
        }
        if head.method == .TRACE {
            // A TRACE echoes the request, the token included, back to whoever sent it.
            return .failure(ProxyError(.methodNotAllowed, "TRACE is refused: it would echo the credentials tokenproxy attaches"))
        }
        var path: Substring
        if head.target.hasPrefix("/") {
            path = Substring(head.target)
        } else if let schemeEnd = head.target.firstRange(of: "://") {
            let rest = head.target[schemeEnd.upperBound...]
            let authority = rest.prefix { $0 != "/" && $0 != "?" }
            guard acceptsAbsoluteTarget(authority: authority) else {
                return .failure(.badRequest("absolute-form target for \(authority) is refused: tokenproxy forwards only to its upstream and is not an open proxy"))
            }
            path = rest.dropFirst(authority.count)
            if !path.hasPrefix("/") { path = "/" + path }
        } else {
            return .failure(.badRequest("request target \"\(head.target.prefix(100))\" is not a path"))
        }
        if Self.hasDotSegment(path) {
            return .failure(.badRequest("the path holds a dot-segment (/./ or /../, also percent-encoded); it could leave the upstream's path prefix"))
        }

        // One pass over the fields: note what the rules need.
        var originalHost: String?
        var forwardedFor: String?
        var faultHeader: String?
        var hasIdempotencyKey = false
        var origin: String?
        var fetchSite: String?
        var requestID: String?
        var websocket = false
        for field in head.fields {
            switch field.kind {
            case .host: originalHost = head.value(of: field)
            case .origin: origin = head.value(of: field)
            case .secFetchSite: fetchSite = head.value(of: field)
            case .requestID: requestID = head.value(of: field)
            case .forwardedFor:
                let value = head.value(of: field)
                forwardedFor = forwardedFor.map { "\($0), \(value)" } ?? value
            case .fault: faultHeader = head.value(of: field)
            case .idempotencyKey: hasIdempotencyKey = true
            case .upgrade:
                websocket = head.withBytes(field.value) { HeaderName.equalsIgnoringCase($0.assumingMemoryBound(to: UInt8.self), "websocket") }
            default: break
            }
        }
        if let refusal = clientGuard.refusal(host: originalHost, origin: origin, fetchSite: fetchSite, carries: head.contains(name:)) {
            return .failure(refusal)
        }

        var fault: FaultPlan?
        if faultsEnabled, let faultHeader {
            switch FaultPlan.parse(faultHeader) {
            case .success(let plan): fault = plan
            case .failure(let error): return .failure(error)
            }
        }

        // Only a WebSocket upgrade is passed on (SPEC §5); any other (h2c) is dropped.
        let upgrade = head.upgradeRequested && websocket && head.framing == .none
        var bytes = ByteBufferAllocator().buffer(capacity: head.bytes.readableBytes + 160 + upstream.pathPrefix.utf8.count)
        bytes.writeString(head.method.rawValue)
        bytes.writeStaticString(" ")
        if !upstream.pathPrefix.isEmpty { bytes.writeString(upstream.pathPrefix) }
        bytes.writeSubstring(path)
        bytes.writeStaticString(" HTTP/1.1\r\n")
        var wroteContentLength = false
        head.bytes.withUnsafeReadableBytes { raw in
            for field in head.fields {
                switch field.kind {
                case .contentLength:
                    if wroteContentLength { continue }
                    wroteContentLength = true
                case .transferEncoding, .idempotencyKey, .wwwAuthenticate, .retryAfter, .origin, .secFetchSite, .requestID, .other:
                    break
                // Replaced below, or answered by the proxy itself (`Expect: 100-continue`), or hop-by-hop.
                case .host, .forwardedFor, .fault, .connection, .authorization, .expect, .forwardedHost, .forwardedProto, .hopByHop, .upgrade:
                    continue
                }
                if !head.connectionOptions.isEmpty, head.connectionOptions.contains(head.name(of: field).lowercased()) { continue }
                // The line as the client sent it, up to the end of its value, with a CRLF ending.
                bytes.writeBytes(UnsafeRawBufferPointer(rebasing: raw[field.name.lowerBound..<field.value.upperBound]))
                bytes.writeStaticString("\r\n")
            }
        }
        bytes.writeImmutableBuffer(fixedLines)
        if upgrade { bytes.writeStaticString("Connection: Upgrade\r\nUpgrade: websocket\r\n") }
        bytes.writeHeaderLine("X-Forwarded-For", forwardedFor.map { "\($0), \(clientAddress)" } ?? clientAddress)
        if let originalHost { bytes.writeHeaderLine("X-Forwarded-Host", originalHost) }
        let id = requestID.map(RequestID.client) ?? .generate()
        if id.isGenerated { id.writeHeaderLine(to: &bytes) }

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
            fault: fault,
            requestID: id,
            upgrade: upgrade ? .websocket : head.upgradeRequested ? .refused : .none
        ))
    }

    /// Whether a path (before its query) has a `.` or `..` segment, plain or percent-encoded.
    static func hasDotSegment(_ target: Substring) -> Bool {
        // Most paths hold no dot at all: one pass over the bytes decides.
        guard target.utf8.contains(UInt8(ascii: ".")) || target.utf8.contains(UInt8(ascii: "%")) else { return false }
        let path = target.prefix { $0 != "?" && $0 != "#" }
        for segment in path.split(separator: "/", omittingEmptySubsequences: false) where segment.count <= 6 {
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
