import Foundation
import Testing

@testable import TokenProxy

/// The broker's decisions (SPEC §3–§5) as tables: one row per rule, time as an input.
@Suite("Refresh decisions")
struct RefreshGateTests {
    static let t0 = Date(timeIntervalSince1970: 1_800_000_000)
    /// Windows as configured: refresh 300 s ahead, never send with less than 10 s left.
    static let windows = RefreshWindows(refreshBefore: .seconds(300), minValidity: .seconds(10))

    static func token(_ name: String, expiresIn: Double, obtainedAgo: Double = 3400) -> TokenSet {
        TokenSet(accessToken: name, refreshToken: "rt", expiresAt: t0 + expiresIn, obtainedAt: t0 - obtainedAgo)
    }
    static let fresh = token("T", expiresIn: 3600, obtainedAgo: 0)
    static let advisory = token("T", expiresIn: 200)
    static let mandatory = token("T", expiresIn: 5)
    static let newer = token("N", expiresIn: 3600, obtainedAgo: 0)
    static let obtainedAMinuteAgo = token("T", expiresIn: 3600, obtainedAgo: 60)

    /// A state reached through the gate's own transitions, as the broker would reach it.
    struct Given: Sendable, CustomStringConvertible {
        var description: String
        var steps: @Sendable (inout RefreshGate) -> Void

        static func holding(_ tokens: TokenSet) -> Given {
            Given(description: "holding \(tokens.accessToken ?? "-")") { $0.replaced(by: tokens) }
        }
        static let nothing = Given(description: "nothing") { _ in }
        static let refreshRunning = Given(description: "a refresh runs") { gate in
            _ = gate.decide(.init(need: .forced), now: t0 - 60)
        }
        static let reactiveRefreshRunning = Given(description: "a 401 refresh for T runs") { gate in
            _ = gate.decide(.init(need: .replacing(rejected: "T")), now: t0)
            gate.callingEndpoint(for: .replacing(rejected: "T"), now: t0)
        }
        /// A 401-caused call for T happened 0.5 s ago and gave N; T is current again (the backend rejects every token).
        static let reactiveCallJustMade = Given(description: "a 401 call 0.5 s ago") { gate in
            _ = gate.decide(.init(need: .replacing(rejected: "X")), now: t0 - 0.5)
            gate.callingEndpoint(for: .replacing(rejected: "X"), now: t0 - 0.5)
            _ = gate.finished(.refreshed(fresh), now: t0 - 0.5, random: 0.5)
        }
        static let backingOff = Given(description: "backing off until t0+1s") { gate in
            _ = gate.decide(.init(need: .forced), now: t0)
            gate.callingEndpoint(for: .forced, now: t0)
            _ = gate.finished(.failed(.unavailable(reason: "HTTP 503", retryAfter: nil), retryAfter: nil), now: t0, random: 0.5)
        }
        static let backoffOver = Given(description: "a backoff that ended") { gate in
            _ = gate.decide(.init(need: .forced), now: t0 - 120)
            _ = gate.finished(.failed(.unavailable(reason: "HTTP 503", retryAfter: nil), retryAfter: nil), now: t0 - 120, random: 0.5)
        }
        static let refused = Given(description: "credentials refused") { gate in
            _ = gate.decide(.init(need: .forced), now: t0 - 120)
            _ = gate.finished(.refused(reauth, watch: .init(store: nil, client: "c", storeMatters: true), remaining: nil), now: t0 - 120, random: 0.5)
        }
        static let forcedJustNow = Given(description: "a forced refresh 0.4 s ago") { gate in
            _ = gate.decide(.init(need: .forced), now: t0 - 0.4)
            _ = gate.finished(.refreshed(fresh), now: t0 - 0.3, random: 0.5)
        }
        static let reloadedWithNewScope = Given(description: "token.scope reloaded just now") { gate in
            gate.reconfigure(windows: windows, minRefreshInterval: .seconds(1), dropTokens: true, now: t0 - 1)
        }
    }

