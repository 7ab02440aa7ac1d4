import NIOCore
import NIOHTTP1

/// What a client request becomes on its way upstream (SPEC §5), decided without I/O: the target
/// is checked (not an open proxy), framing ambiguities are refused, hop-by-hop headers dropped,
/// `Host` rewritten and the `X-Forwarded-*` headers set.
final class ForwardingRules: Sendable {
    let upstream: UpstreamURL
    /// Authorities an absolute-form target may name besides loopback ones: the upstream's.
    let upstreamAuthorities: Set<String>
    /// `Host` and `X-Forwarded-Proto`, the same on every request: written once.
    private let fixedLines: ByteBuffer

    init(upstream: UpstreamURL) {
        self.upstream = upstream
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
        if upstreamAuthorities.contains(lowered) { return true }
        let host = lowered.hasPrefix("[") ? String(lowered.prefix { $0 != "]" }.dropFirst()) : String(lowered.prefix { $0 != ":" })
        return ListenAddress.tcp(host: host, port: 0).isLoopback
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
        case .GET, .HEAD, .OPTIONS, .PUT, .DELETE, .TRACE: true
        default: false
        }
    }

    func prepare(_ head: HTTPRequestHead, clientAddress: String, faultsEnabled: Bool) -> Result<PreparedRequest, ProxyError> {
        if head.method == .CONNECT {
            return .failure(.badRequest("CONNECT is refused: tokenproxy forwards to its one upstream and is not an open proxy"))
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

        // One pass over the client's headers: note what the rules need, and whether a
        // `Connection` header names other headers of this hop (then the copy needs a filter).
        var contentLength: String?
        var hasTransferEncoding = false
        var originalHost: String?
        var forwardedFor: String?
        var faultHeader: String?
        var connectionOptions: [String] = []
        var hasIdempotencyKey = false
        for (name, value) in head.headers {
            switch HeaderName(name) {
            case .contentLength:
                if let contentLength, contentLength != value {
                    return .failure(.badRequest("conflicting Content-Length values"))
                }
                contentLength = value
            case .transferEncoding: hasTransferEncoding = true
            case .host: originalHost = value
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
            case .transferEncoding, .idempotencyKey, .wwwAuthenticate, .retryAfter, .other:
                break
            // Replaced below, or answered by the proxy itself (`Expect: 100-continue`), or hop-by-hop.
            case .host, .forwardedFor, .fault, .connection, .authorization, .expect, .forwardedHost, .forwardedProto, .hopByHop:
                continue
            }
            if !connectionOptions.isEmpty, connectionOptions.contains(name.lowercased()) { continue }
            bytes.writeHeaderLine(name, value)
        }
        bytes.writeImmutableBuffer(fixedLines)
        bytes.writeHeaderLine("X-Forwarded-For", forwardedFor.map { "\($0), \(clientAddress)" } ?? clientAddress)
        if let originalHost { bytes.writeHeaderLine("X-Forwarded-Host", originalHost) }

        return .success(PreparedRequest(
            method: head.method,
            head: bytes,
            bodyFraming: hasTransferEncoding ? .chunked : contentLength != nil ? .length : .none,
            isRetryableAfterSending: Self.isIdempotent(head.method) || hasIdempotencyKey,
            clientKeepAlive: head.isKeepAlive,
            clientAcceptsChunked: head.version.major > 1 || (head.version.major == 1 && head.version.minor >= 1),
            fault: fault
        ))
    }
}
