import NIOHTTP1

/// Who may use a listener (SPEC §2.2, §7), decided from a request head before anything is
/// forwarded: a `Host` that is not allowed (DNS rebinding), a browser's cross-site request
/// (`Origin`, `Sec-Fetch-Site`), or a request without the required header gets 403
/// `forbidden_request`. The proxy holds a token that it attaches to whatever it forwards: a web
/// page open in a browser on the same host must not be able to use it.
struct ClientGuard: Sendable, Equatable {
    /// Host names (lowercased, without port) accepted with any port.
    let hostsAnyPort: Set<String>
    /// `host:port` values (lowercased) accepted exactly.
    let hostsWithPort: Set<String>
    /// Any `Host` is accepted (a unix-socket listener: no browser can reach it by name).
    let anyHost: Bool
    let refusesBrowserRequests: Bool
    let allowedOrigins: Set<String>
    let requiredHeader: String?

    /// The proxy listener's guard, from the configuration.
    init(_ configuration: Configuration) {
        var names: Set<String> = ["localhost", "127.0.0.1", "[::1]"]
        var withPort: Set<String> = []
        switch configuration.listen {
        case .tcp(let host, _): names.insert(host.contains(":") ? "[\(host.lowercased())]" : host.lowercased())
        case .unix: break
        }
        if let configured = configuration.clients.allowedHosts {
            names = []
            for entry in configured {
                if Self.split(entry).port == nil { names.insert(Self.split(entry).host) } else { withPort.insert(entry) }
            }
        }
        if case .unix = configuration.listen { anyHost = true } else { anyHost = false }
        hostsAnyPort = names
        hostsWithPort = withPort
        refusesBrowserRequests = configuration.clients.browserRequests == .refuse
        allowedOrigins = Set(configuration.clients.allowedOrigins)
        requiredHeader = configuration.clients.requireHeader
        loopbackOnly = false
    }

    /// The admin listener's guard: loopback `Host` names only, and no browser request at all.
    static let admin = ClientGuard(
        hostsAnyPort: [], hostsWithPort: [], anyHost: false, refusesBrowserRequests: true, allowedOrigins: [], requiredHeader: nil, loopbackOnly: true
    )

    private let loopbackOnly: Bool

    private init(hostsAnyPort: Set<String>, hostsWithPort: Set<String>, anyHost: Bool, refusesBrowserRequests: Bool, allowedOrigins: Set<String>, requiredHeader: String?, loopbackOnly: Bool) {
        self.hostsAnyPort = hostsAnyPort
        self.hostsWithPort = hostsWithPort
        self.anyHost = anyHost
        self.refusesBrowserRequests = refusesBrowserRequests
        self.allowedOrigins = allowedOrigins
        self.requiredHeader = requiredHeader
        self.loopbackOnly = loopbackOnly
    }

    /// Why the request may not pass, or `nil`. `host` is the request's `Host` (`nil` if none;
    /// framing rules deal with a missing one), `origin` and `fetchSite` the browser's headers.
    func refusal(host: String?, origin: String?, fetchSite: String?, headers: HTTPHeaders) -> ProxyError? {
        if let host, !anyHost, !accepts(host: host) {
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
        if let requiredHeader, !headers.contains(name: requiredHeader) {
            return .forbidden("every request must carry the header \(requiredHeader) (requireHeader)")
        }
        return nil
    }

    private func accepts(host: String) -> Bool {
        let lowered = host.lowercased()
        let (name, _) = Self.split(lowered)
        if loopbackOnly { return ListenAddress.isLoopbackHost(name) }
        return hostsAnyPort.contains(name) || hostsWithPort.contains(lowered)
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
