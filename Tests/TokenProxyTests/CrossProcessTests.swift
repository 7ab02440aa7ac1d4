import Foundation
import Logging
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// Several real `tokenproxy` processes sharing one store and lock (SPEC §1, §3).
@Suite("Processes sharing a store", .serialized)
struct CrossProcessTests {
    let directory: TemporaryDirectory

    init() throws {
        directory = try TemporaryDirectory()
    }

    private func start(_ behavior: MockTokenIssuer.Behavior = .init(), fixture change: (inout ConfigFixture) -> Void = { _ in }) async throws -> (MockTokenIssuer, String) {
        let issuer = try await MockTokenIssuer.start(behavior: behavior)
        var fixture = ConfigFixture(endpoint: issuer.url)
        change(&fixture)
        return (issuer, try fixture.write(to: directory))
    }

    private var store: TokenStore { TokenStore(path: directory.file("token.json")) }

    private func stored() throws -> TokenSet? {
        try store.read().tokens
    }

    private func handOver(_ token: String, to issuer: MockTokenIssuer) throws {
        issuer.grantRefreshToken(token)
        try store.write(TokenSet(refreshToken: token))
    }

    /// Every secret the issuer saw or issued, and the client secret.
    private func secrets(_ issuer: MockTokenIssuer) throws -> [String] {
        var values: Set<String> = [ConfigFixture.clientSecret]
        for call in issuer.calls { if let token = call.form["refresh_token"] { values.insert(token) } }
        for name in directory.names() where name.hasPrefix("token.json") {
            if let data = FileManager.default.contents(atPath: directory.file(name)), let (tokens, _) = try? StoreDocument.decode(data, now: Date()) {
                [tokens.accessToken, tokens.refreshToken].compactMap { $0 }.forEach { values.insert($0) }
            }
        }
        return values.sorted()
    }

