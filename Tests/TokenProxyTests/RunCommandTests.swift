import Foundation
import Glibc
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// The `tokenproxy` binary serving, as a deployer runs it.
@Suite("tokenproxy run and demo", .serialized)
struct RunCommandTests {
    @Test func thePlainConfigFormServesAndStopsCleanlyOnSIGTERM() async throws {
        let directory = try TemporaryDirectory()
        let issuer = try await MockTokenIssuer.start()
        let upstream = try await MockHTTPServer.start { request in
            .json(200, "{\"authorization\": \"\(request.header("Authorization")?.prefix(10) ?? "none")\"}")
        }
        var fixture = ConfigFixture(endpoint: issuer.url)
        fixture.grant = "client_credentials"
        fixture.upstream = upstream.baseURL
        let path = try fixture.write(to: directory)

        let process = TokenProxyProcess(["--config", path])
        try process.start()
        let port = try #require(await process.listeningPort(), "not listening: \(process.stderrSoFar)")
        let answer = try await RawHTTPClient(port: port).exchange("GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)\n\(process.stderrSoFar)")
        #expect(answer.contains(#""authorization": "Bearer at-""#))
        process.signal(SIGTERM)
        let outcome = await process.wait(timeout: .seconds(10))
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(!outcome.signaled)
        #expect(outcome.stderr.contains(#""message":"listening""#))
        #expect(!outcome.stderr.contains(ConfigFixture.clientSecret))
        let token = try #require(TokenStore(path: directory.file("token.json")).read().tokens?.accessToken)
        #expect(!outcome.stderr.contains(token), "the access token is never logged")
        await upstream.shutdown()
        await issuer.shutdown()
    }

    @Test func theDemoShowsRequestsRefreshesAndRecoveries() async throws {
        let outcome = try await TokenProxyProcess.run(["demo", "--port", "0", "--duration", "7", "--token-lifetime", "3"], timeout: .seconds(30))
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout.contains("GET /api/hello → 200"))
        #expect(outcome.stdout.contains("token refreshed"))
        #expect(outcome.stdout.contains("done: "))
        #expect(!outcome.stdout.contains("→ 401"), "the client never sees a 401")
    }

    @Test func theDemoCanShowALoginFirst() async throws {
        let outcome = try await TokenProxyProcess.run(["demo", "--login", "--port", "0", "--duration", "4", "--token-lifetime", "3"], timeout: .seconds(30))
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout.contains("tokenproxy login --device: open http://127.0.0.1:") && outcome.stdout.contains("enter the code"))
        #expect(outcome.stdout.contains("signed in: the store holds a refresh token"))
        #expect(outcome.stdout.contains("GET /api/hello → 200") || outcome.stdout.contains("GET /api/flaky → 200"), "\(outcome.stdout)")
        #expect(!outcome.stdout.contains("→ 401"))
    }
}