    static let reauth = TokenBrokerError.reauthenticationRequired(reason: "invalid_grant")
    static let down = TokenBrokerError.unavailable(reason: "HTTP 503", retryAfter: nil)

    struct Row: Sendable, CustomStringConvertible {
        var description: String
        var given: [Given]
        var need: TokenBroker.Need
        var joined: Result<TokenSet, TokenBrokerError>? = nil
        var checked = false
        var lookedInStore = false
        var expected: RefreshGate.Decision
    }

    static let rows: [Row] = [
        Row(description: "fresh token: used, nothing else", given: [.holding(fresh)], need: .usable, expected: .use(fresh, refreshInBackground: false)),
        Row(description: "advisory window: used, and one background refresh starts", given: [.holding(advisory)], need: .usable, expected: .use(advisory, refreshInBackground: true)),
        Row(description: "advisory window while a refresh runs: used, no second refresh", given: [.holding(advisory), .refreshRunning], need: .usable, expected: .use(advisory, refreshInBackground: false)),
        Row(description: "advisory window while backing off: used, no call", given: [.holding(advisory), .backingOff], need: .usable, expected: .use(advisory, refreshInBackground: false)),
        Row(description: "mandatory window: wait for a refresh", given: [.holding(mandatory)], need: .usable, expected: .start(.usable)),
        Row(description: "mandatory window while a refresh runs: join it", given: [.holding(mandatory), .refreshRunning], need: .usable, expected: .join),
        Row(description: "no token at all: refresh", given: [.nothing], need: .usable, expected: .start(.usable)),
        Row(description: "token --print wants a fresh token: refresh an advisory one", given: [.holding(advisory)], need: .fresh, expected: .start(.fresh)),
        Row(description: "401 for the current token: refresh for it", given: [.holding(fresh)], need: .replacing(rejected: "T"), expected: .start(.replacing(rejected: "T"))),
        Row(description: "401 for T while a 401 refresh for T runs: join it, whatever the throttle says", given: [.holding(fresh), .reactiveRefreshRunning], need: .replacing(rejected: "T"), expected: .join),
        Row(description: "401 for T within minRefreshInterval of the last 401 call: replay with T", given: [.reactiveCallJustMade], need: .replacing(rejected: "T"), expected: .use(fresh, refreshInBackground: false)),
        Row(description: "401 for an older token: the newer one is used", given: [.holding(newer)], need: .replacing(rejected: "T"), expected: .use(newer, refreshInBackground: false)),
        Row(description: "401 for T, the joined refresh failed transiently: replay once with T", given: [.holding(fresh)], need: .replacing(rejected: "T"), joined: .failure(down), expected: .use(fresh, refreshInBackground: false)),
        Row(description: "401 for T while backing off: replay with T, no call", given: [.holding(fresh), .backingOff], need: .replacing(rejected: "T"), expected: .use(fresh, refreshInBackground: false)),
        Row(description: "401 for an expired T after the refresh failed: the failure", given: [.holding(mandatory)], need: .replacing(rejected: "T"), joined: .failure(down), expected: .fail(down)),
        Row(description: "backing off without a usable token: look in the store first", given: [.backingOff], need: .usable, expected: .lookInStore),
        Row(description: "backing off, nothing in the store: answered at once", given: [.backingOff], need: .usable, lookedInStore: true, expected: .fail(.unavailable(reason: "HTTP 503", retryAfter: .seconds(1)))),
        Row(description: "backoff over: try again", given: [.backoffOver], need: .usable, expected: .start(.usable)),
        Row(description: "refused for good: see whether the store or secret changed", given: [.refused], need: .usable, expected: .checkForChanges),
        Row(description: "refused for good, nothing changed: the refusal, no call", given: [.refused], need: .usable, checked: true, expected: .fail(reauth)),
        Row(description: "refused for good but the token is still valid: used, no background refresh", given: [.holding(advisory), .refused], need: .usable, expected: .use(advisory, refreshInBackground: false)),
        Row(description: "forced: refresh", given: [.holding(fresh)], need: .forced, expected: .start(.forced)),
        Row(description: "forced while a refresh runs: coalesced", given: [.holding(fresh), .refreshRunning], need: .forced, expected: .join),
        Row(description: "forced within minRefreshInterval of the last forced one: 429", given: [.forcedJustNow], need: .forced, expected: .fail(.rateLimited(retryAfter: .milliseconds(600)))),
        Row(description: "forced, joined: the refresh's token", given: [.holding(fresh)], need: .forced, joined: .success(newer), expected: .use(newer, refreshInBackground: false)),
        Row(description: "forced while refused for good: look for changes first", given: [.refused], need: .forced, expected: .checkForChanges),
        Row(description: "a token obtained before token.* changed: not used", given: [.holding(obtainedAMinuteAgo), .reloadedWithNewScope], need: .usable, expected: .start(.usable)),
        Row(description: "a token obtained after the reload: used", given: [.reloadedWithNewScope, .holding(newer)], need: .usable, expected: .use(newer, refreshInBackground: false)),
        Row(description: "joined a refresh that gave a token: used", given: [.holding(mandatory)], need: .usable, joined: .success(newer), expected: .use(newer, refreshInBackground: false)),
        Row(description: "joined a refresh that failed: the failure", given: [.nothing], need: .usable, joined: .failure(down), expected: .fail(down)),
    ]