    private func expectNoSecrets(in text: String, _ secrets: [String], sourceLocation: SourceLocation = #_sourceLocation) {
        for secret in secrets { #expect(!text.contains(secret), "a secret leaked into output", sourceLocation: sourceLocation) }
    }

    @Test func eightProcessesOnAnExpiredStoreCauseOneEndpointCall() async throws {
        var behavior = MockTokenIssuer.Behavior()
        behavior.delay = .milliseconds(300)
        let (issuer, config) = try await start(behavior)
        issuer.grantRefreshToken("rt-initial")
        let past = Date() - 3600
        try store.write(TokenSet(accessToken: "at-expired", refreshToken: "rt-initial", expiresAt: past, obtainedAt: past - 1800))

        let processes = (0..<8).map { _ in TokenProxyProcess(["token", "--config", config, "--print"]) }
        for process in processes { try process.start() }
        var outcomes: [TokenProxyProcess.Outcome] = []
        for process in processes { outcomes.append(await process.wait()) }

        #expect(outcomes.allSatisfy { $0.status == 0 }, "\(outcomes.map(\.stderr))")
        #expect(issuer.callCount == 1)
        let printed = Set(outcomes.map { $0.stdout.trimmingCharacters(in: .whitespacesAndNewlines) })
        #expect(printed.count == 1)
        #expect(printed.first == (try stored()?.accessToken))
        expectNoSecrets(in: outcomes.map(\.stderr).joined(), try secrets(issuer))
        await issuer.shutdown()
    }

    @Test func rotationUnderLoadNeverBurnsARefreshToken() async throws {
        var behavior = MockTokenIssuer.Behavior()
        behavior.lifetime = .seconds(1)
        let (issuer, config) = try await start(behavior)
        try handOver("rt-initial", to: issuer)

        let runFor = Duration.seconds(10)
        let started = ContinuousClock.now
        let failures = try await withThrowingTaskGroup(of: [String].self) { group in
            for _ in 0..<4 {
                group.addTask {
                    var failures: [String] = []
                    while started.duration(to: .now) < runFor {
                        let outcome = try await TokenProxyProcess.run(["token", "--config", config, "--print"])
                        if outcome.status != 0 { failures.append(outcome.stderr) }
                    }
                    return failures
                }
            }
            return try await group.reduce(into: [String]()) { $0 += $1 }
        }
        #expect(failures.isEmpty, "\(failures.prefix(3))")
        #expect(issuer.invalidGrantCount == 0)
        // 1 s tokens are refreshed when less than 0.5 s is left: about one call per half second,
        // and never two calls for the same expiry.
        let times = issuer.calls.map(\.at.timeIntervalSince1970)
        let gaps = zip(times.dropFirst(), times).map { $0 - $1 }
        #expect(times.count >= 8 && times.count <= 23, "\(times.count) calls in 10 s")
        #expect((gaps.min() ?? 1) > 0.4, "two refreshes for one expiry: gaps \(gaps)")
        await issuer.shutdown()
    }

    @Test func aKilledLockHolderDoesNotBlockOthers() async throws {
        var behavior = MockTokenIssuer.Behavior()
        behavior.delay = .seconds(5)
        behavior.rotateRefreshTokens = false
        let (issuer, config) = try await start(behavior) { $0.lockTimeout = "3s" }
        try handOver("rt-initial", to: issuer)

        let holder = TokenProxyProcess(["refresh", "--config", config])
        try holder.start()
        _ = await TokenFailureTests.waitUntil { issuer.receivedCount > 0 }
        #expect(issuer.receivedCount == 1, "the holder is inside its endpoint call, holding the lock")
        holder.signal(SIGKILL)
        let killed = await holder.wait()
        #expect(killed.signaled)

        issuer.update { $0.delay = .zero }
        let started = ContinuousClock.now
        let outcome = try await TokenProxyProcess.run(["token", "--config", config, "--print"])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(started.duration(to: .now) < .seconds(3), "got the lock and a token within lockTimeout")
        #expect(outcome.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == (try stored()?.accessToken))
        await issuer.shutdown()
    }

    @Test func killsAtRandomMomentsNeverTearTheStore() async throws {
        let (issuer, config) = try await start { $0.grant = "client_credentials" }
        var seen: Set<String> = []
        for round in 0..<50 {
            issuer.update { $0.delay = .milliseconds(Int64.random(in: 0...20)) }
            let process = TokenProxyProcess(["refresh", "--config", config])
            try process.start()
            // Every fifth writer finishes, so that the kills also meet a store that holds a
            // token (however slow the machine): replacing one is where a torn write would show.
            if round % 5 != 0 {
                try await Task.sleep(for: .milliseconds(Int64.random(in: 0...120)))
                process.signal(SIGKILL)
            }
            _ = await process.wait()
            let contents = try store.read()
            switch contents {
            case .empty:
                break
            case .tokens(let tokens, _):
                #expect(tokens.accessToken != nil && tokens.expiresAt != nil)
                #expect(directory.mode(of: "token.json") == 0o600)
                seen.insert(tokens.accessToken ?? "")
            case .corrupt(let reason, _):
                Issue.record("round \(round): the store was torn: \(reason)")
            }
        }
        #expect(seen.count >= 5, "enough kills came after a complete write to make the test meaningful: \(seen.count)")
        // The next process cleans up what killed writers left behind.
        let outcome = try await TokenProxyProcess.run(["refresh", "--config", config])
        #expect(outcome.status == 0)
        #expect(!directory.names().contains { $0.contains(".tmp-") })
        await issuer.shutdown()
    }

    @Test func aCorruptStoreIsQuarantinedAndRefreshedFromScratch() async throws {
        let (issuer, config) = try await start { $0.grant = "client_credentials" }
        try directory.write("token.json", "{\"version\": 1, \"access_token\": \"trunc")
        let outcome = try await TokenProxyProcess.run(["token", "--config", config, "--print"])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(issuer.callCount == 1)
        #expect(directory.names().contains { $0.hasPrefix("token.json.corrupt-") })
        #expect(outcome.stderr.contains("moved aside"))
        #expect(try stored()?.accessToken == outcome.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        await issuer.shutdown()
    }

    @Test func aCorruptStoreWithoutARefreshTokenNeedsReLogin() async throws {
        let (issuer, config) = try await start()
        try directory.write("token.json", "garbage")
        let outcome = try await TokenProxyProcess.run(["token", "--config", config, "--print"])
        #expect(outcome.status == 3)
        #expect(outcome.stdout.isEmpty)
        #expect(outcome.stderr.contains(#"{"version": 1, "refresh_token": "…"}"#), "says how to hand over a refresh token: \(outcome.stderr)")
        #expect(outcome.stderr.contains(directory.file("token.json")))
        #expect(issuer.callCount == 0)

        let status = try await TokenProxyProcess.run(["token", "--config", config])
        #expect(status.status == 3)
        #expect(status.stdout.contains("refresh token: absent"))
        await issuer.shutdown()
    }

    /// With no refresh token there is nothing to retry (SPEC §1): `token --print` exits 3 with the
    /// advice plain `token` gives, whether the store is missing, blank or a bare version, and
    /// whatever the state of the issuer it would have had to discover.
    @Test("an empty store needs a login, not a retry", arguments: ["missing", "blank", "bare version", "issuer down"])
    func anEmptyStoreNeedsALoginNotARetry(store: String) async throws {
        let (issuer, config) = try await start { fixture in
            if store == "issuer down", let port = try? LoopbackPort.unused() {
                fixture.endpoint = ""
                fixture.extra = ["issuer": "\"http://127.0.0.1:\(port)\""]
            }
        }
        switch store {
        case "blank": try directory.write("token.json", "\n")
        case "bare version": try directory.write("token.json", #"{"version": 1}"#)
        default: break
        }
        let printed = try await TokenProxyProcess.run(["token", "--config", config, "--print"])
        let status = try await TokenProxyProcess.run(["token", "--config", config])
        #expect(status.status == 3, "\(status.stderr)")
        #expect(printed.status == 3, "\(printed.stderr)")
        #expect(printed.stdout.isEmpty)
        #expect(!printed.stderr.contains("will retry"), "\(printed.stderr)")
        #expect(printed.stderr.contains("tokenproxy login"), "says how to log in: \(printed.stderr)")
        #expect(issuer.callCount == 0 && issuer.metadataRequests == 0)
        await issuer.shutdown()
    }

    @Test func aRefusedRefreshTokenIsNotRetriedUntilTheStoreChanges() async throws {
        let (issuer, config) = try await start()
        try store.write(TokenSet(refreshToken: "rt-revoked"))
        let first = try await TokenProxyProcess.run(["refresh", "--config", config])
        #expect(first.status == 3)
        #expect(first.stderr.contains("invalid_grant"))
        for _ in 0..<3 {
            #expect(try await TokenProxyProcess.run(["refresh", "--config", config]).status == 3)
            #expect(try await TokenProxyProcess.run(["token", "--config", config, "--print"]).status == 3)
        }
        #expect(issuer.callCount == 1, "other processes read the refusal from the store")
        let status = try await TokenProxyProcess.run(["token", "--config", config])
        #expect(status.status == 3)
        #expect(status.stdout.contains("refused with invalid_grant"))

        try handOver("rt-after-login", to: issuer)
        let healed = try await TokenProxyProcess.run(["refresh", "--config", config])
        #expect(healed.status == 0, "\(healed.stderr)")
        #expect(healed.stdout.hasPrefix("token refreshed; valid until "))
        #expect(issuer.callCount == 2)
        expectNoSecrets(in: first.stdout + first.stderr + status.stdout + healed.stdout + healed.stderr, try secrets(issuer))
        await issuer.shutdown()
    }

    @Test func aTransientFailureExitsOneAndAValidTokenIsStillPrinted() async throws {
        let (issuer, config) = try await start()
        issuer.grantRefreshToken("rt-initial")
        issuer.update { $0.failEvery = 1 }
        try store.write(TokenSet(refreshToken: "rt-initial"))
        let failed = try await TokenProxyProcess.run(["refresh", "--config", config])
        #expect(failed.status == 1)
        #expect(failed.stderr.contains("HTTP 503"))

        let now = Date()
        try store.write(TokenSet(accessToken: "at-still-valid", refreshToken: "rt-initial", expiresAt: now + 60, obtainedAt: now - 3540))
        let printed = try await TokenProxyProcess.run(["token", "--config", config, "--print"])
        #expect(printed.status == 0)
        #expect(printed.stdout == "at-still-valid\n")
        #expect(printed.stderr.contains("could not refresh"))
        await issuer.shutdown()
    }

    @Test func expiryIsTheSameInstantWhateverTheTimeZone() async throws {
        var behavior = MockTokenIssuer.Behavior()
        behavior.lifetime = .seconds(3600)
        let (issuer, config) = try await start(behavior)
        try handOver("rt-initial", to: issuer)
        let utcToken = try await TokenProxyProcess.run(["token", "--config", config, "--print"], environment: ["TZ": "UTC"])
        let kiritimatiToken = try await TokenProxyProcess.run(["token", "--config", config, "--print"], environment: ["TZ": "Pacific/Kiritimati"])
        #expect(utcToken.status == 0 && kiritimatiToken.status == 0)
        #expect(utcToken.stdout == kiritimatiToken.stdout, "a token written under UTC is fresh under UTC+14")
        #expect(issuer.callCount == 1)

        let utc = try await TokenProxyProcess.run(["token", "--config", config], environment: ["TZ": "UTC"])
        let kiritimati = try await TokenProxyProcess.run(["token", "--config", config], environment: ["TZ": "Pacific/Kiritimati"])
        func line(_ prefix: String, _ text: String) -> String? { text.split(separator: "\n").first { $0.hasPrefix(prefix) }.map(String.init) }
        let expiresAt = try #require(line("expires at: ", utc.stdout))
        #expect(expiresAt == line("expires at: ", kiritimati.stdout))
        #expect(expiresAt.hasSuffix("Z"))
        let stored = try #require(try self.stored()?.expiresAt)
        #expect(expiresAt == "expires at: \(RFC3339.format(stored))")
        #expect(abs(stored.timeIntervalSinceNow - 3600) < 30)
        #expect(utc.stdout.contains("access token: valid"))
        #expect(utc.stdout.contains("scope: api.read"))
        expectNoSecrets(in: utc.stdout + utc.stderr + kiritimati.stdout, try secrets(issuer))
        await issuer.shutdown()
    }
}
