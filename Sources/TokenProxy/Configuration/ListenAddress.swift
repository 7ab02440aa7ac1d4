/// A listener address: `HOST:PORT` (IPv6 as `[::1]:PORT`) or `unix:/path/to.sock`.
public enum ListenAddress: Sendable, Hashable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case unix(path: String)

    /// Parses `text`; the error says what is wrong with it.
    public static func parse(_ text: String) -> Result<ListenAddress, ListenAddressError> {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst("unix:".count))
            guard !path.isEmpty else { return .failure(.init(reason: "unix: needs a socket path, e.g. unix:/run/tokenproxy.sock")) }
            return .success(.unix(path: path))
        }
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                return .failure(.init(reason: "expected [IPv6]:PORT"))
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                return .failure(.init(reason: "expected HOST:PORT (e.g. 127.0.0.1:8787) or unix:/path"))
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty else { return .failure(.init(reason: "the host is missing")) }
        guard let port = Int(portText), (0...65535).contains(port) else {
            return .failure(.init(reason: "the port must be a number from 0 to 65535"))
        }
        return .success(.tcp(host: String(host), port: port))
    }

    /// Not a TCP address with port 0 (which binds wherever the system chooses).
    public var fixedPort: Bool {
        if case .tcp(_, 0) = self { return false }
        return true
    }

    /// Whether only processes on this host can connect.
    public var isLoopback: Bool {
        switch self {
        case .unix: true
        case .tcp(let host, _): Self.isLoopbackHost(host)
        }
    }

    /// `localhost`, `::1` (also as `[::1]`) or an IPv4 literal in 127.0.0.0/8 — exactly, so
    /// that `127.evil.example` or `127.0.0.1.evil.example` is not taken for one. For addresses
    /// that are bound or connected to (a resolver may send any other name off the host).
    public static func isLoopbackHost(_ host: some StringProtocol) -> Bool {
        var name = host.lowercased()
        if name.hasSuffix(".") { name.removeLast() }
        if name == "localhost" || name == "::1" || name == "[::1]" { return true }
        let octets = name.split(separator: ".", omittingEmptySubsequences: false)
        guard octets.count == 4, octets[0] == "127" else { return false }
        return octets.allSatisfy { $0.count <= 3 && !$0.isEmpty && $0.allSatisfy(\.isASCII) && UInt8($0) != nil }
    }

    /// A loopback host, or a name under `.localhost` (RFC 6761: curl and browsers resolve
    /// `status.localhost` to loopback themselves): for the `Host` a client sent, never for an
    /// address the proxy resolves.
    public static func isLoopbackName(_ host: some StringProtocol) -> Bool {
        var name = host.lowercased()
        if name.hasSuffix(".") { name.removeLast() }
        return name.hasSuffix(".localhost") || isLoopbackHost(name)
    }

    public var description: String {
        switch self {
        case .unix(let path): "unix:\(path)"
        case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        }
    }
}

public struct ListenAddressError: Error, Sendable {
    public var reason: String
}
