import Foundation
import NIOHTTP1
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// QA's fault injection (SPEC §6): injected answers go through the real refresh and retry paths.
@Suite("Fault injection")
struct FaultInjectionTests {
    private func harness(enabled: Bool = true, percent: Int = 0) async throws -> ProxyHarness {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        options.faults = "{\"enabled\": \(enabled), \"upstream401Percent\": \(percent)}"
        return try await ProxyHarness(options)
    }

    @Test func whenDisabledTheHeaderIsStrippedAndIgnored() async throws {
        let harness = try await harness(enabled: false)
        let response = try await harness.send(.GET, "/x", headers: [("X-TokenProxy-Fault", "503;times=3")])
        #expect(response.status == 200)
        #expect(harness.received.count == 1)
        #expect(harness.received.first?.header("X-TokenProxy-Fault") == nil)
        await harness.shutdown()
    }

    @Test func anInjected401RefreshesForRealAndTheClientSeesSuccess() async throws {
        let harness = try await harness()
        let response = try await harness.send(.POST, "/orders", headers: [("X-TokenProxy-Fault", "401")], body: "{}")
        #expect(response.status == 200)
        #expect(response.headers.first(name: "X-TokenProxy-Fault-Injected") == nil)
        #expect(harness.issuer.callCount == 1, "the refresh was real")
        #expect(harness.received.count == 1, "the injected attempt never reached the upstream")
        #expect(harness.received.first?.header("Authorization") != "Bearer at-live")
        #expect(harness.received.first?.header("X-TokenProxy-Fault") == nil, "never forwarded")
        await harness.shutdown()
    }

    @Test func anInjected401ThatOutlastsTheReplayReachesTheClientMarked() async throws {
        let harness = try await harness()
        let response = try await harness.send(.GET, "/x", headers: [("X-TokenProxy-Fault", "401;times=2")])
        #expect(response.status == 401)
        #expect(response.headers.first(name: "X-TokenProxy-Fault-Injected") == "401")
        #expect(response.headers.first(name: "WWW-Authenticate") == #"Bearer error="invalid_token""#)
        #expect(harness.received.isEmpty)
        await harness.shutdown()
    }

    @Test func injectedUnavailabilityIsRetried() async throws {
        let harness = try await harness()
        let response = try await harness.send(.GET, "/x", headers: [("X-TokenProxy-Fault", "503;times=2")])
        #expect(response.status == 200)
        #expect(harness.received.count == 1)
        let post = try await harness.send(.POST, "/x", headers: [("X-TokenProxy-Fault", "503")], body: "{}")
        #expect(post.status == 503, "not retried: POST without Idempotency-Key")
        #expect(post.headers.first(name: "X-TokenProxy-Fault-Injected") == "503")
        await harness.shutdown()
    }

    @Test func anInjectedResetFollowsTheResetRules() async throws {
        let harness = try await harness()
        let post = try await harness.send(.POST, "/pay", headers: [("X-TokenProxy-Fault", "reset")], body: "{}")
        #expect(post.status == 502)
        #expect(post.headers.first(name: "X-TokenProxy-Error") == "upstream_unavailable")
        #expect(post.headers.first(name: "X-TokenProxy-Fault-Injected") == "reset")
        #expect(harness.received.isEmpty)
        let keyed = try await harness.send(.POST, "/pay", headers: [("X-TokenProxy-Fault", "reset"), ("Idempotency-Key", "k")], body: "{}")
        #expect(keyed.status == 200)
        await harness.shutdown()
    }

    @Test func everyFirstAttemptAnswered401StillSucceeds() async throws {
        let harness = try await harness(percent: 100)
        for _ in 0..<10 {
            let response = try await harness.send(.GET, "/x")
            #expect(response.status == 200)
        }
        #expect(harness.issuer.callCount >= 1, "the token endpoint was called for real")
        #expect(harness.received.count == 10)
        await harness.shutdown()
    }

    @Test func aMalformedFaultHeaderIsABadRequest() async throws {
        let harness = try await harness()
        let response = try await harness.send(.GET, "/x", headers: [("X-TokenProxy-Fault", "teapot;times=many")])
        #expect(response.status == 400)
        #expect(response.body.contains("X-TokenProxy-Fault"))
        await harness.shutdown()
    }

    @Test("fault header grammar", arguments: [
        ("401", FaultPlan(kind: .status(401), times: 1)), ("503;times=2", FaultPlan(kind: .status(503), times: 2)),
        ("reset", FaultPlan(kind: .reset, times: 1)), ("reset; times=3", FaultPlan(kind: .reset, times: 3)),
    ])
    func grammar(text: String, plan: FaultPlan) throws {
        #expect(try FaultPlan.parse(text).get() == plan)
    }
}
