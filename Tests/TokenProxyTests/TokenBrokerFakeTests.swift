import Foundation
import Logging
import NIOConcurrencyHelpers
import Testing

@testable import TokenProxy

/// The broker carrying out the refresh protocol (SPEC §3–§4) against an in-memory storage, a
/// fake token endpoint and a test clock: brokers sharing one storage stand for processes sharing
/// a store. Time moves only when a test moves it; nothing sleeps.
@Suite("Token broker with a fake endpoint and a test clock")
struct TokenBrokerFakeTests {
    let directory: TemporaryDirectory
    let configuration: Configuration.Token

    init() throws {
        directory = try TemporaryDirectory()
        configuration = try ConfigFixture(endpoint: "https://issuer.example/oauth/token").configuration(in: directory).token
    }

    func broker(_ storage: InMemoryTokenStorage, _ endpoint: FakeTokenEndpoint, _ clock: TestClock, configuration: Configuration.Token? = nil, writesBeforeUse: Bool = true) -> TokenBroker {
        TokenBroker(
            configuration: configuration ?? self.configuration, tokenEndpoint: endpoint, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }),
            storage: storage, writesBeforeUse: writesBeforeUse, clock: clock.function
        )
    }

    static let down = TokenResponse.transient(reason: "answered HTTP 503", retryAfter: nil)

    @Test func twentyConcurrentNeedsCauseOneEndpointCall() async throws {
        let clock = TestClock()
        let barrier = CallBarrier()
        let endpoint = FakeTokenEndpoint { _, call in
            await barrier.wait()
            return .granted(FakeTokenEndpoint.issued(call, clock: clock))
        }
        let broker = broker(InMemoryTokenStorage(TokenSet(refreshToken: "rt")), endpoint, clock)
        let needs = Task {
            try await withThrowingTaskGroup(of: String?.self) { group in
                for _ in 0..<20 { group.addTask { try await broker.token(for: .usable).accessToken } }
                return try await group.reduce(into: Set<String?>()) { $0.insert($1) }
            }
        }
        while barrier.arrived == 0 { await Task.yield() }
        barrier.open()
        #expect(try await needs.value == ["at-1"])
        #expect(endpoint.callCount == 1)
    }

    @Test func twoBrokersSharingOneStorageCallOncePerExpiry() async throws {
        let clock = TestClock()
        let storage = InMemoryTokenStorage(TokenSet(refreshToken: "rt"))
        let endpoint = FakeTokenEndpoint.granting(clock, lifetime: 600)
        let (a, b) = (broker(storage, endpoint, clock), broker(storage, endpoint, clock))
        for expiry in 1...5 {
            async let first = a.token(for: .usable)
            async let second = b.token(for: .usable)
            let (one, other) = try await (first, second)
            #expect(one.accessToken == "at-\(expiry)" && other.accessToken == "at-\(expiry)")
            #expect(endpoint.callCount == expiry, "one call for expiry \(expiry)")
            #expect(endpoint.calls.last?.refreshToken == (expiry == 1 ? "rt" : "rt-\(expiry - 1)"), "the rotated refresh token is used")
            clock.advance(by: 600)
        }
    }

    /// What the 250 ms store watch (and a fleet's NOTIFY) hands over: another process's newer
    /// token is adopted; an older one, or one seen while this process refreshes (the proxy
    /// writes its new token after first use, so the store is behind it), never.
    @Test func aChangedStoreGivesANewerTokenOnlyAndNothingWhileARefreshRuns() async throws {
        let clock = TestClock()
        func token(_ name: String, obtainedAgo: Double) -> TokenSet {
            TokenSet(accessToken: name, refreshToken: "rt", expiresAt: clock.now + 3600 - obtainedAgo, obtainedAt: clock.now - obtainedAgo)
        }
        let storage = InMemoryTokenStorage(token("held", obtainedAgo: 100))
        let barrier = CallBarrier()
        let endpoint = FakeTokenEndpoint { _, call in
            await barrier.wait()
            return .granted(FakeTokenEndpoint.issued(call, clock: clock))
        }
        let broker = broker(storage, endpoint, clock, writesBeforeUse: false)
        await broker.loadStore()
        #expect(broker.publisher.latest()?.accessToken == "held")

        storage.handOver(token("newer", obtainedAgo: 10))
        await broker.storageChanged()
        #expect(broker.publisher.latest()?.accessToken == "newer", "another process's newer token is adopted")
        storage.handOver(token("older", obtainedAgo: 1000))
        await broker.storageChanged()
        #expect(broker.publisher.latest()?.accessToken == "newer", "the store never takes the proxy back to an older token")

        let forced = Task { try await broker.token(for: .forced) }
        while barrier.arrived == 0 { await Task.yield() }
        storage.handOver(token("while-refreshing", obtainedAgo: 1))
        await broker.storageChanged()
        #expect(broker.publisher.latest()?.accessToken == "newer", "nothing is adopted while this process refreshes")
        barrier.open()
        #expect(try await forced.value.accessToken == "at-1")
        #expect(broker.publisher.latest()?.accessToken == "at-1")
    }

    @Test func invalidGrantIsBelievedOnlyAfterTheStoreConfirmsIt() async throws {
        let clock = TestClock()
        let storage = InMemoryTokenStorage(TokenSet(refreshToken: "rt-revoked"))
        let endpoint = FakeTokenEndpoint { credentials, call in
            guard credentials.refreshToken == "rt-revoked" else { return .granted(FakeTokenEndpoint.issued(call, clock: clock)) }
            // While the endpoint refuses rt-revoked, a person hands over a new refresh token.
            storage.handOver(TokenSet(refreshToken: "rt-new"))
            return .refused(TokenEndpointRefusal(error: "invalid_grant", description: nil)!)
        }
        let tokens = try await broker(storage, endpoint, clock).token(for: .usable)
        #expect(tokens.accessToken == "at-2")
        #expect(endpoint.calls.map(\.refreshToken) == ["rt-revoked", "rt-new"])
        #expect(storage.tokens?.rejection == nil)
    }

    @Test func aRefusalRecordedByOneBrokerStopsTheOtherUntilTheStoreChanges() async throws {
        let clock = TestClock()
        let storage = InMemoryTokenStorage(TokenSet(refreshToken: "rt-revoked"))
        let endpoint = FakeTokenEndpoint { credentials, call in
            credentials.refreshToken == "rt-revoked"
                ? .refused(TokenEndpointRefusal(error: "invalid_grant", description: nil)!) : .granted(FakeTokenEndpoint.issued(call, clock: clock))
        }
        let (a, b) = (broker(storage, endpoint, clock), broker(storage, endpoint, clock))
        for broker in [a, b, a, b] {
            await #expect(throws: TokenBrokerError.self) { try await broker.token(for: .usable) }
        }
        #expect(endpoint.callCount == 1, "the other broker read the refusal from the store")
        #expect(storage.tokens?.rejection?.error == "invalid_grant")

        storage.handOver(TokenSet(refreshToken: "rt-after-login"))
        #expect(try await b.token(for: .usable).accessToken == "at-2")
        #expect(try await a.token(for: .usable).accessToken == "at-2", "adopted from the store")
        #expect(endpoint.callCount == 2)
    }

    @Test func aTokenInItsAdvisoryWindowIsServedWhileItsRefreshRunsInTheBackground() async throws {
        let clock = TestClock()
        // 200 s left of an hour: inside refreshBefore (5 m), far from minValidity.
        let current = TokenSet(accessToken: "at-current", refreshToken: "rt", expiresAt: clock.now + 200, obtainedAt: clock.now - 3400)
        let barrier = CallBarrier()
        let endpoint = FakeTokenEndpoint { _, call in
            await barrier.wait()
            return .granted(FakeTokenEndpoint.issued(call, clock: clock))
        }
        let broker = broker(InMemoryTokenStorage(current), endpoint, clock, writesBeforeUse: false)
        #expect(try await broker.token(for: .usable).accessToken == "at-current")
        while barrier.arrived == 0 { await Task.yield() }
        // The call is in flight: needs get the current token without waiting for it.
        for _ in 0..<10 {
            #expect(try await broker.token(for: .usable).accessToken == "at-current")
        }
        barrier.open()
        await broker.refreshSettled()
        #expect(try await broker.token(for: .usable).accessToken == "at-1")
        #expect(endpoint.callCount == 1)
    }

    @Test func transientFailuresBackOffWhileTheValidTokenKeepsBeingServed() async throws {
        let clock = TestClock()
        let start = clock.now
        // 30 s left of a 10-minute token: inside refreshBefore (5m), far from minValidity.
        let current = TokenSet(accessToken: "at-still-valid", refreshToken: "rt", expiresAt: clock.now + 30, obtainedAt: clock.now - 570)
        let times = TimesSeen()
        let endpoint = FakeTokenEndpoint { _, _ in
            times.record(clock.now.timeIntervalSince(start))
            return Self.down
        }
        let broker = broker(InMemoryTokenStorage(current), endpoint, clock)
        for _ in 0..<55 {
            #expect(try await broker.token(for: .usable).accessToken == "at-still-valid")
            await broker.refreshSettled()
            clock.advance(by: 0.1)
        }
        // 1 s and then 2 s, each ±20 %, on a 100 ms grid; a fourth call would come after 5.6 s.
        let seen = times.all
        #expect(seen.count == 3, "calls at about 0 s, 1 s and 3 s: \(seen)")
        if seen.count == 3 {
            #expect((0.8...1.3).contains(seen[1] - seen[0]), "first pause \(seen[1] - seen[0])")
            #expect((1.6...2.5).contains(seen[2] - seen[1]), "second pause \(seen[2] - seen[1])")
        }
    }

    /// The incident of SPEC §4: four proxies, the endpoint down for 25 s across an expiry. Each
    /// serves again within about 30 s of the endpoint's return, and token_unavailable's
    /// Retry-After never promises more than 30 s.
    @Test func aShortOutageAcrossAnExpiryEndsWithinThirtySecondsOfTheEndpointsReturn() async throws {
        let clock = TestClock()
        let start = clock.now
        // Enters its mandatory window 10 s from now, while the endpoint is down (0–25 s).
        let current = TokenSet(accessToken: "at-old", refreshToken: "rt", expiresAt: start + 20, obtainedAt: start - 3580)
        let storage = InMemoryTokenStorage(current)
        let endpoint = FakeTokenEndpoint { _, call in
            clock.now < start + 25 ? Self.down : .granted(FakeTokenEndpoint.issued(call, clock: clock))
        }
        let proxies = (0..<4).map { _ in broker(storage, endpoint, clock) }
        var servedAgainAt: [Double?] = Array(repeating: nil, count: 4)
        var longestRetryAfter = Duration.zero
        while clock.now < start + 90, servedAgainAt.contains(where: { $0 == nil }) {
            for (index, proxy) in proxies.enumerated() where servedAgainAt[index] == nil {
                do throws(TokenBrokerError) {
                    let token = try await proxy.token(for: .usable)
                    if token.accessToken != "at-old" { servedAgainAt[index] = clock.now.timeIntervalSince(start) }
                } catch .unavailable(_, let retryAfter) {
                    longestRetryAfter = max(longestRetryAfter, retryAfter ?? .zero)
                } catch {
                    Issue.record("unexpected \(error)")
                }
                await proxy.refreshSettled()
            }
            clock.advance(by: 0.1)
        }
        for (index, at) in servedAgainAt.enumerated() {
            #expect(at.map { $0 <= 25 + 30 } == true, "proxy \(index) served again at \(String(describing: at)) s")
        }
        #expect(longestRetryAfter <= .seconds(30))
    }

    @Test func aConfigurationRefusalIsNotRetriedUntilTheConfigurationChanges() async throws {
        let clock = TestClock()
        var fixture = ConfigFixture(endpoint: "https://issuer.example/oauth/token")
        fixture.grant = "client_credentials"
        fixture.scope = "api.admin"
        let refusing = try fixture.configuration(in: directory).token
        let storage = InMemoryTokenStorage()
        let endpoint = FakeTokenEndpoint(grant: .clientCredentials) { _, _ in .refused(TokenEndpointRefusal(error: "invalid_scope", description: nil)!) }
        let broker = broker(storage, endpoint, clock, configuration: refusing)
        for _ in 0..<60 {
            do {
                _ = try await broker.token(for: .usable)
                Issue.record("a refused scope produced a token")
            } catch {
                guard case .misconfigured(let reason) = error else {
                    Issue.record("expected misconfigured, got \(error)")
                    return
                }
                #expect(reason.contains("invalid_scope") && reason.contains("token.scope"), "\(reason)")
            }
            clock.advance(by: 60)
        }
        #expect(endpoint.callCount == 1, "one call in an hour of needs")
        #expect(storage.writes == 0, "the store is not touched")

        fixture.scope = "api.read"
        let fixed = try fixture.configuration(in: directory).token
        let healed = FakeTokenEndpoint.granting(clock, grant: .clientCredentials)
        await broker.reconfigure(fixed, tokenEndpoint: healed)
        #expect(try await broker.token(for: .usable).accessToken == "at-1")
    }
}

/// Instants the fake endpoint was called at, in seconds from the test's start.
final class TimesSeen: Sendable {
    private let times = NIOLockedValueBox<[Double]>([])
    func record(_ time: Double) { times.withLockedValue { $0.append(time) } }
    var all: [Double] { times.withLockedValue { $0 } }
}
