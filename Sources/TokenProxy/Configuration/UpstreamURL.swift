/// The backend that every request is forwarded to: `http(s)://host[:port][/prefix]`.
public struct UpstreamURL: Sendable, Hashable, CustomStringConvertible {
    public enum Scheme: String, Sendable { case http, https }

    public var scheme: Scheme
    public var host: String
    public var port: Int
    /// A path prefix without a trailing slash (`""` for none); request paths are appended to it.
    public var pathPrefix: String

    /// The value of the `Host` header that the upstream expects.
    public var hostHeader: String {
        let bracketed = host.contains(":") ? "[\(host)]" : host
        let defaultPort = scheme == .https ? 443 : 80
        return port == defaultPort ? bracketed : "\(bracketed):\(port)"
    }

    public var description: String { "\(scheme.rawValue)://\(hostHeader)\(pathPrefix)" }

    /// Parses an absolute http or https URL; the error says what is wrong.
    public static func parse(_ text: String) -> Result<UpstreamURL, ListenAddressError> {
        let scheme: Scheme
        let rest: Substring
        if text.hasPrefix("https://") {
            scheme = .https
            rest = text.dropFirst("https://".count)
        } else if text.hasPrefix("http://") {
            scheme = .http
            rest = text.dropFirst("http://".count)
        } else {
            return .failure(.init(reason: "must start with http:// or https://"))
        }
        guard !rest.contains("?"), !rest.contains("#") else {
            return .failure(.init(reason: "must not have a query or fragment"))
        }
        guard !rest.contains("@") else { return .failure(.init(reason: "must not carry user information")) }
        let authority = rest.prefix { $0 != "/" }
        var pathPrefix = String(rest.dropFirst(authority.count))
        while pathPrefix.hasSuffix("/") { pathPrefix.removeLast() }
        let defaultPort = scheme == .https ? 443 : 80
        let host: Substring
        var port = defaultPort
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return .failure(.init(reason: "unclosed [ in the host")) }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":"), let parsed = Int(after.dropFirst()), (1...65535).contains(parsed) else {
                    return .failure(.init(reason: "the port must be a number from 1 to 65535"))
                }
                port = parsed
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            guard let parsed = Int(authority[authority.index(after: colon)...]), (1...65535).contains(parsed) else {
                return .failure(.init(reason: "the port must be a number from 1 to 65535"))
            }
            port = parsed
        } else {
            host = authority
        }
        guard !host.isEmpty else { return .failure(.init(reason: "the host is missing")) }
        return .success(UpstreamURL(scheme: scheme, host: String(host), port: port, pathPrefix: pathPrefix))
    }
}
