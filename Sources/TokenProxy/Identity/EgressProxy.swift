import FoundationEssentials

/// The proxy that calls to the issuer go through (SPEC §2.1): `token.proxy`, else
/// `HTTPS_PROXY`/`https_proxy` for https addresses, with `NO_PROXY`/`no_proxy` exempting hosts
/// as curl does (a host, a domain and its subdomains, `*` for all; a port is ignored).
struct EgressProxy: Sendable, Equatable {
    var host: String
    var port: Int
    /// `user:password` from the proxy URL, sent as `Proxy-Authorization: Basic`.
    var credentials: (user: String, password: String)?

    static func == (lhs: EgressProxy, rhs: EgressProxy) -> Bool {
        lhs.host == rhs.host && lhs.port == rhs.port && lhs.credentials?.user == rhs.credentials?.user && lhs.credentials?.password == rhs.credentials?.password
    }

    /// Parses `http://[user:password@]host[:port][/]`; `nil` for anything else.
    static func parse(_ text: String) -> EgressProxy? {
        var rest = Substring(text.trimmingWhitespace())
        if rest.hasPrefix("http://") { rest = rest.dropFirst(7) } else if rest.contains("://") { return nil }
        while rest.hasSuffix("/") { rest = rest.dropLast() }
        var credentials: (String, String)?
        if let at = rest.lastIndex(of: "@") {
            let user = rest[..<at]
            let colon = user.firstIndex(of: ":")
            credentials = (String(user[..<(colon ?? user.endIndex)]).removingPercentEncoding ?? "", colon.map { String(user[user.index(after: $0)...]).removingPercentEncoding ?? "" } ?? "")
            rest = rest[rest.index(after: at)...]
        }
        guard !rest.isEmpty, !rest.contains("/") else { return nil }
        var host = String(rest)
        var port = 80
        if let colon = rest.lastIndex(of: ":"), !rest.hasSuffix("]") {
            guard let number = Int(rest[rest.index(after: colon)...]), (1...65535).contains(number) else { return nil }
            port = number
            host = String(rest[..<colon])
        }
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        return EgressProxy(host: host, port: port, credentials: credentials)
    }

    /// The proxy for a call to `url`, or `nil` to connect directly.
    static func choose(for url: String, configured: String?, environment: [String: String]) -> EgressProxy? {
        guard case .success(let target) = UpstreamURL.parse(url) else { return nil }
        if let noProxy = environment["NO_PROXY"] ?? environment["no_proxy"], exempts(target.host, noProxy) { return nil }
        if let configured { return parse(configured) }
        guard target.scheme == .https, let text = environment["HTTPS_PROXY"] ?? environment["https_proxy"], !text.isEmpty else { return nil }
        return parse(text)
    }

    /// Whether `NO_PROXY` exempts `host`.
    static func exempts(_ host: String, _ noProxy: String) -> Bool {
        let host = host.lowercased()
        for entry in noProxy.split(separator: ",") {
            var name = entry.trimmingWhitespace().lowercased()
            if name == "*" { return true }
            if name.hasPrefix("["), let end = name.firstIndex(of: "]") { name = String(name[name.index(after: name.startIndex)..<end]) }
            else if let colon = name.lastIndex(of: ":"), name.filter({ $0 == ":" }).count == 1 { name = String(name[..<colon]) }
            while name.hasPrefix(".") { name.removeFirst() }
            guard !name.isEmpty else { continue }
            if host == name || host.hasSuffix("." + name) { return true }
        }
        return false
    }
}
