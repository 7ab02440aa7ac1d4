import Foundation
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// Issuer discovery (SPEC §2.1): OpenID Connect, then RFC 8414; explicit endpoints win.
@Suite("Issuer discovery", .serialized)
struct DiscoveryTests {
    @Test(arguments: [
        ("https://login.example.com", ["https://login.example.com/.well-known/openid-configuration", "https://login.example.com/.well-known/oauth-authorization-server"]),
        ("https://login.example.com/realms/acme", [
            "https://login.example.com/realms/acme/.well-known/openid-configuration",
            "https://login.example.com/.well-known/oauth-authorization-server/realms/acme",
        ]),
    ])
    func metadataDocuments(issuer: String, urls: [String]) {
        #expect(IssuerDiscovery.documentURLs(issuer: issuer) == urls)
    }

    @Test func documentsAreMergedAndCheckedAgainstTheIssuer() throws {
        let issuer = "https://login.example.com"
        let openID: [String: JSONValue] = ["issuer": .string(issuer), "token_endpoint": .string("https://login.example.com/token")]
        let oauth: [String: JSONValue] = [
            "issuer": .string(issuer), "token_endpoint": .string("https://elsewhere.example.com/token"),
            "revocation_endpoint": .string("https://login.example.com/revoke"), "device_authorization_endpoint": .string("http://login.example.com/device"),
        ]
        let merged = IssuerDiscovery.merge([openID, oauth], issuer: issuer)
        #expect(merged == .success(.init(tokenEndpoint: "https://login.example.com/token", revocationEndpoint: "https://login.example.com/revoke")),
                "the first document wins, the second fills in, plain http to another host is ignored")
        let hijacked: [String: JSONValue] = ["issuer": .string("https://evil.example.com"), "token_endpoint": .string("https://evil.example.com/token")]
        guard case .failure(let problem) = IssuerDiscovery.merge([hijacked], issuer: issuer) else {
            Issue.record("a document naming another issuer was accepted")
            return
        }
        #expect(problem.reason.contains("another issuer"))

        var configured = try ConfigFixture(endpoint: "http://127.0.0.1:9/token").configuration(in: TemporaryDirectory()).token
        configured.issuer = issuer
        configured.endpoint = ""
        configured.revocationEndpoint = "https://mine.example.com/revoke"
        let filled = configured.filling(.init(tokenEndpoint: "https://login.example.com/token", revocationEndpoint: "https://login.example.com/revoke"))
        #expect(filled.endpoint == "https://login.example.com/token")
        #expect(filled.revocationEndpoint == "https://mine.example.com/revoke", "explicit endpoints win")
    }

    @Test func onlyTheIssuerIsConfiguredAndEveryEndpointIsFound() async throws {
        let directory = try TemporaryDirectory()
        var behavior = MockTokenIssuer.Behavior()
        behavior.deviceInterval = 0.1
        behavior.openIDOmits = ["revocation_endpoint"]  // found in the RFC 8414 document instead
        let issuer = try await MockTokenIssuer.start(behavior: behavior)
        var fixture = ConfigFixture(endpoint: "")
        fixture.extra = ["issuer": "\"\(issuer.issuerURL)\""]
        fixture.minRefreshInterval = "0s"
        let config = try fixture.write(to: directory)
        #expect(try await TokenProxyProcess.run(["check-config", "--config", config]).status == 0)

        let login = TokenProxyProcess(["login", "--device", "--config", config])
        try login.start()
        try await DeviceLoginTests.waitFor("the user code") { DeviceLoginTests.userCode(in: login.stdoutSoFar) != nil }
        issuer.approveDevice(userCode: try #require(DeviceLoginTests.userCode(in: login.stdoutSoFar)))
        let loggedIn = await login.wait()
        #expect(loggedIn.status == 0, "\(loggedIn.stderr)")
        #expect(loggedIn.stderr.contains("issuer discovered"))

        let refresh = try await TokenProxyProcess.run(["refresh", "--config", config])
        #expect(refresh.status == 0, "\(refresh.stderr)")
        let stored = try #require(try TokenStore(path: directory.file("token.json")).read().tokens)
        let logout = try await TokenProxyProcess.run(["logout", "--config", config])
        #expect(logout.status == 0, "\(logout.stderr)")
        #expect(issuer.revoked == [stored.refreshToken], "the revocation endpoint came from the RFC 8414 document")
        await issuer.shutdown()
    }

    @Test func anIssuerDownAtStartupIsACleanErrorAndIsTriedAgain() async throws {
        let directory = try TemporaryDirectory()
        let port = try LoopbackPort.unused()
        var fixture = ConfigFixture(endpoint: "")
        fixture.extra = ["issuer": "\"http://127.0.0.1:\(port)\""]
        fixture.admin = #"{ "listen": "127.0.0.1:0" }"#
        let config = try fixture.write(to: directory)
        try TokenStore(path: directory.file("token.json")).write(TokenSet(refreshToken: "rt-before-discovery"))

        let command = try await TokenProxyProcess.run(["token", "--print", "--config", config])
        #expect(command.status == 1)
        #expect(command.stderr.contains("the issuer http://127.0.0.1:\(port) could not be discovered") && command.stderr.contains("connection refused"), "\(command.stderr)")

        let proxy = TokenProxyProcess(["run", "--config", config])
        try proxy.start()
        defer { proxy.signal(SIGKILL) }
        let admin = try #require(await proxy.listeningPort("adminPort"))
        let ready = { try await RawHTTPClient(port: admin).exchange("GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n") }
        let down = try await ready()
        #expect(down.hasPrefix("HTTP/1.1 503") && down.contains("could not be discovered"), "\(down)")

        let issuer = try await MockTokenIssuer.start(port: port)
        issuer.grantRefreshToken("rt-before-discovery")
        let started = ContinuousClock.now
        var answer = down
        while !answer.hasPrefix("HTTP/1.1 200"), started.duration(to: .now) < .seconds(15) {
            try await Task.sleep(for: .milliseconds(200))
            answer = try await ready()
        }
        #expect(answer.hasPrefix("HTTP/1.1 200"), "the proxy tried again and got a token: \(answer)")
        #expect(issuer.metadataRequests >= 1 && issuer.callCount == 1)
        await issuer.shutdown()
    }
}
