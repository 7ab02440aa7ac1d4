import Foundation
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// The egress proxy for calls to the issuer (SPEC §2.1): `HTTPS_PROXY`, `NO_PROXY`, `token.proxy`.
@Suite("Egress proxy for token calls", .serialized)
struct EgressProxyTests {
    @Test func noProxyMatchesAsCurlDoes() {
        #expect(EgressProxy.exempts("auth.example.com", "example.com"))
        #expect(EgressProxy.exempts("auth.example.com", ".example.com"))
        #expect(EgressProxy.exempts("auth.example.com", "other.org, auth.example.com:443"))
        #expect(EgressProxy.exempts("anything", "*"))
        #expect(!EgressProxy.exempts("badexample.com", "example.com"))
        #expect(EgressProxy.exempts("::1", "[::1]"))
        #expect(EgressProxy.parse("http://user:p%40ss@proxy.corp:3128/") == EgressProxy(host: "proxy.corp", port: 3128, credentials: ("user", "p@ss")))
        #expect(EgressProxy.parse("socks5://proxy.corp:1080") == nil)
        let environment = ["HTTPS_PROXY": "http://proxy.corp:3128", "NO_PROXY": "internal.corp"]
        #expect(EgressProxy.choose(for: "https://auth.example.com/token", configured: nil, environment: environment)?.host == "proxy.corp")
        #expect(EgressProxy.choose(for: "https://sso.internal.corp/token", configured: nil, environment: environment) == nil)
        #expect(EgressProxy.choose(for: "http://127.0.0.1:8080/token", configured: nil, environment: environment) == nil, "HTTPS_PROXY is for https")
        #expect(EgressProxy.choose(for: "http://127.0.0.1:8080/token", configured: "http://egress:8080", environment: [:])?.host == "egress")
    }

    @Test func tokenCallsGoThroughHTTPSProxyUnlessNoProxyExemptsTheHost() async throws {
        let directory = try TemporaryDirectory()
        let certificates = try await TestCertificates.make(in: directory, name: "issuer")
        let issuer = try await MockTokenIssuer.start(tls: try certificates.serverContext())
        let proxy = try ConnectProxy()
        defer { proxy.stop() }
        var fixture = ConfigFixture(endpoint: issuer.url)
        fixture.grant = "client_credentials"
        fixture.minRefreshInterval = "0s"
        fixture.extra = ["tls": TLSTests.tls(["caFile": certificates.caFile])]
        let config = try fixture.write(to: directory)

        let proxied = try await TokenProxyProcess.run(["refresh", "--config", config], environment: ["HTTPS_PROXY": "http://127.0.0.1:\(proxy.port)"])
        #expect(proxied.status == 0, "\(proxied.stderr)")
        #expect(proxy.connects == ["127.0.0.1:\(issuer.port)"], "the token call went through the CONNECT proxy")

        let exempt = try await TokenProxyProcess.run(["refresh", "--config", config], environment: ["HTTPS_PROXY": "http://127.0.0.1:\(proxy.port)", "NO_PROXY": "localhost,127.0.0.1"])
        #expect(exempt.status == 0, "\(exempt.stderr)")
        #expect(proxy.connects.count == 1, "NO_PROXY exempted the issuer")

        fixture.extra["proxy"] = "\"http://127.0.0.1:\(proxy.port)\""
        let configured = try await TokenProxyProcess.run(["refresh", "--config", try fixture.write(to: directory)])
        #expect(configured.status == 0, "\(configured.stderr)")
        #expect(proxy.connects.count == 2, "token.proxy, without HTTPS_PROXY")
        #expect(issuer.callCount == 3)
        await issuer.shutdown()
    }
}
