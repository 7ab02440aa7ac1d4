import Foundation
import NIOHTTP1
import Testing

@testable import TokenProxy

/// The admin API's rules (SPEC §7) as a table: routes, methods, and who may call them.
@Suite("Admin routes")
struct AdminRoutesTests {
    struct Row: Sendable, CustomStringConvertible {
        var description: String
        var method: HTTPMethod
        var path: String
        var headers: [(String, String)] = [("Host", "127.0.0.1:8788")]
        var body = ""
        var withTokenFile = false
        var status: UInt
    }

    static let json = [("Host", "localhost:8788"), ("Content-Type", "application/json")]

    static let rows: [Row] = [
        Row(description: "health", method: .GET, path: "/healthz", status: 200),
        Row(description: "health, HEAD", method: .HEAD, path: "/healthz", status: 200),
        Row(description: "metrics", method: .GET, path: "/metrics", status: 200),
        Row(description: "an unknown path", method: .GET, path: "/nope", status: 404),
        Row(description: "a known path, wrong method", method: .DELETE, path: "/faults", status: 405),
        Row(description: "faults as JSON", method: .PUT, path: "/faults", headers: json, body: #"{"upstream401Percent": 10}"#, status: 200),
        Row(description: "faults as a form (a browser's simple request)", method: .PUT, path: "/faults", headers: [("Host", "localhost"), ("Content-Type", "application/x-www-form-urlencoded")], body: "upstream401Percent=100", status: 415),
        Row(description: "faults out of range", method: .PUT, path: "/faults", headers: json, body: #"{"upstream401Percent": 150}"#, status: 400),
        Row(description: "a rebinding Host", method: .GET, path: "/status", headers: [("Host", "evil.example:8788")], status: 403),
        Row(description: "no Host", method: .GET, path: "/healthz", headers: [], status: 403),
        Row(description: "a page's cross-site POST", method: .POST, path: "/token/expire", headers: [("Host", "127.0.0.1"), ("Origin", "https://evil.example"), ("Sec-Fetch-Site", "cross-site")], status: 403),
        Row(description: "the status page's own POST (its origin, same-origin)", method: .PUT, path: "/faults", headers: json + [("Origin", "http://localhost:8788"), ("Sec-Fetch-Site", "same-origin")], body: "{}", status: 200),
        Row(description: "another port's page (another origin)", method: .PUT, path: "/faults", headers: json + [("Origin", "http://localhost:9999"), ("Sec-Fetch-Site", "same-site")], body: "{}", status: 403),
        Row(description: "another origin claiming same-origin", method: .PUT, path: "/faults", headers: json + [("Origin", "http://localhost:9999"), ("Sec-Fetch-Site", "same-origin")], body: "{}", status: 403),
        Row(description: "its own origin over https (not the admin's)", method: .PUT, path: "/faults", headers: json + [("Origin", "https://localhost:8788")], body: "{}", status: 403),
        Row(description: "its own origin but a cross-site fetch", method: .PUT, path: "/faults", headers: json + [("Origin", "http://localhost:8788"), ("Sec-Fetch-Site", "cross-site")], body: "{}", status: 403),
        Row(description: "a rebinding Host with the matching Origin", method: .PUT, path: "/faults", headers: [("Host", "evil.example:8788"), ("Content-Type", "application/json"), ("Origin", "http://evil.example:8788"), ("Sec-Fetch-Site", "same-origin")], body: "{}", status: 403),
        Row(description: "a change without the admin token", method: .PUT, path: "/faults", headers: json, body: "{}", withTokenFile: true, status: 401),
        Row(description: "a change with the wrong admin token", method: .PUT, path: "/faults", headers: json + [("Authorization", "Bearer wrong")], body: "{}", withTokenFile: true, status: 401),
        Row(description: "a change with the admin token", method: .PUT, path: "/faults", headers: json + [("Authorization", "Bearer s3cret")], body: "{}", withTokenFile: true, status: 200),
        Row(description: "reading needs no admin token", method: .GET, path: "/metrics", withTokenFile: true, status: 200),
    ]

    @Test("what the admin API answers", arguments: rows)
    func answer(row: Row) async throws {
        let harness = try await BrokerHarness()
        let tokenFile = harness.directory.path + "/admin-token"
        // Written as operators do (`echo s3cret > file`): the trailing newline is not part of it.
        try "s3cret\n".write(toFile: tokenFile, atomically: true, encoding: .utf8)
        let upstream = harness.configuration.upstream.url
        let routes = AdminRoutes(
            broker: harness.broker, faults: FaultSettings(enabled: true, upstream401Percent: 0), statistics: ProxyStatistics(),
            upstream: { upstream }, tokenFile: row.withTokenFile ? tokenFile : nil)
        let response = await routes.answer(.init(method: row.method, path: row.path, body: row.body, headers: HTTPHeaders(row.headers)))
        #expect(response.status.code == row.status, "\(response.body)")
        await harness.shutdown()
    }
}
