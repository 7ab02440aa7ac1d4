import Foundation
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// `tokenproxy login --browser` (RFC 7636 PKCE, RFC 8252 §7.3 loopback redirect); the test is the
/// browser: it follows the printed address, gives consent, and delivers the redirect.
@Suite("Browser login", .serialized)
struct BrowserLoginTests {
    @Test func theChallengeIsRFC7636sS256() {
        // RFC 7636 Appendix B.
        let login = BrowserLogin(codeVerifier: "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", state: "s", redirectURI: "http://127.0.0.1:1/callback")
        #expect(login.codeChallenge == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")
        #expect(login.interpret(path: "/callback", query: ["state": "s", "code": "c"]) == .code("c"))
        #expect(login.interpret(path: "/callback", query: ["state": "other", "code": "c"]) == .ignored("the state does not match this login; it is ignored"))
        #expect(login.interpret(path: "/callback", query: ["code": "c"]) == .ignored("the state does not match this login; it is ignored"))
        #expect(login.interpret(path: "/favicon.ico", query: [:]) == .ignored("no such page"))
        #expect(login.interpret(path: "/callback", query: ["state": "s", "error": "access_denied"]) == .error("the issuer refused the sign-in with access_denied"))
        let fresh = BrowserLogin(redirectPort: 5555)
        #expect(fresh.codeVerifier.count == 43 && fresh.state.count == 43 && fresh.codeVerifier != fresh.state)
    }

    /// Sends `request` to `port` on loopback and returns the whole answer.
    static func send(_ request: String, to port: Int) async throws -> String {
        try await RawHTTPClient(port: port).exchange(request, timeout: .seconds(5))
    }

    static func header(_ name: String, in answer: String) -> String? {
        for line in answer.components(separatedBy: "\r\n") where line.lowercased().hasPrefix(name.lowercased() + ":") {
            return line.dropFirst(name.count + 1).trimmingCharacters(in: .whitespaces)
        }
        return nil
    }

    @Test(arguments: ["approve", "deny"])
    func theBrowserLoginStoresARefreshTokenVerifiedWithPKCE(decision: String) async throws {
        let directory = try TemporaryDirectory()
        let issuer = try await MockTokenIssuer.start()
        var fixture = ConfigFixture(endpoint: "")
        fixture.extra = ["issuer": "\"\(issuer.issuerURL)\""]  // the authorization endpoint is discovered
        let config = try fixture.write(to: directory)

        let login = TokenProxyProcess(["login", "--browser", "--timeout", "30", "--config", config])
        try login.start()
        defer { login.signal(SIGKILL) }
        try await DeviceLoginTests.waitFor("the address to open") { login.stdoutSoFar.contains("/oauth/authorize?") }
        let address = try #require(login.stdoutSoFar.components(separatedBy: "\n").first { $0.hasPrefix("http://") })
        #expect(address.hasPrefix(issuer.authorizationURL + "?"))
        let query = BrowserLogin.query(of: String(address.drop { $0 != "?" })).fields
        #expect(query["code_challenge_method"] == "S256" && query["response_type"] == "code" && query["client_id"] == "test-client")
        let redirect = try #require(query["redirect_uri"])
        let loopbackPort = try #require(Int(redirect.dropFirst("http://127.0.0.1:".count).prefix { $0 != "/" }))

        // A redirect with another state (a forged one, or another login's) is refused and ignored.
        let forged = try await Self.send("GET /callback?code=forged&state=not-ours HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", to: loopbackPort)
        #expect(forged.hasPrefix("HTTP/1.1 400"), "\(forged)")

        // The browser: the consent page, the consent, the redirect.
        let target = String(address.dropFirst("http://127.0.0.1:\(issuer.port)".count))
        let consent = try await Self.send("GET \(target) HTTP/1.1\r\nHost: 127.0.0.1:\(issuer.port)\r\nConnection: close\r\n\r\n", to: issuer.port)
        let request = try #require(Self.header("X-Consent-Request", in: consent), "\(consent)")
        let body = "request=\(request)&decision=\(decision)"
        let answer = try await Self.send(
            "POST /oauth/authorize HTTP/1.1\r\nHost: 127.0.0.1:\(issuer.port)\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)",
            to: issuer.port)
        let location = try #require(Self.header("Location", in: answer), "\(answer)")
        #expect(location.hasPrefix(redirect))
        let page = try await Self.send("GET \(location.dropFirst("http://127.0.0.1:\(loopbackPort)".count)) HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", to: loopbackPort)
        #expect(page.hasPrefix("HTTP/1.1 200"), "\(page)")

        let outcome = await login.wait(timeout: .seconds(30))
        if decision == "approve" {
            #expect(page.contains("Signed in"))
            #expect(outcome.status == 0, "\(outcome.stderr)")
            #expect(issuer.pkceVerified == 1, "the issuer checked code_verifier against the S256 challenge")
            let stored = try #require(try TokenStore(path: directory.file("token.json")).read().tokens)
            #expect(stored.refreshToken?.hasPrefix("rt-browser-") == true && stored.accessToken != nil)
            #expect(directory.mode(of: "token.json") == 0o600)
        } else {
            #expect(outcome.status == 3, "\(outcome.stderr)")
            #expect(outcome.stderr.contains("access_denied"))
            #expect(issuer.callCount == 0)
        }
        await issuer.shutdown()
    }

    @Test func noSignInWithinTheTimeoutExitsOne() async throws {
        let directory = try TemporaryDirectory()
        let issuer = try await MockTokenIssuer.start()
        var fixture = ConfigFixture(endpoint: issuer.url)
        fixture.extra = ["authorizationEndpoint": "\"\(issuer.authorizationURL)\""]
        let outcome = try await TokenProxyProcess.run(["login", "--browser", "--timeout", "1", "--config", try fixture.write(to: directory)])
        #expect(outcome.status == 1)
        #expect(outcome.stderr.contains("within 1s"), "\(outcome.stderr)")
        await issuer.shutdown()
    }
}