    @Test("decisions", arguments: rows)
    func decision(row: Row) {
        var gate = RefreshGate(windows: Self.windows, minRefreshInterval: .seconds(1), backoff: RefreshBackoff())
        for given in row.given { given.steps(&gate) }
        var attempt = RefreshGate.Attempt(need: row.need)
        attempt.joined = row.joined
        attempt.checkedForChanges = row.checked
        attempt.lookedInStore = row.lookedInStore
        let decision = gate.decide(attempt, now: Self.t0)
        if case .fail(.rateLimited(let after)) = decision, case .fail(.rateLimited(let expected)) = row.expected {
            #expect(abs((after - expected).timeInterval) < 0.001)
        } else {
            #expect(decision == row.expected)
        }
    }

    // MARK: Outcomes

    private func gateWithRefreshRunning(holding tokens: TokenSet? = nil, need: TokenBroker.Need = .usable) -> RefreshGate {
        var gate = RefreshGate(windows: Self.windows, minRefreshInterval: .seconds(1), backoff: RefreshBackoff())
        if let tokens { gate.replaced(by: tokens) }
        _ = gate.decide(.init(need: .forced), now: Self.t0 - 10)
        return gate
    }

    @Test func aCallMadeHereIsARefreshATokenFromTheStoreIsAnAdoption() {
        var gate = gateWithRefreshRunning()
        gate.callingEndpoint(for: .usable, now: Self.t0)
        let (refreshed, report) = gate.finished(.refreshed(Self.newer), now: Self.t0, random: 0.5)
        #expect(refreshed == .success(Self.newer))
        #expect(report == .refreshed(Self.newer))
        #expect(gate.lastRefresh?.succeeded == true)

        var other = gateWithRefreshRunning()
        let (adopted, adoption) = other.finished(.adopted(Self.newer), now: Self.t0, random: 0.5)
        #expect(adopted == .success(Self.newer))
        #expect(adoption == .adopted(Self.newer))
        #expect(other.lastRefresh == nil, "no call was made")
        #expect(other.current == Self.newer)
    }

