import Foundation
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// `tokenproxy login --device` (RFC 8628, SPEC §1): the polling rules as a table, and the whole
/// flow with real processes against the stand-in issuer.
@Suite("Device login", .serialized)
struct DeviceLoginTests {
    static let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    @Test func pollingFollowsRFC8628() {
        var polling = DevicePolling(interval: .seconds(2), expiresAt: Self.t0 + 60)
        #expect(polling.start() == .poll(after: .seconds(2)))
        let rows: [(DevicePolling.Answer, Double, DevicePolling.Action)] = [
            (.authorizationPending, 2, .poll(after: .seconds(2))),
            (.unanswered("connection refused"), 4, .poll(after: .seconds(2))),
            (.slowDown, 6, .poll(after: .seconds(7))),
            (.authorizationPending, 13, .poll(after: .seconds(7))),
            (.slowDown, 20, .poll(after: .seconds(12))),
            (.authorizationPending, 50, .fail(.refused("the code expired before the sign-in was completed; run `tokenproxy login --device` again"))),
        ]
        for (answer, at, expected) in rows {
            #expect(polling.next(after: answer, now: Self.t0 + at) == expected, "\(answer) at +\(at) s")
        }
        let tokens = TokenSet(accessToken: "at", refreshToken: "rt")
        for (answer, expected) in [
            (DevicePolling.Answer.granted(tokens), DevicePolling.Action.finished(tokens)),
            (.accessDenied, .fail(.refused("the sign-in was declined (access_denied)"))),
            (.expiredToken, .fail(.refused("the code expired before the sign-in was completed (expired_token); run `tokenproxy login --device` again"))),
            (.refused("invalid_client"), .fail(.refused("invalid_client"))),
        ] {
            var fresh = DevicePolling(interval: .seconds(5), expiresAt: Self.t0 + 600)
            #expect(fresh.next(after: answer, now: Self.t0) == expected)
        }
    }

