import Foundation
import NIOHTTP1
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// The admin listener (SPEC §7).
@Suite("Admin API")
struct AdminTests {
    @Test func healthStatusAndMetrics() async throws {
        let harness = try await ProxyHarness()
        let admin = try #require(try await harness.startAdmin().port)
        _ = try await harness.send(.GET, "/x")
        _ = try await harness.send(.GET, "/x", headers: [("X-TokenProxy-Fault", "503")])

        #expect(try await harness.admin(.GET, "/healthz", port: admin).status == 200)
        #expect(try await harness.admin(.GET, "/readyz", port: admin).status == 200)
        #expect(try await harness.admin(.GET, "/nope", port: admin).status == 404)
        #expect(try await harness.admin(.DELETE, "/status", port: admin).status == 405)

        let status = try await harness.admin(.GET, "/status", port: admin)
        #expect(status.status == 200)
        guard case .object(let fields) = try JSONValue.parse(Data(status.body.utf8)), case .object(let token)? = fields["token"],
            case .object(let counters)? = fields["counters"]
        else {
            Issue.record("not the expected JSON: \(status.body)")
            return
        }
        #expect(token["refreshTokenHeld"] == .bool(true))
        #expect(token["expiresAt"] != nil)
        if case .number(let seconds)? = token["expiresIn"] { #expect(seconds > 10 && seconds <= 20) } else { Issue.record("no expiresIn") }
        #expect(counters["requests"] == .number(2))
        #expect(fields["faults"] == .object(["enabled": .bool(false), "upstream401Percent": .number(0)]))

        let metrics = try await harness.admin(.GET, "/metrics", port: admin)
        #expect(metrics.headers.first(name: "Content-Type")?.hasPrefix("text/plain; version=0.0.4") == true)
        for name in [
            #"tokenproxy_requests_total{route="default"} 2"#, #"tokenproxy_token_refreshes_total{identity="default",result="success"} 1"#, #"tokenproxy_retries_total{reason="upstream_503"} 0"#,
            "tokenproxy_faults_injected_total 0", "tokenproxy_request_duration_seconds_bucket", "tokenproxy_token_expires_in_seconds",
        ] {
            #expect(metrics.body.contains(name), "missing \(name)")
        }
        for secret in harness.secrets {
            #expect(!status.body.contains(secret) && !metrics.body.contains(secret), "a secret in /status or /metrics")
        }
        await harness.shutdown()
    }

    @Test func adminErrorsCarryTheirCodeInTheBodyAndInTheHeader() async throws {
        try await withProxyHarness { harness in
            let admin = try #require(try await harness.startAdmin().port)
            let cases: [(HTTPMethod, String, [(String, String)], String?, Int, String)] = [
                (.GET, "/nope", [], nil, 404, "not_found"),
                (.GET, "/status", [("Origin", "https://evil.example")], nil, 403, "forbidden_request"),
                (.POST, "/token/expire", [("Content-Type", "text/plain")], "x", 415, "unsupported_media_type"),
            ]
            for (method, path, headers, body, status, code) in cases {
                let response = try await harness.admin(method, path, port: admin, body: body, headers: headers)
                #expect(response.status == status, "\(method) \(path)")
                #expect(response.headers.first(name: "X-TokenProxy-Error") == code, "\(method) \(path): \(response.headers)")
                #expect(response.body.contains("\"error\":\"\(code)\""), "\(response.body)")
            }
        }
    }

    @Test func readinessFollowsThePermanentFailureAndItsCure() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = TokenSet(refreshToken: "rt-revoked")
        options.grantInitialRefreshToken = false
        let harness = try await ProxyHarness(options)
        let admin = try #require(try await harness.startAdmin().port)
        let refused = try await harness.admin(.GET, "/readyz", port: admin)
        #expect(refused.status == 503)
        #expect(refused.body.contains("invalid_grant"))
        #expect(refused.body.contains(#""ready":false"#))

        harness.issuer.grantRefreshToken("rt-after-login")
        try TokenStore(path: harness.directory.file("token.json")).write(TokenSet(refreshToken: "rt-after-login"))
        #expect(try await harness.admin(.GET, "/readyz", port: admin).status == 200)
        await harness.shutdown()
    }

    @Test func forcedRefreshAndExpiry() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-initial")
        let harness = try await ProxyHarness(options)
        let admin = try #require(try await harness.startAdmin().port)
        let refreshed = try await harness.admin(.POST, "/token/refresh", port: admin)
        #expect(refreshed.status == 200)
        #expect(harness.issuer.callCount == 1)

        let expired = try await harness.admin(.POST, "/token/expire", port: admin)
        #expect(expired.status == 200)
        let response = try await harness.send(.GET, "/after-expiry")
        #expect(response.status == 200, "nothing broke")
        #expect(harness.issuer.callCount == 2, "the next request refreshed")
        #expect(try await harness.admin(.GET, "/token/refresh", port: admin).status == 405)
        await harness.shutdown()
    }

    @Test func faultSettingsChangeAtRunTime() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        let harness = try await ProxyHarness(options)
        let admin = try #require(try await harness.startAdmin().port)
        let enabled = try await harness.admin(.PUT, "/faults", port: admin, body: #"{"enabled": true, "upstream401Percent": 100}"#)
        #expect(enabled.status == 200)
        #expect(enabled.body.contains(#""upstream401Percent":100"#))
        for _ in 0..<3 { #expect(try await harness.send(.GET, "/x").status == 200) }
        #expect(harness.statistics.faultsInjected == 3)
        #expect(harness.issuer.callCount >= 1, "the injected 401s were refreshed for real")
        #expect(try await harness.admin(.PUT, "/faults", port: admin, body: #"{"upstream401Percent": 150}"#).status == 400)
        #expect(try await harness.admin(.PUT, "/faults", port: admin, body: "nonsense").status == 400)
        let off = try await harness.admin(.PUT, "/faults", port: admin, body: #"{"enabled": false}"#)
        #expect(off.status == 200)
        #expect(!harness.faults.enabled)
        await harness.shutdown()
    }
}