    @Test func transientFailuresBackOffAndSayWhetherTheEndpointWasCalled() {
        var gate = gateWithRefreshRunning()
        gate.callingEndpoint(for: .usable, now: Self.t0)
        let (_, first) = gate.finished(.failed(Self.down, retryAfter: nil), now: Self.t0, random: 0.5)
        #expect(first == .failed(reason: "HTTP 503", failures: 1, retryIn: .seconds(1), calledEndpoint: true))
        #expect(gate.nextCheck(now: Self.t0) == Self.t0 + 1)

        _ = gate.decide(.init(need: .usable), now: Self.t0 + 1)
        let (_, second) = gate.finished(.failed(.unavailable(reason: "lock busy", retryAfter: nil), retryAfter: nil), now: Self.t0 + 1, random: 0.5)
        #expect(second == .failed(reason: "lock busy", failures: 2, retryIn: .seconds(2), calledEndpoint: false))

        _ = gate.decide(.init(need: .usable), now: Self.t0 + 3)
        let (_, third) = gate.finished(.failed(Self.down, retryAfter: .seconds(30)), now: Self.t0 + 3, random: 0.5)
        #expect(third == .failed(reason: "HTTP 503", failures: 3, retryIn: .seconds(30), calledEndpoint: false), "Retry-After is honoured")
    }

    @Test func backoffShrinksSoFourTriesFitBeforeTheMandatoryWindow() {
        // 50 s left: the mandatory window begins in 40 s, so pauses are at most 10 s.
        var gate = gateWithRefreshRunning(holding: Self.token("T", expiresIn: 50))
        for _ in 0..<6 {
            _ = gate.finished(.failed(Self.down, retryAfter: nil), now: Self.t0, random: 0.5)
            _ = gate.decide(.init(need: .fresh), now: gate.nextCheck(now: Self.t0))
        }
        #expect(gate.nextCheck(now: Self.t0) <= Self.t0 + 10)
    }

    @Test func aRefusedReactiveRefreshLeavesNoAccessToken() {
        var gate = gateWithRefreshRunning(holding: Self.fresh)
        var dropped = Self.fresh
        dropped.accessToken = nil
        dropped.expiresAt = nil
        let watch = RefreshGate.Watch(store: nil, client: "c", storeMatters: true)
        let (result, report) = gate.finished(.refused(Self.reauth, watch: watch, remaining: dropped), now: Self.t0, random: 0.5)
        #expect(result == .failure(Self.reauth))
        #expect(report == .refused(Self.reauth, calledEndpoint: false))
        #expect(gate.current?.accessToken == nil)
        let decision = gate.decide(.init(need: .usable), now: Self.t0)
        #expect(decision == .checkForChanges)
    }

    @Test func aRefusalLearnedFromTheStoreForA401DropsTheRejectedTokenHereToo() {
        // Another process recorded the refusal; the store (as the broker read it) still names T,
        // or no access token at all. Either way T, which the upstream refused, is not used again.
        for remaining in [Self.fresh, nil] {
            var gate = RefreshGate(windows: Self.windows, minRefreshInterval: .seconds(1), backoff: RefreshBackoff())
            gate.replaced(by: Self.fresh)
            #expect(gate.decide(.init(need: .replacing(rejected: "T")), now: Self.t0) == .start(.replacing(rejected: "T")))
            let watch = RefreshGate.Watch(store: nil, client: "c", storeMatters: true)
            _ = gate.finished(.refused(Self.reauth, watch: watch, remaining: remaining), now: Self.t0, random: 0.5)
            #expect(gate.current?.accessToken == nil)
            #expect(gate.current?.refreshToken == "rt", "the refresh token stays")
            var attempt = RefreshGate.Attempt(need: .usable)
            attempt.checkedForChanges = true
            #expect(gate.decide(attempt, now: Self.t0) == .fail(Self.reauth))
        }
        // A refusal for an expiry refresh leaves a still valid token in use.
        var gate = gateWithRefreshRunning(holding: Self.advisory)
        _ = gate.finished(.refused(Self.reauth, watch: .init(store: nil, client: "c", storeMatters: true), remaining: nil), now: Self.t0, random: 0.5)
        #expect(gate.current == Self.advisory)
    }

