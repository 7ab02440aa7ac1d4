import Foundation
import Glibc
import Logging
import Testing
import TokenProxyMocks
import NIOConcurrencyHelpers

@testable import TokenProxy

/// The binary under a service manager (SPEC §8): systemd notify, drain on SIGTERM, reload on SIGHUP.
@Suite("Lifecycle", .serialized)
struct LifecycleTests {
    /// Writes a config for `tokenproxy run` on a free port in front of `upstream`.
    private func writeConfig(_ directory: TemporaryDirectory, issuer: MockTokenIssuer, upstream: String, admin: String = "null", faults: String? = nil) throws -> String {
        var fixture = ConfigFixture(endpoint: issuer.url)
        fixture.grant = "client_credentials"
        fixture.upstream = upstream
        fixture.admin = admin
        if let faults { fixture.topLevel["faults"] = faults }
        return try fixture.write(to: directory)
    }

    private func get(_ path: String, port: Int) async throws -> String {
        try await RawHTTPClient(port: port).exchange("GET \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", timeout: .seconds(5))
    }

    /// Starts `tokenproxy run` and returns it with the port it listens on.
    private func startProxy(_ config: String, environment: [String: String] = [:]) async throws -> (TokenProxyProcess, Int) {
        let process = TokenProxyProcess(["run", "--config", config], environment: environment)
        try process.start()
        let port = try #require(await process.listeningPort(), "not listening: \(process.stderrSoFar)")
        return (process, port)
    }

