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
        /// The client asked for a protocol upgrade. Tunnels are not served yet: the request goes
        /// upstream without it, and the connection closes after the answer, so that whatever
        /// the client sends next is never read (nor buffered).
        var upgradeRequested: Bool
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

    func prepare(_ head: HTTPRequestHead, clientAddress: String, faultsEnabled: Bool) -> Result<PreparedRequest, ProxyError> {
        if head.method == .CONNECT {
            return .failure(.badRequest("CONNECT is refused: tokenproxy forwards to its one upstream and is not an open proxy"))
        }
        if head.method == .TRACE {
            // A TRACE echoes the request, the token included, back to whoever sent it.
            return .failure(ProxyError(.methodNotAllowed, "TRACE is refused: it would echo the credentials tokenproxy attaches"))
        }
        if head.uri.utf8.count > limits.maxUriBytes {
            return .failure(ProxyError(.uriTooLong, "the request target is longer than limits.maxUriBytes (\(limits.maxUriBytes) bytes)"))
        }
        var path: Substring
        if head.uri.hasPrefix("/") {
            path = Substring(head.uri)
        } else if let schemeEnd = head.uri.firstRange(of: "://") {
            let rest = head.uri[schemeEnd.upperBound...]
            let authority = rest.prefix { $0 != "/" && $0 != "?" }
            guard acceptsAbsoluteTarget(authority: authority) else {
                return .failure(.badRequest("absolute-form target for \(authority) is refused: tokenproxy forwards only to its upstream and is not an open proxy"))
            }
            path = rest.dropFirst(authority.count)
            if !path.hasPrefix("/") { path = "/" + path }
        } else {
            return .failure(.badRequest("request target \"\(head.uri.prefix(100))\" is not a path"))
        }
        if Self.hasDotSegment(path) {
            return .failure(.badRequest("the path holds a dot-segment (/./ or /../, also percent-encoded); it could leave the upstream's path prefix"))
        }

        // One pass over the client's headers: note what the rules need, and whether a
        // `Connection` header names other headers of this hop (then the copy needs a filter).
        var contentLength: String?
        var hasTransferEncoding = false
        var originalHost: String?
        var forwardedFor: String?
        var faultHeader: String?
        var connectionOptions: [String] = []
        var hasIdempotencyKey = false
        var origin: String?
        var fetchSite: String?
        var requestID: String?
        var upgradeRequested = false
        var headBytes = head.uri.utf8.count + 16
        for (name, value) in head.headers {
            headBytes += name.utf8.count + value.utf8.count + 4
            if !Self.isValidField(name: name, value: value) {
                return .failure(.badRequest("a header name or value is malformed (CR, LF or NUL in a value, or a character a name may not hold)"))
            }
            switch HeaderName(name) {
            case .contentLength:
                if let contentLength, contentLength != value {
                    return .failure(.badRequest("conflicting Content-Length values"))
                }
                contentLength = value
            case .transferEncoding:
                // Only `chunked`, once: any other coding (identity, xchunked, "chunked, gzip") would
                // be framed one way here and another way upstream.
                guard !hasTransferEncoding, value.trimmingWhitespace().lowercased() == "chunked" else {
                    return .failure(.badRequest("Transfer-Encoding \"\(value.prefix(50))\" is refused: only a single chunked is accepted"))
                }
                hasTransferEncoding = true
            case .host:
                if originalHost != nil { return .failure(.badRequest("two Host headers")) }
                originalHost = value
            case .origin: origin = value
            case .secFetchSite: fetchSite = value
            case .requestID: requestID = value
            case .upgrade: upgradeRequested = true
            case .forwardedFor: forwardedFor = forwardedFor.map { "\($0), \(value)" } ?? value
            case .fault: faultHeader = value
            case .connection:
                if !HeaderName.isPlainConnectionOption(value) {
                    connectionOptions += value.split(separator: ",").map { $0.trimmingWhitespace().lowercased() }
                }
            case .idempotencyKey: hasIdempotencyKey = true
            default: break
            }
        }
        if headBytes > limits.maxHeaderBytes {
            return .failure(ProxyError(.requestHeaderTooLarge, "the request head is larger than limits.maxHeaderBytes (\(limits.maxHeaderBytes) bytes)"))
        }
        if let refusal = clientGuard.refusal(host: originalHost, origin: origin, fetchSite: fetchSite, headers: head.headers) {
            return .failure(refusal)
        }
        if contentLength != nil, hasTransferEncoding {
            return .failure(.badRequest("Content-Length together with Transfer-Encoding is ambiguous"))
        }
        if head.version.major == 1, head.version.minor >= 1, originalHost == nil {
            return .failure(.badRequest("an HTTP/1.1 request needs a Host header"))
        }

        var fault: FaultPlan?
        if faultsEnabled, let faultHeader {
            switch FaultPlan.parse(faultHeader) {
            case .success(let plan): fault = plan
            case .failure(let error): return .failure(error)
            }
        }

        var bytes = ByteBufferAllocator().buffer(capacity: 256 + head.uri.utf8.count + head.headers.count * 48)
        bytes.writeString(head.method.rawValue)
        bytes.writeStaticString(" ")
        if !upstream.pathPrefix.isEmpty { bytes.writeString(upstream.pathPrefix) }
        bytes.writeSubstring(path)
        bytes.writeStaticString(" HTTP/1.1\r\n")
        var wroteContentLength = false
        for (name, value) in head.headers {
            switch HeaderName(name) {
            case .contentLength:
                if wroteContentLength { continue }
                wroteContentLength = true
            case .transferEncoding, .idempotencyKey, .wwwAuthenticate, .retryAfter, .origin, .secFetchSite, .requestID, .other:
                break
            // Replaced below, or answered by the proxy itself (`Expect: 100-continue`), or hop-by-hop.
            case .host, .forwardedFor, .fault, .connection, .authorization, .expect, .forwardedHost, .forwardedProto, .hopByHop, .upgrade:
                continue
            }
            if !connectionOptions.isEmpty, connectionOptions.contains(name.lowercased()) { continue }
            bytes.writeHeaderLine(name, value)
        }
        bytes.writeImmutableBuffer(fixedLines)
        bytes.writeHeaderLine("X-Forwarded-For", forwardedFor.map { "\($0), \(clientAddress)" } ?? clientAddress)
        if let originalHost { bytes.writeHeaderLine("X-Forwarded-Host", originalHost) }
        let id = requestID.map(RequestID.client) ?? .generate()
        if id.isGenerated { id.writeHeaderLine(to: &bytes) }

        return .success(PreparedRequest(
            method: head.method,
            head: bytes,
            bodyFraming: hasTransferEncoding ? .chunked : contentLength != nil ? .length : .none,
            isRetryableAfterSending: Self.isIdempotent(head.method) || hasIdempotencyKey,
            clientKeepAlive: head.isKeepAlive && !upgradeRequested,
            clientAcceptsChunked: head.version.major > 1 || (head.version.major == 1 && head.version.minor >= 1),
            fault: fault,
            requestID: id,
            upgradeRequested: upgradeRequested
        ))
    }

    /// RFC 9110 §5.1, §5.5: a name of `tchar`s, a value without CR, LF, NUL or other controls
    /// but horizontal tab.
    static func isValidField(name: String, value: String) -> Bool {
        guard !name.isEmpty, name.utf8.allSatisfy(HeaderName.isTokenCharacter) else { return false }
        return value.utf8.allSatisfy { $0 >= 0x20 || $0 == 0x09 }
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