    @Test("a permanent failure ends when what it watches changes", arguments: [
        (true, "store", true), (true, "client", true), (true, "nothing", false),
        (false, "store", false), (false, "client", true),
    ])
    func permanentFailuresEnd(storeMatters: Bool, change: String, ends: Bool) {
        var gate = gateWithRefreshRunning()
        let watch = RefreshGate.Watch(store: nil, client: "secret-1", storeMatters: storeMatters)
        _ = gate.finished(.refused(Self.reauth, watch: watch, remaining: nil), now: Self.t0, random: 0.5)
        var now = watch
        if change == "store" { now.store = .row(2) }
        if change == "client" { now.client = "secret-2" }
        let ended = gate.recheck(now)
        #expect(ended == ends)
        #expect(gate.failure == (ends ? .none : .permanent(Self.reauth, watch: watch)))
    }

    @Test func theScheduleFollowsEveryTokenHoweverItWasObtained() {
        var gate = RefreshGate(windows: Self.windows, minRefreshInterval: .seconds(1), backoff: RefreshBackoff())
        gate.replaced(by: Self.fresh)
        #expect(gate.nextCheck(now: Self.t0) == Self.t0 + 3300)
        // A 4 s token adopted from another process (or forced by the admin API): its advisory
        // window (half its lifetime) begins 2 s after it was obtained, not on the old schedule.
        let short = TokenSet(accessToken: "S", refreshToken: "rt", expiresAt: Self.t0 + 4, obtainedAt: Self.t0)
        _ = gate.decide(.init(need: .replacing(rejected: "T")), now: Self.t0)
        _ = gate.finished(.adopted(short), now: Self.t0, random: 0.5)
        #expect(gate.nextCheck(now: Self.t0) == Self.t0 + 2)
        #expect(gate.nextCheck(now: Self.t0 + 3.7) == Self.t0 + 3.7, "inside its mandatory window: now")
    }

    @Test func aStoreTokenIsAdoptedDuringABackoffOnlyWhenUsable() {
        var gate = RefreshGate(windows: Self.windows, minRefreshInterval: .seconds(1), backoff: RefreshBackoff())
        Given.backingOff.steps(&gate)
        let tooLate = gate.offer(Self.mandatory, now: Self.t0)
        #expect(!tooLate)
        #expect(gate.failure != .none)
        let usable = gate.offer(Self.newer, now: Self.t0)
        #expect(usable)
        #expect(gate.failure == .none)
        let decision = gate.decide(.init(need: .usable), now: Self.t0)
        #expect(decision == .use(Self.newer, refreshInBackground: false))
    }
}

/// SPEC §4: while no valid token is held, tries are at most 30 s apart whatever happened before,
/// and `Retry-After` on `token_unavailable` is the time to the next try.
@Suite("Backoff without a valid token")
struct BackoffWithoutTokenTests {
    static let t0 = RefreshGateTests.t0
    /// Enters its mandatory window at t0 + 50 (expires at t0 + 60, minValidity 10 s).
    static let expiring = RefreshGateTests.token("T", expiresIn: 60)
    static let mustRefreshAt = t0 + 50
    static let down = RefreshGateTests.down

    struct Row: Sendable, CustomStringConvertible {
        var description: String
        /// When the failures happened, in seconds after t0.
        var failures: [Double]
        var holding: TokenSet?
        /// What the endpoint said with the last failure (`Retry-After`), if anything.
        var retryAfter: Duration? = nil
        /// The longest the next try may be after the last failure.
        var atMost: Duration
        /// The shortest, when it matters (a try not sooner than this).
        var atLeast: Duration = .zero
    }

    /// Thirteen tries crowded into the last 1.3 s before the mandatory window, 100 ms apart, as
    /// four proxies sharing an outage once made them.
    static let crowded = (0..<13).map { 48.7 + Double($0) * 0.1 }

