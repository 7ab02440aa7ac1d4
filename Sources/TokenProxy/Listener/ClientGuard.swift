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
        /// `names` (lowercased, without port) with any port; `withPort` (`host:port`) exactly.
        case listed(names: Set<String>, withPort: Set<String>)
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
        if let host, !accepts(host: host) {
            return .forbidden("Host \"\(host.prefix(100))\" is not served here (a page in a browser may be using DNS rebinding); list it in allowedHosts if it is yours")
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

    private func accepts(host: String) -> Bool {
        // Lowercase only when needed: a request's Host is nearly always lowercase already.
        let lowered = host.utf8.contains(where: { (0x41...0x5A).contains($0) }) ? host.lowercased() : host
        switch hosts {
        case .any:
            return true
        case .loopback:
            return ListenAddress.isLoopbackHost(Self.split(lowered).host)
        case .listed(let names, let withPort):
            // Without splitting (no allocation): a listed name followed by nothing or a port.
            for name in names where lowered.utf8.starts(with: name.utf8) {
                let rest = lowered.utf8.dropFirst(name.utf8.count)
                if rest.isEmpty || rest.first == UInt8(ascii: ":") { return true }
            }
            return withPort.contains(lowered)
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
    /// The proxy listener's guard, from the configuration (SPEC §2.2).
    init(_ configuration: Configuration) {
        let hosts: Hosts
        if case .unix = configuration.listen {
            hosts = .any
        } else if let configured = configuration.clients.allowedHosts {
            let split = configured.map { ($0, Self.split($0)) }
            hosts = .listed(names: Set(split.filter { $0.1.port == nil }.map(\.1.host)), withPort: Set(split.filter { $0.1.port != nil }.map(\.0)))
        } else {
            var names: Set<String> = ["localhost", "127.0.0.1", "[::1]"]
            if case .tcp(let host, _) = configuration.listen { names.insert(host.contains(":") ? "[\(host.lowercased())]" : host.lowercased()) }
            hosts = .listed(names: names, withPort: [])
        }
        self.init(
            hosts: hosts, refusesBrowserRequests: configuration.clients.browserRequests == .refuse,
            allowedOrigins: Set(configuration.clients.allowedOrigins), requiredHeader: configuration.clients.requireHeader
        )
    }
}
