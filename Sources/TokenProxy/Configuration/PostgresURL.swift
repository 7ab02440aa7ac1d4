import FoundationEssentials

/// Where the fleet's database is (SPEC §2.3): `postgres://ROLE@HOST[:PORT]/DATABASE`, or a unix
/// socket as libpq writes it, `postgres://ROLE@/DATABASE?host=/var/run/postgresql`.
///
/// The password never sits in the URL (it goes in `fleet.passwordFile`, which only its owner can
/// read); TLS is `fleet.tls`, not `sslmode`.
public struct PostgresURL: Sendable, Equatable, CustomStringConvertible {
    public enum Endpoint: Sendable, Equatable {
        case tcp(host: String, port: Int)
        /// The socket file itself: `<host folder>/.s.PGSQL.<port>`.
        case unixSocket(path: String)
    }

    public var endpoint: Endpoint
    public var username: String
    public var database: String

    public struct ParseError: Error, Equatable {
        public var reason: String
    }

    public static func parse(_ text: String) -> Result<PostgresURL, ParseError> {
        func fail(_ reason: String) -> Result<PostgresURL, ParseError> { .failure(ParseError(reason: reason)) }
        guard let schemeEnd = text.range(of: "://"), ["postgres", "postgresql"].contains(text[..<schemeEnd.lowerBound]) else {
            return fail("must start with postgres:// (postgres://ROLE@HOST:PORT/DATABASE)")
        }
        var rest = text[schemeEnd.upperBound...]
        var query: [(String, String)] = []
        if let mark = rest.firstIndex(of: "?") {
            for pair in rest[rest.index(after: mark)...].split(separator: "&") {
                let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                query.append((String(parts[0]), parts.count > 1 ? percentDecoded(parts[1]) : ""))
            }
            rest = rest[..<mark]
        }
        guard let at = rest.lastIndex(of: "@") else { return fail("names no role: write postgres://ROLE@HOST/DATABASE") }
        let userInfo = rest[..<at]
        if userInfo.contains(":") { return fail("holds a password; put the password in fleet.passwordFile (mode 0600) instead") }
        let username = percentDecoded(userInfo)
        guard !username.isEmpty else { return fail("names no role: write postgres://ROLE@HOST/DATABASE") }
        rest = rest[rest.index(after: at)...]
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let hostPort = rest[..<slash]
        let database = slash == rest.endIndex ? username : percentDecoded(rest[rest.index(after: slash)...])
        guard !database.isEmpty, !database.contains("/") else { return fail("names no database: write postgres://ROLE@HOST/DATABASE") }

        var host = String(hostPort)
        var port = 5432
        if let colon = hostPort.lastIndex(of: ":"), !hostPort.hasSuffix("]") {
            guard let number = Int(hostPort[hostPort.index(after: colon)...]), (1...65535).contains(number) else {
                return fail("has an invalid port")
            }
            port = number
            host = String(hostPort[..<colon])
        }
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        var socketFolder: String?
        for (key, value) in query {
            switch key {
            case "host" where value.hasPrefix("/"): socketFolder = value
            case "host": host = value
            case "port":
                guard let number = Int(value), (1...65535).contains(number) else { return fail("has an invalid port") }
                port = number
            case "sslmode", "sslrootcert", "sslcert", "sslkey":
                return fail("sets \(key); TLS is configured with fleet.tls (caFile), and is on whenever fleet.tls is present")
            case "password":
                return fail("holds a password; put the password in fleet.passwordFile (mode 0600) instead")
            default:
                return fail("has the parameter \"\(key)\", which tokenproxy does not know (host and port are accepted)")
            }
        }
        if host.hasPrefix("/") { socketFolder = host }
        if let socketFolder {
            return .success(PostgresURL(endpoint: .unixSocket(path: "\(socketFolder)/.s.PGSQL.\(port)"), username: username, database: database))
        }
        guard !host.isEmpty else { return fail("names no host: write postgres://ROLE@HOST/DATABASE, or ?host=/socket/folder for a unix socket") }
        return .success(PostgresURL(endpoint: .tcp(host: host, port: port), username: username, database: database))
    }

    /// `text` with the password of its user part, if any, replaced by `…` (for messages).
    public static func redacted(_ text: String) -> String {
        var shown = text
        if let query = shown.firstIndex(of: "?") { shown = String(shown[..<query]) + "?…" }
        guard let schemeEnd = shown.range(of: "://"), let at = shown[schemeEnd.upperBound...].lastIndex(of: "@"),
            let colon = shown[schemeEnd.upperBound..<at].firstIndex(of: ":")
        else { return shown }
        return String(shown[..<shown.index(after: colon)]) + "…" + String(shown[at...])
    }

    /// The URL without anything secret (there is nothing secret in it), for messages.
    public var description: String {
        switch endpoint {
        case .tcp(let host, let port):
            let shown = host.contains(":") ? "[\(host)]" : host
            return "postgres://\(username)@\(shown):\(port)/\(database)"
        case .unixSocket(let path):
            return "postgres://\(username)@/\(database) (socket \(path))"
        }
    }

    private static func percentDecoded(_ text: Substring) -> String {
        String(text).removingPercentEncoding ?? String(text)
    }
}