    static let rows: [Row] = [
        Row(description: "13 failures inside the window, then one after expiry: next try within 30 s", failures: crowded + [50.05], holding: expiring, atMost: .seconds(30)),
        Row(description: "13 failures inside the window, then one after expiry: the count starts again (about 1 s)", failures: crowded + [50.05], holding: expiring, atMost: .milliseconds(1200)),
        Row(description: "no token at all, 20 failures in a row: never more than 30 s apart", failures: (0..<20).map { Double($0) * 30 }, holding: nil, atMost: .seconds(30), atLeast: .seconds(20)),
        Row(description: "no token, the endpoint asks for 120 s: still at most 30 s", failures: [0], holding: nil, retryAfter: .seconds(120), atMost: .seconds(30)),
        Row(description: "a valid token, the endpoint asks for 120 s: the try comes at most 30 s after the token lapses", failures: [40], holding: expiring, retryAfter: .seconds(120), atMost: .seconds(40)),
        Row(description: "a valid token far from its window: growth as before (no 30 s cap)", failures: (0..<9).map { Double($0) }, holding: RefreshGateTests.token("T", expiresIn: 100_000, obtainedAgo: 0), atMost: .seconds(300), atLeast: .seconds(200)),
    ]

    @Test("pause after the last failure", arguments: rows)
    func pause(row: Row) throws {
        var gate = RefreshGate(windows: RefreshGateTests.windows, minRefreshInterval: .seconds(1), backoff: RefreshBackoff())
        if let holding = row.holding { gate.replaced(by: holding) }
        var last = Self.t0
        var result: Result<TokenSet, TokenBrokerError>?
        for (index, offset) in row.failures.enumerated() {
            last = Self.t0 + offset
            _ = gate.decide(.init(need: .forced), now: last)
            let retryAfter = index == row.failures.count - 1 ? row.retryAfter : nil
            let error = TokenBrokerError.unavailable(reason: "HTTP 503", retryAfter: retryAfter)
            result = gate.finished(.failed(error, retryAfter: retryAfter), now: last, random: 0.5).0
        }
        let pause = gate.nextCheck(now: last).timeIntervalSince(last)
        #expect(pause <= row.atMost.timeInterval, "next try in \(pause) s")
        #expect(pause >= row.atLeast.timeInterval, "next try in \(pause) s")
        // Those who waited for the refresh are told when the next try is due.
        if case .failure(.unavailable(_, let retryAfter)) = result {
            #expect(retryAfter.map { abs($0.timeInterval - pause) < 0.001 } == true, "Retry-After \(String(describing: retryAfter)) for a try in \(pause) s")
        } else {
            Issue.record("the refresh did not fail as unavailable: \(String(describing: result))")
        }
    }

    @Test func afterExpiryTheRetryAfterOfTokenUnavailableIsTheTimeToTheNextTry() {
        var gate = RefreshGate(windows: RefreshGateTests.windows, minRefreshInterval: .seconds(1), backoff: RefreshBackoff())
        gate.replaced(by: Self.expiring)
        for offset in Self.crowded + [50.05] {
            _ = gate.decide(.init(need: .fresh), now: Self.t0 + offset)
            _ = gate.finished(.failed(Self.down, retryAfter: nil), now: Self.t0 + offset, random: 0.5)
        }
        let now = Self.t0 + 50.5
        let nextTry = gate.nextCheck(now: now)
        #expect(nextTry.timeIntervalSince(Self.t0 + 50.05) <= 30)
        var attempt = RefreshGate.Attempt(need: .usable)
        attempt.lookedInStore = true
        let decision = gate.decide(attempt, now: now)
        guard case .fail(.unavailable(_, let retryAfter?)) = decision else {
            Issue.record("expected token_unavailable, got \(decision)")
            return
        }
        #expect(abs(retryAfter.timeInterval - nextTry.timeIntervalSince(now)) < 0.001)
    }
}