    static func waitFor(_ what: String, timeout: Duration = .seconds(20), _ condition: () -> Bool) async throws {
        let started = ContinuousClock.now
        while !condition() {
            guard started.duration(to: .now) < timeout else { throw PostgresServer.Failure("timed out waiting for \(what)") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    static func userCode(in output: String) -> String? {
        guard let range = output.range(of: "enter the code ") else { return nil }
        let code = output[range.upperBound...].prefix { $0 != "\n" }
        return code.count == 9 ? String(code) : nil
    }

    @Test func aDeviceLoginReachesARunningProxyWithinASecond() async throws {
        let directory = try TemporaryDirectory()
        var behavior = MockTokenIssuer.Behavior()
        behavior.deviceInterval = 0.2
        behavior.devicePollScript = ["authorization_pending", "authorization_pending", "slow_down"]
        let issuer = try await MockTokenIssuer.start(behavior: behavior)
        let api = try await MockAPI.start(issuer: issuer, flaky401Percent: 0)
        var fixture = ConfigFixture(endpoint: issuer.url)
        fixture.upstream = api.baseURL
        fixture.admin = #"{ "listen": "127.0.0.1:0" }"#
        fixture.extra = ["deviceEndpoint": "\"\(issuer.deviceAuthorizationURL)\""]
        let config = try fixture.write(to: directory)

        let proxy = TokenProxyProcess(["run", "--config", config])
        try proxy.start()
        defer { proxy.signal(SIGKILL) }
        let port = try #require(await proxy.listeningPort())
        let admin = try #require(await proxy.listeningPort("adminPort"))
        let before = try await RawHTTPClient(port: admin).exchange("GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        #expect(before.hasPrefix("HTTP/1.1 503") && before.contains("tokenproxy login"), "no refresh token yet: \(before)")

        let login = TokenProxyProcess(["login", "--device", "--config", config])
        try login.start()
        defer { login.signal(SIGKILL) }
        try await Self.waitFor("the user code") { Self.userCode(in: login.stdoutSoFar) != nil }
        let code = try #require(Self.userCode(in: login.stdoutSoFar))
        #expect(login.stdoutSoFar.contains("open \(issuer.deviceAuthorizationURL.replacingOccurrences(of: "/oauth/device", with: "/device"))"), "\(login.stdoutSoFar)")
        try await Self.waitFor("two pending answers and a slow_down") { issuer.devicePolls(userCode: code).count >= 3 }
        issuer.approveDevice(userCode: code)
        let outcome = await login.wait(timeout: .seconds(30))
        let approved = ContinuousClock.now
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout.contains("signed in; refresh token stored in \(directory.file("token.json"))"))

        let polls = issuer.devicePolls(userCode: code).map(\.timeIntervalSince1970)
        let gaps = zip(polls.dropFirst(), polls).map { $0 - $1 }
        #expect(polls.count == 4, "pending, pending, slow_down, granted: \(gaps)")
        #expect(gaps.prefix(2).allSatisfy { $0 >= 0.18 && $0 < 1.5 }, "the issuer's interval: \(gaps)")
        #expect(gaps.last.map { $0 >= 5.18 } == true, "slow_down added 5 s: \(gaps)")

        let stored = try #require(try TokenStore(path: directory.file("token.json")).read().tokens)
        #expect(stored.refreshToken?.hasPrefix("rt-device-") == true)
        #expect(directory.mode(of: "token.json") == 0o600)

        // The running proxy leaves reauthentication_required without a restart.
        var served = ""
        while approved.duration(to: .now) < .seconds(3) {
            served = try await RawHTTPClient(port: port).exchange("GET /api/data HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            if served.hasPrefix("HTTP/1.1 200") { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        let servedAfter = approved.duration(to: .now)
        #expect(served.hasPrefix("HTTP/1.1 200"), "\(served)")
        #expect(servedAfter < .seconds(1), "served \(servedAfter) after the login")
        await api.shutdown()
        await issuer.shutdown()
    }

    @Test(arguments: ["deny", "expire"])
    func aDeclinedOrExpiredCodeExitsThree(ending: String) async throws {
        let directory = try TemporaryDirectory()
        var behavior = MockTokenIssuer.Behavior()
        behavior.deviceInterval = 0.1
        behavior.deviceCodeLifetime = ending == "expire" ? 1 : 600
        let issuer = try await MockTokenIssuer.start(behavior: behavior)
        var fixture = ConfigFixture(endpoint: issuer.url)
        fixture.extra = ["deviceEndpoint": "\"\(issuer.deviceAuthorizationURL)\""]
        let config = try fixture.write(to: directory)
        let login = TokenProxyProcess(["login", "--device", "--config", config])
        try login.start()
        try await Self.waitFor("the user code") { Self.userCode(in: login.stdoutSoFar) != nil }
        if ending == "deny" { issuer.denyDevice(userCode: try #require(Self.userCode(in: login.stdoutSoFar))) }
        let outcome = await login.wait(timeout: .seconds(30))
        #expect(outcome.status == 3, "\(outcome.stderr)")
        #expect(outcome.stderr.contains(ending == "deny" ? "declined (access_denied)" : "expired"), "\(outcome.stderr)")
        #expect(try TokenStore(path: directory.file("token.json")).read() == .empty)
        await issuer.shutdown()
    }

    @Test func withoutADeviceEndpointTheLoginSaysWhatToSet() async throws {
        let directory = try TemporaryDirectory()
        let config = try ConfigFixture(endpoint: "http://127.0.0.1:9/token").write(to: directory)
        let outcome = try await TokenProxyProcess.run(["login", "--device", "--config", config])
        #expect(outcome.status == 2)
        #expect(outcome.stderr.contains("token.deviceEndpoint"), "\(outcome.stderr)")
    }

    // MARK: Logout

    @Test func logoutRevokesTheRefreshTokenAndEmptiesTheStore() async throws {
        let directory = try TemporaryDirectory()
        let issuer = try await MockTokenIssuer.start()
        var fixture = ConfigFixture(endpoint: issuer.url)
        fixture.extra = ["revocationEndpoint": "\"\(issuer.revocationURL)\""]
        let config = try fixture.write(to: directory)
        issuer.grantRefreshToken("rt-to-revoke")
        try TokenStore(path: directory.file("token.json")).write(TokenSet(refreshToken: "rt-to-revoke"))
        let outcome = try await TokenProxyProcess.run(["logout", "--config", config])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout.contains("revoked at the issuer and removed"))
        #expect(issuer.revoked == ["rt-to-revoke"])
        #expect(try TokenStore(path: directory.file("token.json")).read().tokens?.refreshToken == nil)
        #expect(try await TokenProxyProcess.run(["token", "--config", config]).status == 3)
        await issuer.shutdown()
    }

    @Test func aFailedRevocationStillEmptiesTheStoreAndSaysSo() async throws {
        let directory = try TemporaryDirectory()
        let revocation = "http://127.0.0.1:\(try LoopbackPort.unused())/revoke"
        var fixture = ConfigFixture(endpoint: "http://127.0.0.1:9/token")
        fixture.extra = ["revocationEndpoint": "\"\(revocation)\""]
        let config = try fixture.write(to: directory)
        try TokenStore(path: directory.file("token.json")).write(TokenSet(refreshToken: "rt-kept-alive"))
        let outcome = try await TokenProxyProcess.run(["logout", "--config", config])
        #expect(outcome.status == 1)
        #expect(outcome.stderr.contains(revocation) && outcome.stderr.contains("not revoked") && outcome.stderr.contains("removed"), "\(outcome.stderr)")
        #expect(!outcome.stderr.contains("rt-kept-alive"))
        #expect(try TokenStore(path: directory.file("token.json")).read().tokens?.refreshToken == nil)
    }
}
