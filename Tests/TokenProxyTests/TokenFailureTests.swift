import AsyncHTTPClient
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// What a real identity provider does around a failure (SPEC §3–§5, §7): access tokens deleted
/// at rotation, tokens handed over with `echo >`, refused connections, refused scopes.
@Suite("Failure handling as real identity providers cause it", .serialized)
struct TokenFailureTests {
    /// An upstream that, like a real resource server, accepts only access tokens the issuer
    /// still considers valid; it takes `delay` to answer, so that requests overlap.
    static func resourceServer(_ issuer: MockTokenIssuer, delay: Duration = .milliseconds(20)) -> @Sendable (MockHTTPRequest, Int) async -> MockHTTPResponse {
        { request, _ in
            try? await Task.sleep(for: delay)
            let token = request.header("Authorization").map { String($0.dropFirst("Bearer ".count)) } ?? ""
            guard issuer.isValid(accessToken: token) else {
                return MockHTTPResponse(status: 401, headers: [("WWW-Authenticate", #"Bearer error="invalid_token""#)], body: "token rejected")
            }
            return .json(200, #"{"ok": true}"#)
        }
    }

    /// Requests in flight, by the round in which they started.
    final class Rounds: Sendable {
        private let state = NIOLockedValueBox((round: 0, inFlight: [Int: Int]()))

        func started() -> Int {
            state.withLockedValue {
                $0.inFlight[$0.round, default: 0] += 1
                return $0.round
            }
        }

        func finished(_ round: Int) { state.withLockedValue { $0.inFlight[round, default: 0] -= 1 } }

        /// Starts the next round; returns the number of the one that ended.
        func next() -> Int {
            state.withLockedValue {
                $0.round += 1
                return $0.round - 1
            }
        }

        func inFlight(upTo round: Int) -> Int {
            state.withLockedValue { $0.inFlight.filter { $0.key <= round }.values.reduce(0, +) }
        }
    }

    /// Runs `clients` loops of GETs until `stop` is set; returns every status the clients saw.
    static func clients(_ count: Int, harness: ProxyHarness, stop: NIOLockedValueBox<Bool>, rounds: Rounds = Rounds()) -> Task<[UInt], Never> {
        Task {
            await withTaskGroup(of: [UInt].self) { group in
                for _ in 0..<count {
                    group.addTask {
                        var statuses: [UInt] = []
                        while !stop.withLockedValue({ $0 }) {
                            let round = rounds.started()
                            statuses.append((try? await harness.send(.GET, "/data"))?.status ?? 0)
                            rounds.finished(round)
                        }
                        return statuses
                    }
                }
                return await group.reduce(into: []) { $0 += $1 }
            }
        }
    }

    static func waitUntil(timeout: Duration = .seconds(10), _ condition: () async throws -> Bool) async rethrows -> Bool {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while ContinuousClock.now < deadline {
            if try await condition() { return true }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return false
    }

    @Test func accessTokensDeletedAtRotationNeverReachAClient() async throws {
        var options = ProxyHarness.Options()
        options.behavior.revokePreviousAccessTokens = true
        options.token = { $0.minRefreshInterval = "100ms" }
        let harness = try await ProxyHarness(options) { _, _ in .json(200, "{}") }
        harness.respond(Self.resourceServer(harness.issuer))
        #expect(try await harness.send(.GET, "/warm-up").status == 200)

        let stop = NIOLockedValueBox(false)
        let rounds = Rounds()
        let clients = Self.clients(8, harness: harness, stop: stop, rounds: rounds)
        let rotations = 20
        for rotation in 1...rotations {
            // More than token.minRefreshInterval after the last 401-caused refresh: sooner, the
            // throttle rightly replays with the rejected token instead of refreshing again.
            try await Task.sleep(for: .milliseconds(150))
            // The server ends the session's access token early (as at a rotation elsewhere):
            // every request in flight is refused at once.
            harness.issuer.revokeAccessTokens()
            let rotated = await Self.waitUntil { harness.issuer.callCount == rotation + 1 }
            #expect(rotated, "rotation \(rotation): the proxy refreshed")
            // The next rotation comes once every request that began before this one is answered:
            // one request may see one rotation, as with real rotations minutes apart (a request
            // caught by two would rightly get the second 401: one replay per request).
            let ended = rounds.next()
            let settled = await Self.waitUntil(timeout: .seconds(30)) { rounds.inFlight(upTo: ended) == 0 }
            #expect(settled)
        }
        stop.withLockedValue { $0 = true }
        let statuses = await clients.value
        #expect(statuses.count > 200, "the clients kept sending: \(statuses.count)")
        #expect(statuses.filter { $0 != 200 }.isEmpty, "client-visible failures: \(Dictionary(grouping: statuses.filter { $0 != 200 }, by: { $0 }).mapValues(\.count))")
        #expect(harness.issuer.callCount == rotations + 1, "one endpoint call per rotation (and the first token)")
        #expect(harness.issuer.invalidGrantCount == 0)
        await harness.shutdown()
    }

    @Test func aRefusedReactiveRefreshDropsTheRejectedToken() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-revoked-by-the-server", refreshToken: "rt-revoked")
        options.grantInitialRefreshToken = false
        let harness = try await ProxyHarness(options) { _, _ in .json(200, "{}") }
        harness.respond(Self.resourceServer(harness.issuer))
        let admin = try await harness.startAdmin()
        let port = try #require(admin.port)
        #expect(try await harness.admin(.GET, "/readyz", port: port).status == 200, "the token looks valid by its clock")

        let answer = try await harness.send(.GET, "/data")
        #expect(answer.status == 401)
        #expect(answer.headers.first(name: "X-TokenProxy-Error") == "reauthentication_required")
        #expect(answer.body.contains("invalid_grant") && answer.body.contains("tokenproxy login"), "\(answer.body)")

        let ready = try await harness.admin(.GET, "/readyz", port: port)
        #expect(ready.status == 503)
        #expect(ready.body.contains("invalid_grant"))
        let config = harness.configuration.sourcePath
        let status = try await TokenProxyProcess.run(["token", "--config", config])
        #expect(status.status == 3, "\(status.stdout)\(status.stderr)")
        #expect(status.stdout.contains("access token: none"))
        let print = try await TokenProxyProcess.run(["token", "--config", config, "--print"])
        #expect(print.status == 3)
        #expect(print.stdout.isEmpty, "the revoked token is not printed")
        #expect(harness.issuer.callCount == 1, "the refusal is recorded: nobody asks again")
        await admin.stop()
        await harness.shutdown()
    }

    /// The README's hand-over, written the way a shell redirect writes: the file is truncated
    /// first, and the login script's output arrives a moment later.
    static func echo(_ text: String, into path: String, pause: Duration) async throws {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard descriptor >= 0 else { throw POSIXError(.EIO) }
        defer { close(descriptor) }
        try await Task.sleep(for: pause)
        let bytes = Array(text.utf8)
        // In two writes, so that readers can also see half a document.
        _ = write(descriptor, bytes, bytes.count / 2)
        try await Task.sleep(for: .milliseconds(20))
        _ = bytes.withUnsafeBufferPointer { write(descriptor, $0.baseAddress! + bytes.count / 2, bytes.count - bytes.count / 2) }
    }

    @Test func aHandOverWhileClientsAreRefusedRecoversWithinTwoSeconds() async throws {
        var options = ProxyHarness.Options()
        options.grantInitialRefreshToken = false
        let harness = try await ProxyHarness(options) { _, _ in .json(200, "{}") }
        let store = harness.configuration.token.store
        let stop = NIOLockedValueBox(false)
        let clients = Self.clients(16, harness: harness, stop: stop)
        let tokenFile = harness.directory.file("handed-over")
        var recoveries: [Duration] = []
        for attempt in 1...20 {
            // Refused: the login the store holds is revoked, and the current token is gone.
            harness.issuer.revokeRefreshTokens()
            try await harness.broker.expireCurrentToken()
            let refused = await Self.waitUntil { (try? await harness.send(.GET, "/probe"))?.status == 401 }
            #expect(refused, "attempt \(attempt): clients are answered reauthentication_required")

            let refreshToken = "rt-handed-over-\(attempt)"
            harness.issuer.grantRefreshToken(refreshToken)
            let started = ContinuousClock.now
            if attempt.isMultiple(of: 2) {
                try Data((refreshToken + "\n").utf8).write(to: URL(fileURLWithPath: tokenFile))
                let login = try await TokenProxyProcess.run(["login", "--config", harness.configuration.sourcePath, "--refresh-token-file", "-"], stdin: tokenFile)
                #expect(login.status == 0, "\(login.stderr)")
            } else {
                try await Self.echo(#"{"version": 1, "refresh_token": "\#(refreshToken)"}"# + "\n", into: store, pause: .milliseconds(100))
            }
            let recovered = await Self.waitUntil(timeout: .seconds(5)) { (try? await harness.send(.GET, "/probe"))?.status == 200 }
            #expect(recovered, "attempt \(attempt): recovered")
            recoveries.append(started.duration(to: .now))
            #expect(!harness.directory.names().contains { $0.contains("corrupt") }, "attempt \(attempt): nothing was quarantined")
        }
        stop.withLockedValue { $0 = true }
        _ = await clients.value
        let slowest = try #require(recoveries.max())
        #expect(slowest < .seconds(2), "slowest recovery: \(slowest)")
        let refused = harness.issuer.calls.filter { $0.status != 200 }
        #expect(refused.allSatisfy { $0.form["refresh_token"]?.hasPrefix("rt-handed-over") != true }, "a handed-over refresh token was never refused")
        await harness.shutdown()
    }

    @Test func forcedRefreshesAreCoalescedAndRateLimited() async throws {
        var options = ProxyHarness.Options()
        options.behavior.delay = .milliseconds(200)
        options.token = { $0.minRefreshInterval = "2s" }
        let harness = try await ProxyHarness(options) { _, _ in .json(200, "{}") }
        let admin = try await harness.startAdmin()
        let port = try #require(admin.port)
        #expect(try await harness.send(.GET, "/warm-up").status == 200)
        let before = harness.issuer.callCount
        let answers = try await withThrowingTaskGroup(of: ProxyHarness.Response.self) { group in
            for _ in 0..<20 { group.addTask { try await harness.admin(.POST, "/token/refresh", port: port) } }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(harness.issuer.callCount - before == 1, "20 forced refreshes at once reach the endpoint once")
        // Those that arrived while it ran share it; any that came after it are too soon.
        #expect(answers.allSatisfy { $0.status == 200 || $0.status == 429 }, "\(answers.map(\.status))")
        #expect(answers.filter { $0.status == 200 }.count >= 2, "\(answers.map(\.status))")
        let tooSoon = try await harness.admin(.POST, "/token/refresh", port: port)
        #expect(tooSoon.status == 429)
        let retryAfter = try #require(tooSoon.headers.first(name: "Retry-After").flatMap(Int.init))
        #expect((1...2).contains(retryAfter))
        #expect(harness.issuer.callCount - before == 1)
        await admin.stop()
        await harness.shutdown()
    }

    @Test func storeValuesThatCannotGoIntoAHeaderAreNotSent() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at\r\nX-Injected: yes")
        let harness = try await ProxyHarness(options) { _, _ in .json(200, "{}") }
        #expect(try await harness.send(.GET, "/data").status == 200)
        let sent = try #require(harness.received.first)
        #expect(sent.header("X-Injected") == nil)
        #expect(sent.header("Authorization")?.hasPrefix("Bearer at-") == true)
        #expect(harness.issuer.callCount == 1, "refreshed with the stored refresh token instead")
        #expect(harness.logs.text.contains("HTTP header"), "says what it refused")
        await harness.shutdown()
    }

    @Test func invalidClientWithTheRefreshTokenGrantPointsAtTheSecretNotALogin() async throws {
        var behavior = MockTokenIssuer.Behavior()
        behavior.expectedClient = (id: "test-client", secret: "another-secret")
        let harness = try await BrokerHarness(behavior: behavior)
        try harness.handOverRefreshToken()
        do {
            _ = try await harness.broker.token(for: .usable)
            Issue.record("the wrong secret was accepted")
        } catch {
            #expect(error.description.contains("client secret"), "\(error)")
            #expect(!error.description.contains("log in again"), "\(error)")
        }
        await harness.shutdown()
    }

    @Test func aMissingStoreFolderIsCreatedAndTheFirstTokenFetched() async throws {
        let directory = try TemporaryDirectory()
        let issuer = try await MockTokenIssuer.start()
        var fixture = ConfigFixture(endpoint: issuer.url)
        fixture.grant = "client_credentials"
        fixture.store = "state/tokens/token.json"
        fixture.lockFile = "state/tokens/token.lock"
        let config = try fixture.write(to: directory)
        let outcome = try await TokenProxyProcess.run(["token", "--config", config, "--print"])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(directory.mode(of: "state") == 0o700 && directory.mode(of: "state/tokens") == 0o700)
        #expect(directory.mode(of: "state/tokens/token.json") == 0o600)
        #expect(issuer.callCount == 1)
        await issuer.shutdown()
    }

    @Test("a store or lock that is a symbolic link, or in a folder others can write, is refused", arguments: ["store-link", "lock-link", "open-folder"])
    func unsafeFilesAreRefused(case name: String) async throws {
        let directory = try TemporaryDirectory()
        let issuer = try await MockTokenIssuer.start()
        var fixture = ConfigFixture(endpoint: issuer.url)
        fixture.grant = "client_credentials"
        switch name {
        case "store-link": symlink(directory.file("elsewhere.json"), directory.file("token.json"))
        case "lock-link": symlink(directory.file("elsewhere.lock"), directory.file("token.lock"))
        default:
            mkdir(directory.file("open"), 0o777)
            chmod(directory.file("open"), 0o777)
            fixture.store = "open/token.json"
            fixture.lockFile = "open/token.lock"
        }
        let config = try fixture.write(to: directory)
        for arguments in [["token", "--config", config, "--print"], ["refresh", "--config", config]] {
            let outcome = try await TokenProxyProcess.run(arguments)
            #expect(outcome.status == 2, "\(arguments[0]): \(outcome.stderr)")
            #expect(outcome.stderr.contains(name == "open-folder" ? "chmod go-w" : "symbolic link"), "\(outcome.stderr)")
        }
        #expect(!directory.names().contains { $0.hasPrefix("elsewhere") }, "no target was created")
        #expect(issuer.callCount == 0)
        await issuer.shutdown()
    }

    // MARK: Real processes

    private func get(_ path: String, port: Int) async throws -> String {
        try await RawHTTPClient(port: port).exchange("GET \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", timeout: .seconds(10))
    }

    private func startProxy(_ config: String) async throws -> (TokenProxyProcess, Int) {
        let process = TokenProxyProcess(["run", "--config", config])
        try process.start()
        let port = try #require(await process.listeningPort(), "not listening: \(process.stderrSoFar)")
        return (process, port)
    }

    /// SPEC §7: `/readyz` agrees with what requests get, also when this proxy learned of the
    /// refusal from the shared store: another process (`tokenproxy refresh`, or a second proxy
    /// whose 401-caused refresh was refused) wrote the rejection, and this proxy still held the
    /// access token the upstream now refuses.
    @Test("a refusal learned from the store makes /readyz 503 while requests get 401", arguments: ["cli refresh", "other proxy"])
    func aRefusalLearnedFromTheStoreIsReadyzToo(other: String) async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-revoked-by-the-server", refreshToken: "rt-revoked")
        options.grantInitialRefreshToken = false
        try await withProxyHarness(options) { harness in
            harness.respond(Self.resourceServer(harness.issuer))
            let admin = try await harness.startAdmin()
            let adminPort = try #require(admin.port)
            #expect(try await harness.admin(.GET, "/readyz", port: adminPort).status == 200, "the token looks valid by its clock")
            let config = harness.configuration.sourcePath

            switch other {
            case "cli refresh":
                let refresh = try await TokenProxyProcess.run(["refresh", "--config", config])
                #expect(refresh.status == 3, "\(refresh.stderr)")
            default:
                let (proxy, port) = try await startProxy(config)
                defer { proxy.signal(SIGKILL) }
                #expect(try await get("/data", port: port).hasPrefix("HTTP/1.1 401"))
                #expect(try TokenStore(path: harness.configuration.token.store).read().tokens?.accessToken == nil, "the other proxy dropped the token")
            }
            #expect(harness.issuer.callCount == 1)

            // This proxy learns of the refusal at its next request (the upstream refuses its token).
            for _ in 0..<3 {
                let answer = try await harness.send(.GET, "/data")
                #expect(answer.status == 401)
                #expect(answer.headers.first(name: "X-TokenProxy-Error") == "reauthentication_required")
                let ready = try await harness.admin(.GET, "/readyz", port: adminPort)
                #expect(ready.status == 503, "requests get 401 reauthentication_required: \(ready.body)")
                #expect(ready.body.contains("invalid_grant"), "\(ready.body)")
            }
            let status = try await TokenProxyProcess.run(["token", "--config", config])
            #expect(status.status == 3, "the refused access token is gone from the store: \(status.stdout)")
            #expect(harness.issuer.callCount == 1, "the refusal was read from the store, not asked again")
            await admin.stop()
        }
    }

    @Test func aRefusedConnectionFailsAtOnceAndAWaiterGetsTheEndpointsError() async throws {
        let directory = try TemporaryDirectory()
        let endpoint = "http://127.0.0.1:\(try LoopbackPort.unused())/oauth/token"
        let config = try ConfigFixture(endpoint: endpoint).write(to: directory)
        try TokenStore(path: directory.file("token.json")).write(TokenSet(refreshToken: "rt"))
        // Both processes wait on the lock, then take their turns at the dead endpoint.
        let held = try FileLock.acquire(path: directory.file("token.lock"), timeout: .seconds(1))
        let first = TokenProxyProcess(["refresh", "--config", config])
        let second = TokenProxyProcess(["refresh", "--config", config])
        try first.start()
        try second.start()
        try await Task.sleep(for: .milliseconds(300))
        let released = ContinuousClock.now
        held.release()
        let outcomes = [await first.wait(), await second.wait()]
        let elapsed = released.duration(to: .now)
        for outcome in outcomes {
            #expect(outcome.status == 1, "\(outcome.stderr)")
            #expect(outcome.stderr.contains("could not be reached (connection refused)"), "\(outcome.stderr)")
            #expect(outcome.stderr.contains(endpoint))
            #expect(!outcome.stderr.contains("token.lockFile"), "the lock is not the cause")
        }
        #expect(elapsed < .seconds(1), "both failed within \(elapsed) of the lock's release")
        print("refused endpoint: both processes done \(elapsed) after the lock was released")
    }

    @Test func aRefusedScopeIsNotRetriedUntilAReloadFixesIt() async throws {
        let directory = try TemporaryDirectory()
        var behavior = MockTokenIssuer.Behavior()
        behavior.allowedScopes = ["api.read"]
        let issuer = try await MockTokenIssuer.start(behavior: behavior)
        let upstream = try await MockHTTPServer.start { _ in .json(200, #"{"ok": true}"#) }
        var fixture = ConfigFixture(endpoint: issuer.url)
        fixture.grant = "client_credentials"
        fixture.scope = "api.admin"
        fixture.upstream = upstream.baseURL
        let config = try fixture.write(to: directory)
        let (process, port) = try await startProxy(config)
        for _ in 0..<5 {
            let answer = try await get("/data", port: port)
            #expect(answer.hasPrefix("HTTP/1.1 503"), "\(answer)")
            #expect(answer.contains("X-TokenProxy-Error: token_unavailable"))
            #expect(answer.contains("invalid_scope") && answer.contains("token.scope"), "names the error and the key: \(answer)")
        }
        // That no call follows for as long as the configuration stays is
        // TokenBrokerFakeTests.aConfigurationRefusalIsNotRetriedUntilTheConfigurationChanges.
        #expect(issuer.callCount == 1, "one call, then none until the configuration changes")
        let print = try await TokenProxyProcess.run(["token", "--config", config, "--print"])
        #expect(print.status == 2, "\(print.stderr)")

        fixture.scope = "api.read"
        try fixture.write(to: directory)
        process.signal(SIGHUP)
        let healed = try await Self.waitUntil(timeout: .seconds(10)) { try await get("/data", port: port).hasPrefix("HTTP/1.1 200") }
        #expect(healed, "the corrected scope took effect without a restart")
        #expect(issuer.calls.last?.form["scope"] == "api.read")
        process.signal(SIGTERM)
        let outcome = await process.wait(timeout: .seconds(15))
        #expect(outcome.status == 0)
        await upstream.shutdown()
        await issuer.shutdown()
    }

    @Test("far-away times never stop the process", arguments: ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "3000-01-01T00:00:00Z"])
    func farAwayTimes(storedTime: String) async throws {
        let directory = try TemporaryDirectory()
        var behavior = MockTokenIssuer.Behavior()
        // JWTs whose exp is in the year 3000, without expires_in.
        behavior.issueJWTs = true
        behavior.omitExpiresIn = true
        behavior.lifetime = .seconds(32_503_680_000 - Int64(Date().timeIntervalSince1970))
        behavior.rotateRefreshTokens = false
        let issuer = try await MockTokenIssuer.start(behavior: behavior)
        issuer.grantRefreshToken("rt")
        let upstream = try await MockHTTPServer.start { _ in .json(200, #"{"ok": true}"#) }
        var fixture = ConfigFixture(endpoint: issuer.url)
        fixture.upstream = upstream.baseURL
        let config = try fixture.write(to: directory)
        try directory.write("token.json", #"{"version": 1, "access_token": "at", "refresh_token": "rt", "expires_at": "\#(storedTime)", "obtained_at": "\#(storedTime)"}"#)

        let status = try await TokenProxyProcess.run(["token", "--config", config])
        #expect(!status.signaled, "\(status.stderr)")
        #expect(status.stdout.contains("access token refused") && status.stdout.contains("ten years"), "\(status.stdout)")

        let (process, port) = try await startProxy(config)
        for _ in 0..<3 {
            #expect(try await get("/data", port: port).hasPrefix("HTTP/1.1 200"))
        }
        // The proxy writes the token while its first requests use it.
        let written = await Self.waitUntil { (try? TokenStore(path: directory.file("token.json")).read().tokens?.expiresAt) != nil }
        #expect(written)
        let stored = try #require(try TokenStore(path: directory.file("token.json")).read().tokens)
        let expiresAt = try #require(stored.expiresAt)
        #expect(expiresAt.timeIntervalSinceNow <= TokenSet.longestLifetime + 1, "a year-3000 exp is clamped to ten years")
        let again = try await TokenProxyProcess.run(["token", "--config", config])
        #expect(again.status == 0, "\(again.stdout)\(again.stderr)")
        process.signal(SIGTERM)
        let outcome = await process.wait(timeout: .seconds(15))
        #expect(outcome.status == 0, "the proxy stayed up: \(outcome.stderr.suffix(500))")
        #expect(outcome.stderr.contains("ten years"), "says what it refused")
        await upstream.shutdown()
        await issuer.shutdown()
    }

    @Test func fourProcessesCountOnlyTheirOwnCallsAsRefreshes() async throws {
        let directory = try TemporaryDirectory()
        var behavior = MockTokenIssuer.Behavior()
        behavior.lifetime = .seconds(2)
        let issuer = try await MockTokenIssuer.start(behavior: behavior)
        issuer.grantRefreshToken("rt-initial")
        try TokenStore(path: directory.file("token.json")).write(TokenSet(refreshToken: "rt-initial"))
        let upstream = try await MockHTTPServer.start { _ in .json(200, #"{"ok": true}"#) }
        var fixture = ConfigFixture(endpoint: issuer.url)
        fixture.upstream = upstream.baseURL
        fixture.admin = #"{"listen": "127.0.0.1:0"}"#
        let config = try fixture.write(to: directory)
        var processes: [(TokenProxyProcess, Int, Int)] = []
        for _ in 0..<4 {
            let process = TokenProxyProcess(["run", "--config", config])
            try process.start()
            let port = try #require(await process.listeningPort(), "\(process.stderrSoFar)")
            let admin = try #require(await process.listeningPort("adminPort"))
            processes.append((process, port, admin))
        }
        // Ten rotations of 2 s tokens (renewed 1 s into their life), with traffic on every process.
        let rotated = await Self.waitUntil(timeout: .seconds(30)) {
            for (_, port, _) in processes { _ = try? await get("/data", port: port) }
            return issuer.callCount >= 11
        }
        #expect(rotated)
        // Freeze all four, then read each one's counters in turn, so that no refresh happens
        // between the reads and the endpoint's count.
        for (process, _, _) in processes { process.signal(SIGSTOP) }
        let calls = issuer.callCount
        var successes = 0
        var adoptions = 0
        for (process, _, admin) in processes {
            process.signal(SIGCONT)
            let metrics = try await get("/metrics", port: admin)
            process.signal(SIGSTOP)
            successes += Self.counter(#"tokenproxy_token_refreshes_total{identity="default",result="success"}"#, in: metrics)
            adoptions += Self.counter(#"tokenproxy_token_adoptions_total{identity="default"}"#, in: metrics)
        }
        for (process, _, _) in processes {
            process.signal(SIGCONT)
            process.signal(SIGTERM)
            _ = await process.wait(timeout: .seconds(15))
        }
        #expect(issuer.invalidGrantCount == 0)
        #expect(abs(successes - calls) <= 1, "the processes counted \(successes) refreshes; the endpoint saw \(calls) calls")
        #expect(adoptions > 0, "the others adopted what one process refreshed")
        print("four processes: \(calls) endpoint calls, \(successes) counted as refreshes, \(adoptions) as adoptions")
        await upstream.shutdown()
        await issuer.shutdown()
    }

    static func counter(_ name: String, in metrics: String) -> Int {
        for line in metrics.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Int(Double(line.split(separator: " ").last ?? "") ?? 0)
        }
        return 0
    }
}
