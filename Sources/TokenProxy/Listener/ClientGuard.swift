/// Who may use a listener (SPEC §2.2, §7), decided from a request head before anything is
/// forwarded: a `Host` that is not allowed (DNS rebinding), a browser's cross-site request
/// (`Origin`, `Sec-Fetch-Site`), or a request without the required header gets 403
/// `forbidden_request`. The proxy holds a token that it attaches to whatever it forwards: a web
/// page open in a browser on the same host must not be able to use it.
struct ClientGuard: Sendable, Equatable {
    enum Hosts: Sendable, Equatable {
        /// Any `Host` (a unix-socket listener: no browser can reach it by name).
        case any
        /// Loopback names and addresses only (the admin listener).
        case loopback
        /// `names` (without port) with any port; `withPort` (`host:port`) exactly. Both are
        /// lowercased bytes, so that a request's `Host` is compared in place, without making a
        /// string of it (this runs for every request). `localhostNames`: also any name under
        /// `.localhost` (RFC 6761: loopback in curl and browsers alike).
        case listed(names: [[UInt8]], withPort: [[UInt8]], localhostNames: Bool)
    }

    let hosts: Hosts
    let refusesBrowserRequests: Bool
    /// `Origin` values accepted while browser requests are refused, lowercased.
    let allowedOrigins: Set<String>
    let requiredHeader: String?
    /// The admin listener's guard: loopback `Host` names only, and no browser request at all.
    static let admin = ClientGuard(hosts: .loopback, refusesBrowserRequests: true, allowedOrigins: [], requiredHeader: nil)

    /// Why the request may not pass, or `nil`. `host` is the request's `Host` (`nil` if none;
    /// framing rules deal with a missing one), `origin` and `fetchSite` the browser's headers;
    /// `carries` tells whether the request has a header of a given name.
    func refusal(host: String?, origin: String?, fetchSite: String?, carries: (String) -> Bool) -> ProxyError? {
        guard var host else { return refusal(host: nil as UnsafeRawBufferPointer?, origin: origin, fetchSite: fetchSite, carries: carries) }
        return host.withUTF8 { refusal(host: UnsafeRawBufferPointer($0), origin: origin, fetchSite: fetchSite, carries: carries) }
    }

    /// The same, with the `Host` value as the bytes it arrived in.
    func refusal(host: UnsafeRawBufferPointer?, origin: String?, fetchSite: String?, carries: (String) -> Bool) -> ProxyError? {
        if let host, !accepts(host: host.assumingMemoryBound(to: UInt8.self)) {
            let text = String(decoding: host.prefix(100), as: UTF8.self)
            return .forbidden("Host \"\(text)\" is not served here (a page in a browser may be using DNS rebinding); list it in allowedHosts if it is yours")
        }
        if refusesBrowserRequests {
            if let origin, !allowedOrigins.contains(origin.lowercased()) {
                return .forbidden("a request from a web page (Origin \(origin.prefix(100))) is refused: a page open in a browser must not use the token; list the origin in allowedOrigins, or set browserRequests to \"allow\"")
            }
            if let fetchSite, !["none", "same-origin"].contains(fetchSite.lowercased()) {
                return .forbidden("a \(fetchSite.prefix(30)) request from a browser (Sec-Fetch-Site) is refused: a page open in a browser must not use the token")
            }
        }
        if let requiredHeader, !carries(requiredHeader) {
            return .forbidden("every request must carry the header \(requiredHeader) (requireHeader)")
        }
        return nil
    }

    private func accepts(host: UnsafeBufferPointer<UInt8>) -> Bool {
        switch hosts {
        case .any:
            return true
        case .loopback:
            return ListenAddress.isLoopbackName(Self.split(String(decoding: host, as: UTF8.self).lowercased()).host)
        case .listed(let names, let withPort, let localhostNames):
            // A listed name followed by nothing or a port; ASCII case is ignored.
            for name in names where host.count >= name.count && Self.startsIgnoringCase(host, with: name) {
                if host.count == name.count || host[name.count] == UInt8(ascii: ":") { return true }
            }
            if withPort.contains(where: { $0.count == host.count && Self.startsIgnoringCase(host, with: $0) }) { return true }
            return localhostNames && ListenAddress.isLoopbackName(Self.split(String(decoding: host, as: UTF8.self)).host)
        }
    }

    /// Whether `bytes` begin with `lowercased`, ignoring ASCII case (`bytes` are at least as long).
    private static func startsIgnoringCase(_ bytes: UnsafeBufferPointer<UInt8>, with lowercased: [UInt8]) -> Bool {
        lowercased.withUnsafeBufferPointer { name in
            for index in 0..<name.count {
                var byte = bytes[index]
                if byte >= UInt8(ascii: "A"), byte <= UInt8(ascii: "Z") { byte += 32 }
                if byte != name[index] { return false }
            }
            return true
        }
    }

    /// `example.com:8787` → (`example.com`, `8787`); `[::1]:8787` → (`[::1]`, `8787`).
    static func split(_ authority: String) -> (host: String, port: String?) {
        var host = Substring(authority)
        var port: Substring?
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { return (authority, nil) }
            let rest = host[host.index(after: close)...]
            if rest.hasPrefix(":") { port = rest.dropFirst() }
            host = host[...close]
        } else if let colon = host.lastIndex(of: ":") {
            port = host[host.index(after: colon)...]
            host = host[..<colon]
        }
        if host.hasSuffix(".") { host = host.dropLast() }
        return (String(host), port.map(String.init))
    }
}

extension ClientGuard {
    /// The guard of a route on the listener `listen` (SPEC §2.2, §2.4): the default hosts are
    /// the loopback names, the listener's host, any `*.localhost` name and the hosts the
    /// listener's routes name; a configured `allowedHosts` replaces them.
    init(_ configuration: Configuration, listen: ListenAddress, requiredHeader: String?) {
        let hosts: Hosts
        if case .unix = listen {
            hosts = .any
        } else if let configured = configuration.clients.allowedHosts {
            let split = configured.map { ($0, Self.split($0)) }
            hosts = .listed(
                names: Self.lowercasedBytes(split.filter { $0.1.port == nil }.map(\.1.host)), withPort: Self.lowercasedBytes(split.filter { $0.1.port != nil }.map(\.0)),
                localhostNames: false)
        } else {
            var names: Set<String> = ["localhost", "127.0.0.1", "[::1]"]
            if case .tcp(let host, _) = listen { names.insert(host.contains(":") ? "[\(host.lowercased())]" : host.lowercased()) }
            // A host a route of this listener names is the operator's own.
            for route in configuration.routes where route.listen == listen {
                if let host = route.host { names.insert(host) }
            }
            hosts = .listed(names: Self.lowercasedBytes(names), withPort: [], localhostNames: true)
        }
        self.init(
            hosts: hosts, refusesBrowserRequests: configuration.clients.browserRequests == .refuse,
            allowedOrigins: Set(configuration.clients.allowedOrigins), requiredHeader: requiredHeader
        )
    }

    /// The guard of the top-level `listen`, with the top-level `requireHeader`.
    init(_ configuration: Configuration) {
        self.init(configuration, listen: configuration.listen, requiredHeader: configuration.clients.requireHeader)
    }

    /// Distinct, lowercased, in a fixed order (so that equal configurations make equal guards).
    private static func lowercasedBytes(_ names: some Sequence<String>) -> [[UInt8]] {
        Set(names.map { $0.lowercased() }).sorted().map { Array($0.utf8) }
    }
}
