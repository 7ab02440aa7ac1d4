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

    /// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1). Framing
    /// (`Content-Length`, `Transfer-Encoding`) is redone by the encoders and handled separately.
    static let hopByHop: [String] = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "proxy-authorization", "proxy-authenticate"]

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
        } else if let schemeEnd = head.uri.range(of: "://") {
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

        let contentLengths = head.headers[canonicalForm: "content-length"]
        let transferEncoding = head.headers["transfer-encoding"]
        if !contentLengths.isEmpty, !transferEncoding.isEmpty {
            return .failure(.badRequest("Content-Length together with Transfer-Encoding is ambiguous"))
        }
        if Set(contentLengths).count > 1 {
            return .failure(.badRequest("conflicting Content-Length values"))
        }
        if head.version.major == 1, head.version.minor >= 1, !head.headers.contains(name: "host") {
            return .failure(.badRequest("an HTTP/1.1 request needs a Host header"))
        }

        var fault: FaultPlan?
        let faultHeader = head.headers.first(name: FaultPlan.headerName)
        if faultsEnabled, let faultHeader {
            switch FaultPlan.parse(faultHeader) {
            case .success(let plan): fault = plan
            case .failure(let error): return .failure(error)
            }
        }

        var headers = head.headers
        for name in headers[canonicalForm: "connection"] where !Self.hopByHop.contains(name.lowercased()) {
            headers.remove(name: String(name))
        }
        for name in Self.hopByHop { headers.remove(name: name) }
        if faultHeader != nil { headers.remove(name: FaultPlan.headerName) }
        headers.remove(name: "authorization")
        let originalHost = headers.first(name: "host")
        headers.replaceOrAdd(name: "host", value: upstream.hostHeader)
        if let forwardedFor = headers.first(name: "x-forwarded-for") {
            headers.replaceOrAdd(name: "x-forwarded-for", value: "\(forwardedFor), \(clientAddress)")
        } else {
            headers.add(name: "x-forwarded-for", value: clientAddress)
        }
        headers.replaceOrAdd(name: "x-forwarded-proto", value: "http")
        if let originalHost { headers.replaceOrAdd(name: "x-forwarded-host", value: originalHost) }
        // The proxy answers `Expect: 100-continue` itself; the upstream gets the body right away.
        headers.remove(name: "expect")

        var forwarded = HTTPRequestHead(version: .http1_1, method: head.method, uri: upstream.pathPrefix + path, headers: headers)
        forwarded.headers.reserveCapacity(forwarded.headers.count + 1)
        return .success(PreparedRequest(
            head: forwarded,
            isRetryableAfterSending: Self.isIdempotent(head.method) || head.headers.contains(name: "idempotency-key"),
            clientKeepAlive: head.isKeepAlive,
            fault: fault
        ))
    }

    /// The upstream's response head as the client gets it: hop-by-hop headers dropped.
    static func clientResponseHead(_ head: HTTPResponseHead, clientKeepAlive: Bool) -> HTTPResponseHead {
        var head = head
        for name in head.headers[canonicalForm: "connection"] where !hopByHop.contains(name.lowercased()) {
            head.headers.remove(name: String(name))
        }
        for name in hopByHop { head.headers.remove(name: name) }
        head.version = .http1_1
        if !clientKeepAlive { head.headers.add(name: "connection", value: "close") }
        return head
    }
}