    @Test func actsForSystemd() async throws {
        let directory = try TemporaryDirectory()
        var behavior = MockTokenIssuer.Behavior()
        behavior.delay = .milliseconds(600)
        let issuer = try await MockTokenIssuer.start(behavior: behavior)
        let upstream = try await MockHTTPServer.start { _ in .json(200, "{}") }
        let config = try writeConfig(directory, issuer: issuer, upstream: upstream.baseURL)
        let systemd = try NotifySocket(in: directory)
        let started = Date()
        let process = TokenProxyProcess(["run", "--config", config], environment: ["NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "400000"])
        try process.start()

        let ready = try #require(await systemd.waitFor("READY=1"), "\(process.stderrSoFar)")
        let firstCall = try #require(issuer.calls.first)
        #expect(ready.at > firstCall.at, "READY=1 only after the first token")
        #expect(ready.at.timeIntervalSince(started) >= 0.6)
        #expect(ready.message.contains("STATUS=token valid until 20"), "\(ready.message)")
        try await Task.sleep(for: .milliseconds(1200))
        let pings = systemd.messages.filter { $0.message == "WATCHDOG=1" }
        #expect(pings.count >= 4, "a WATCHDOG=1 every 200 ms: \(pings.count)")

        let beforeReload = systemd.messages.count
        process.signal(SIGHUP)
        let reloading = await systemd.waitFor("RELOADING=1", after: beforeReload)
        #expect(reloading?.message.contains("MONOTONIC_USEC=") == true)
        #expect(await systemd.waitFor("READY=1", after: beforeReload) != nil)

        let beforeStop = systemd.messages.count
        process.signal(SIGTERM)
        #expect(await systemd.waitFor("STOPPING=1", after: beforeStop) != nil)
        let outcome = await process.wait(timeout: .seconds(15))
        #expect(outcome.status == 0, "\(outcome.stderr)")
        systemd.close()
        await upstream.shutdown()
        await issuer.shutdown()
    }

    @Test func aSlowRequestInFlightAtSIGTERMCompletes() async throws {
        let directory = try TemporaryDirectory()
        let issuer = try await MockTokenIssuer.start()
        let upstream = try await MockHTTPServer.start { request in
            if request.uri == "/slow" { try? await Task.sleep(for: .milliseconds(1500)) }
            return .json(200, #"{"finished": true}"#)
        }
        let config = try writeConfig(directory, issuer: issuer, upstream: upstream.baseURL)
        let (process, port) = try await startProxy(config)

        let slow = Task { try await get("/slow", port: port) }
        try await Task.sleep(for: .milliseconds(400))
        process.signal(SIGTERM)
        let answer = try await slow.value
        #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)")
        #expect(answer.contains(#""finished": true"#))
        let outcome = await process.wait(timeout: .seconds(15))
        #expect(outcome.status == 0, "\(outcome.stderr)")
        await upstream.shutdown()
        await issuer.shutdown()
    }

    @Test func reloadSwitchesTheUpstreamAndKeepsTheOldConfigurationWhenTheNewOneIsBroken() async throws {
        let directory = try TemporaryDirectory()
        let issuer = try await MockTokenIssuer.start()
        let first = try await MockHTTPServer.start { _ in .json(200, #"{"upstream": "first"}"#) }
        let second = try await MockHTTPServer.start { _ in .json(200, #"{"upstream": "second"}"#) }
        let admin = #"{"listen": "127.0.0.1:0"}"#
        let config = try writeConfig(directory, issuer: issuer, upstream: first.baseURL, admin: admin)
        let (process, port) = try await startProxy(config)
        let adminPort = try #require(await process.listeningPort("adminPort"))
        #expect(try await get("/which", port: port).contains("first"))
        #expect(try await get("/status", port: adminPort).contains(#""upstream":"\#(first.baseURL)"#))

        _ = try writeConfig(directory, issuer: issuer, upstream: second.baseURL, admin: admin)
        process.signal(SIGHUP)
        let switched = await TokenFailureTests.waitUntil(timeout: .seconds(20)) {
            (try? await get("/which", port: port))?.contains("second") == true
        }
        #expect(switched, "the new upstream took effect")
        // The admin listener did not change, and shows what the data path uses.
        let status = try await get("/status", port: adminPort)
        #expect(status.contains(#""upstream":"\#(second.baseURL)"#), "\(status)")

        try "{ this is not json".write(toFile: config, atomically: true, encoding: .utf8)
        process.signal(SIGHUP)
        try await Task.sleep(for: .milliseconds(500))
        #expect(try await get("/which", port: port).contains("second"), "traffic goes on with the running configuration")
        process.signal(SIGTERM)
        let outcome = await process.wait(timeout: .seconds(15))
        #expect(outcome.status == 0)
        #expect(outcome.stderr.contains("reload refused"))
        #expect(outcome.stderr.contains("configuration reloaded"))
        await first.shutdown()
        await second.shutdown()
        await issuer.shutdown()
    }

    @Test func noSecretInLogsStatusOrMetricsAfterRefreshesAndFailures() async throws {
        let directory = try TemporaryDirectory()
        var behavior = MockTokenIssuer.Behavior()
        behavior.lifetime = .seconds(2)
        behavior.failEvery = 3
        let issuer = try await MockTokenIssuer.start(behavior: behavior)
        let seenTokens = NIOLockedBox()
        let upstream = try await MockHTTPServer.start { request in
            if let value = request.header("Authorization") { seenTokens.add(String(value.dropFirst(7))) }
            return request.uri == "/reject" ? MockHTTPResponse(status: 401, body: "no") : .json(200, "{}")
        }
        let config = try writeConfig(directory, issuer: issuer, upstream: upstream.baseURL,
                                     admin: #"{"listen": "127.0.0.1:0"}"#, faults: #"{"enabled": true}"#)
        let (process, port) = try await startProxy(config, environment: ["TZ": "Pacific/Kiritimati"])
        let adminPort = try #require(await process.listeningPort("adminPort"))
        let deadline = ContinuousClock.now.advanced(by: .seconds(4))
        while ContinuousClock.now < deadline {
            _ = try await get("/ok", port: port)
            _ = try await get("/reject", port: port)
            _ = try await RawHTTPClient(port: port).exchange("GET /f HTTP/1.1\r\nHost: localhost\r\nX-TokenProxy-Fault: 401\r\nAuthorization: Bearer client-own-secret\r\nCookie: session=cookie-secret\r\nConnection: close\r\n\r\n")
            try await Task.sleep(for: .milliseconds(100))
        }
        let status = try await get("/status", port: adminPort)
        let metrics = try await get("/metrics", port: adminPort)
        process.signal(SIGTERM)
        let outcome = await process.wait(timeout: .seconds(15))
        #expect(issuer.calls.filter { $0.status == 200 }.count >= 2, "refreshes happened")
        #expect(issuer.calls.contains { $0.status == 503 }, "failures happened")
        var secrets = Set(seenTokens.values + [ConfigFixture.clientSecret, "client-own-secret", "cookie-secret"])
        if let stored = try TokenStore(path: directory.file("token.json")).read().tokens {
            [stored.accessToken, stored.refreshToken].compactMap { $0 }.forEach { secrets.insert($0) }
        }
        #expect(secrets.count >= 4)
        for secret in secrets {
            #expect(!outcome.stderr.contains(secret), "a secret in the log")
            #expect(!status.contains(secret), "a secret in /status")
            #expect(!metrics.contains(secret), "a secret in /metrics")
        }
        #expect(outcome.stderr.contains(#""message":"request""#), "request lines are logged")
        #expect(outcome.stderr.contains(#""refreshed":"true""#))
        await upstream.shutdown()
        await issuer.shutdown()
    }
}

/// A thread-safe list of strings seen by a test server.
final class NIOLockedBox: Sendable {
    private let box = NIOLockedValueBox<[String]>([])
    func add(_ value: String) { box.withLockedValue { $0.append(value) } }
    var values: [String] { box.withLockedValue { $0 } }
}
