import NIOCore
import NIOHTTP1

/// What a client request becomes on its way upstream (SPEC §5), decided without I/O: the target
/// is checked (not an open proxy), framing ambiguities are refused, hop-by-hop headers dropped,
/// `Host` rewritten and the `X-Forwarded-*` headers set.
struct ForwardingRules: Sendable {
    let upstream: UpstreamURL
    /// Authorities an absolute-form target may name besides loopback ones: the upstream's.
    let upstreamAuthorities: Set<String>

    init(upstream: UpstreamURL) {
        self.upstream = upstream
        upstreamAuthorities = [upstream.hostHeader.lowercased(), "\(upstream.host.lowercased()):\(upstream.port)"]
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
        var head: HTTPRequestHead
        /// Safe to send twice: an idempotent method, or an `Idempotency-Key`.
        var isRetryableAfterSending: Bool
        var clientKeepAlive: Bool
        var fault: FaultPlan?
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

        // One pass over the client's headers: copy what is forwarded, note what the rules need.
        var headers = HTTPHeaders()
        headers.reserveCapacity(head.headers.count + 4)
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
                if contentLength == nil { headers.add(name: name, value: value) }
                contentLength = value
            case .transferEncoding:
                hasTransferEncoding = true
                headers.add(name: name, value: value)
            case .host: originalHost = value
            case .forwardedFor: forwardedFor = forwardedFor.map { "\($0), \(value)" } ?? value
            case .fault: faultHeader = value
            case .connection: connectionOptions.append(value)
            case .idempotencyKey:
                hasIdempotencyKey = true
                headers.add(name: name, value: value)
            // Replaced below, or answered by the proxy itself (`Expect: 100-continue`).
            case .authorization, .expect, .forwardedHost, .forwardedProto, .hopByHop: break
            case .other: headers.add(name: name, value: value)
            }
        }
        if contentLength != nil, hasTransferEncoding {
            return .failure(.badRequest("Content-Length together with Transfer-Encoding is ambiguous"))
        }
        if head.version.major == 1, head.version.minor >= 1, originalHost == nil {
            return .failure(.badRequest("an HTTP/1.1 request needs a Host header"))
        }
        // Headers named in `Connection` belong to this hop too.
        for options in connectionOptions {
            for option in options.split(separator: ",") {
                headers.remove(name: String(option.trimmingWhitespace()))
            }
        }

        var fault: FaultPlan?
        if faultsEnabled, let faultHeader {
            switch FaultPlan.parse(faultHeader) {
            case .success(let plan): fault = plan
            case .failure(let error): return .failure(error)
            }
        }

        headers.add(name: "Host", value: upstream.hostHeader)
        headers.add(name: "X-Forwarded-For", value: forwardedFor.map { "\($0), \(clientAddress)" } ?? clientAddress)
        headers.add(name: "X-Forwarded-Proto", value: "http")
        if let originalHost { headers.add(name: "X-Forwarded-Host", value: originalHost) }

        let uri = upstream.pathPrefix.isEmpty ? String(path) : upstream.pathPrefix + path
        return .success(PreparedRequest(
            head: HTTPRequestHead(version: .http1_1, method: head.method, uri: uri, headers: headers),
            isRetryableAfterSending: Self.isIdempotent(head.method) || hasIdempotencyKey,
            clientKeepAlive: head.isKeepAlive,
            fault: fault
        ))
    }

    /// The upstream's response head as the client gets it: hop-by-hop headers dropped. Most
    /// responses carry only `Connection: keep-alive` of those, so the common case removes one.
    static func clientResponseHead(_ head: HTTPResponseHead, clientKeepAlive: Bool) -> HTTPResponseHead {
        var head = head
        var connectionOptions: [String] = []
        var hopByHop: [String] = []
        for (name, value) in head.headers {
            switch HeaderName(name) {
            case .connection:
                connectionOptions.append(value)
                hopByHop.append(name)
            case .hopByHop: hopByHop.append(name)
            default: break
            }
        }
        for name in hopByHop { head.headers.remove(name: name) }
        for options in connectionOptions where !HeaderName.isPlainConnectionOption(options) {
            for option in options.split(separator: ",") { head.headers.remove(name: String(option.trimmingWhitespace())) }
        }
        head.version = .http1_1
        if !clientKeepAlive { head.headers.add(name: "Connection", value: "close") }
        return head
    }
}
