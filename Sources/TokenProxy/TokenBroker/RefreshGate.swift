import FoundationEssentials

/// The decisions of SPEC §3–§5 for one process's token, made without I/O and with the time as
/// an input, so that each rule is one row of a table test.
///
/// ``TokenBroker`` asks ``decide(_:now:)`` what to do for a need and carries the answer out
/// (hand out a token, join or start a refresh, look at the store), then reports back what
/// happened (``finished(_:now:random:)``, ``callingEndpoint(for:now:)`` and the others), which
/// moves the state: the failure state and its backoff, the 401 throttle, the forced-refresh
/// rate limit, and whether a token was refreshed here or adopted from another process.
struct RefreshGate: Sendable {
    typealias Need = TokenBroker.Need

    private(set) var windows: RefreshWindows
    private(set) var minRefreshInterval: Duration
    let backoff: RefreshBackoff

    /// The token last read from the store or received from the endpoint.
    private(set) var current: TokenSet?
    /// The need that started the refresh under way in this process, if one is.
    private(set) var running: Need?
    /// Whether the refresh under way has called the token endpoint.
    private(set) var runningCalledEndpoint = false
    private(set) var failure: Failure = .none
    /// When the last 401-caused call to the token endpoint started.
    private(set) var lastReactiveCall: Date?
    /// When the last forced refresh started.
    private(set) var lastForcedRefresh: Date?
    private(set) var lastRefresh: TokenBroker.RefreshRecord?
    /// Tokens obtained before this instant were obtained under settings that a reload replaced.
    private(set) var notObtainedBefore: Date?
    /// Whether the last transient failure happened while a usable token was held.
    private(set) var failedHoldingToken = false

    init(windows: RefreshWindows, minRefreshInterval: Duration, backoff: RefreshBackoff) {
        self.windows = windows
        self.minRefreshInterval = minRefreshInterval
        self.backoff = backoff
    }

    enum Failure: Sendable, Equatable {
        case none
        /// The endpoint failed `count` times in a row; no call before `retryAt`.
        case transient(count: Int, retryAt: Date, reason: String)
        /// Refused for good: nothing is tried until what `watch` recorded changes.
        case permanent(TokenBrokerError, watch: Watch)
    }

    /// What a permanent failure waits to see change: the store (a new refresh token handed over)
    /// and the client credentials (a fixed secret). A configuration error (`invalid_scope`)
    /// ignores the store: only a new configuration can fix it.
    struct Watch: Sendable, Equatable {
        var store: StorageVersion?
        var client: String?
        var storeMatters: Bool

        func isChanged(by now: Watch) -> Bool {
            now.client != client || (storeMatters && now.store != store)
        }
    }

    /// One need being served, and what has been done for it so far.
    struct Attempt: Sendable {
        var need: Need
        /// The result of the refresh this need joined or started.
        var joined: Result<TokenSet, TokenBrokerError>?
        var checkedForChanges = false
        var lookedInStore = false

        init(need: Need) {
            self.need = need
        }
    }

    enum Decision: Sendable, Equatable {
        /// Hand out `tokens`; with `refreshInBackground`, also start a refresh nobody waits for.
        case use(TokenSet, refreshInBackground: Bool)
        /// Wait for the refresh under way, then decide again.
        case join
        /// Start a refresh for this need, wait for it, then decide again.
        case start(Need)
        /// A permanent failure stands: see whether the store or the client secret changed
        /// (``recheck(_:)``), then decide again.
        case checkForChanges
        /// The endpoint is failing: see whether another process stored a usable token
        /// (``offer(_:now:)``), then decide again.
        case lookInStore
        case fail(TokenBrokerError)
    }

    /// What a refresh came to, as the broker found out.
    enum Outcome: Sendable, Equatable {
        /// This process called the endpoint and received `tokens`.
        case refreshed(TokenSet)
        /// Another process had refreshed: `tokens` came from the store, without a call.
        case adopted(TokenSet)
        /// Worth trying again later (network, 5xx, the lock, the store).
        case failed(TokenBrokerError, retryAfter: Duration?)
        /// Refused for good; `remaining` is what the store holds now (the rejected access token
        /// dropped), when the broker wrote it.
        case refused(TokenBrokerError, watch: Watch, remaining: TokenSet?)
    }

    /// What to tell the operator about a finished refresh (log, metrics, systemd status).
    enum Report: Sendable, Equatable {
        case refreshed(TokenSet)
        case adopted(TokenSet)
        case failed(reason: String, failures: Int, retryIn: Duration, calledEndpoint: Bool)
        case refused(TokenBrokerError, calledEndpoint: Bool)
    }

    // MARK: Needs

    mutating func decide(_ attempt: Attempt, now: Date) -> Decision {
        if case .forced = attempt.need { return decideForced(attempt, now: now) }
        if let current, satisfies(current, attempt.need, now: now) {
            return .use(current, refreshInBackground: attempt.joined == nil && startsBackgroundRefresh(now: now))
        }
        // Join a refresh under way before anything else: concurrent 401s for one token share it
        // whatever the 401 throttle says, so none is replayed with the rejected token.
        if attempt.joined == nil, running != nil { return .join }
        if case .replacing(let rejected) = attempt.need, let current, current.accessToken == rejected, isUsable(current, now: now),
            attempt.joined != nil || isReactiveRefreshThrottled(now: now) || isBackingOff(now: now)
        {
            // Replay once with the token there is (SPEC §5): a spurious 401 recovers, and a
            // backend that rejects every token gets one extra request, never a refresh storm.
            return .use(current, refreshInBackground: false)
        }
        if let joined = attempt.joined {
            switch joined {
            case .success(let tokens):
                guard isUsable(tokens, now: now) else {
                    return .fail(.unavailable(reason: "the token endpoint issued a token that is already inside its token.minValidity window", retryAfter: nil))
                }
                return .use(tokens, refreshInBackground: false)
            case .failure(let error):
                return .fail(error)
            }
        }
        switch failure {
        case .none:
            break
        case .permanent(let error, _):
            return attempt.checkedForChanges ? .fail(error) : .checkForChanges
        case .transient(_, let retryAt, let reason):
            if now < retryAt {
                // Requests without a valid token are answered at once rather than each waiting
                // on a failing endpoint, unless another process has stored a usable token.
                guard attempt.lookedInStore else { return .lookInStore }
                return .fail(.unavailable(reason: reason, retryAfter: Duration(timeInterval: retryAt.timeIntervalSince(now))))
            }
        }
        return start(attempt.need, now: now)
    }

    private mutating func decideForced(_ attempt: Attempt, now: Date) -> Decision {
        if let joined = attempt.joined {
            switch joined {
            case .success(let tokens): return .use(tokens, refreshInBackground: false)
            case .failure(let error): return .fail(error)
            }
        }
        // Coalesced: a forced refresh while one runs gets that one's result.
        if running != nil { return .join }
        if let lastForcedRefresh {
            let allowedAt = lastForcedRefresh + minRefreshInterval.timeInterval
            if now < allowedAt { return .fail(.rateLimited(retryAfter: Duration(timeInterval: allowedAt.timeIntervalSince(now)))) }
        }
        if case .permanent(let error, _) = failure {
            return attempt.checkedForChanges ? .fail(error) : .checkForChanges
        }
        return start(.forced, now: now)
    }

    private mutating func start(_ need: Need, now: Date) -> Decision {
        running = need
        runningCalledEndpoint = false
        if case .forced = need { lastForcedRefresh = now }
        return .start(need)
    }

    /// Whether a request for `current` should also start a refresh nobody waits for: the token
    /// is inside its advisory window, nothing runs, and the failure state allows a call.
    private mutating func startsBackgroundRefresh(now: Date) -> Bool {
        guard running == nil, let current, windows.freshness(of: current, at: now) == .refreshAdvised else { return false }
        switch failure {
        case .permanent: return false
        case .transient(_, let retryAt, _) where now < retryAt: return false
        case .transient, .none: break
        }
        running = .fresh
        runningCalledEndpoint = false
        return true
    }

    /// Which tokens meet a need: the windows, and the cut-off of a reload.
    struct Acceptance: Sendable, Equatable {
        var windows: RefreshWindows
        /// Tokens obtained before this instant were obtained under settings a reload replaced.
        var notObtainedBefore: Date?

        /// Whether `tokens` can be handed out for `need` at `now` without a refresh.
        func satisfies(_ tokens: TokenSet, _ need: Need, now: Date) -> Bool {
            if let notObtainedBefore, (tokens.obtainedAt ?? .distantPast) < notObtainedBefore { return false }
            let freshness = windows.freshness(of: tokens, at: now)
            switch need {
            case .usable: return freshness >= .refreshAdvised
            case .fresh: return freshness == .fresh
            case .replacing(let rejected): return tokens.accessToken != rejected && freshness >= .refreshAdvised
            case .forced: return false
            }
        }
    }

    var acceptance: Acceptance { Acceptance(windows: windows, notObtainedBefore: notObtainedBefore) }

    /// Whether `tokens` can be handed out for `need` at `now` without a refresh.
    func satisfies(_ tokens: TokenSet, _ need: Need, now: Date) -> Bool {
        acceptance.satisfies(tokens, need, now: now)
    }

    private func isUsable(_ tokens: TokenSet, now: Date) -> Bool {
        satisfies(tokens, .usable, now: now)
    }

    private func isReactiveRefreshThrottled(now: Date) -> Bool {
        guard let lastReactiveCall else { return false }
        return now < lastReactiveCall + minRefreshInterval.timeInterval
    }

    private func isBackingOff(now: Date) -> Bool {
        if case .transient(_, let retryAt, _) = failure { return now < retryAt }
        return false
    }

    // MARK: What the broker found out

    /// The token read from the store at start: adopted when it can be used.
    mutating func load(_ tokens: TokenSet, now: Date) -> Bool {
        guard current == nil, isUsable(tokens, now: now) else { return false }
        current = tokens
        return true
    }

    /// A usable token found in the store while the endpoint was failing (another process got
    /// it): adopted, and the failure state ends.
    mutating func offer(_ tokens: TokenSet, now: Date) -> Bool {
        guard isUsable(tokens, now: now) else { return false }
        current = tokens
        failure = .none
        return true
    }

    /// The store or the client secret as they are now. Returns whether they changed since the
    /// permanent failure, which then ends.
    mutating func recheck(_ watch: Watch) -> Bool {
        guard case .permanent(_, let since) = failure, since.isChanged(by: watch) else { return false }
        failure = .none
        return true
    }

    mutating func callingEndpoint(for need: Need, now: Date) {
        runningCalledEndpoint = true
        if case .replacing = need { lastReactiveCall = now }
    }

    /// The token was replaced by hand: marked expired (`POST /token/expire`) or a refresh token
    /// imported (`tokenproxy login`). Whatever failure there was, the next need starts afresh.
    mutating func replaced(by tokens: TokenSet) {
        current = tokens
        failure = .none
    }

    /// A reload changed `token.*` (SPEC §8). With `dropTokens` (another endpoint, client, grant
    /// or scope), tokens obtained until now are no longer used.
    mutating func reconfigure(windows: RefreshWindows, minRefreshInterval: Duration, dropTokens: Bool, now: Date) {
        self.windows = windows
        self.minRefreshInterval = minRefreshInterval
        failure = .none
        if dropTokens {
            notObtainedBefore = now
            current = nil
        }
    }

    /// The refresh under way ended with `outcome`. Returns what the needs that waited for it get,
    /// and what to report.
    mutating func finished(_ outcome: Outcome, now: Date, random: Double) -> (Result<TokenSet, TokenBrokerError>, Report) {
        let calledEndpoint = runningCalledEndpoint
        let need = running
        running = nil
        runningCalledEndpoint = false
        switch outcome {
        case .refreshed(let tokens):
            current = tokens
            failure = .none
            lastRefresh = .init(at: now, succeeded: true, detail: "refreshed")
            return (.success(tokens), .refreshed(tokens))
        case .adopted(let tokens):
            current = tokens
            failure = .none
            return (.success(tokens), .adopted(tokens))
        case .failed(let error, let retryAfter):
            let untilMandatory = current.flatMap { tokens in
                isUsable(tokens, now: now) ? windows.deadlines(of: tokens).map { Duration(timeInterval: $0.mustRefreshAt.timeIntervalSince(now)) } : nil
            }
            let holdsToken = untilMandatory != nil
            // Tries crowded into the refresh window must not lengthen the pauses once the token
            // has lapsed (SPEC §4): the count starts again when the last valid token is gone.
            let count: Int
            if case .transient(let previous, _, _) = failure, holdsToken || !failedHoldingToken { count = previous + 1 } else { count = 1 }
            failedHoldingToken = holdsToken
            let delay = backoff.pause(afterFailures: count, untilMandatory: untilMandatory, retryAfter: retryAfter, random: random)
            let reason = Self.reason(error)
            failure = .transient(count: count, retryAt: now + delay.timeInterval, reason: reason)
            lastRefresh = .init(at: now, succeeded: false, detail: reason)
            // Those who waited are told when the next try is due (`Retry-After`, SPEC §4).
            var told = error
            if case .unavailable(let reason, _) = error { told = .unavailable(reason: reason, retryAfter: delay) }
            return (.failure(told), .failed(reason: reason, failures: count, retryIn: delay, calledEndpoint: calledEndpoint))
        case .refused(let error, let watch, let remaining):
            failure = .permanent(error, watch: watch)
            if let remaining { current = remaining }
            if case .replacing(let rejected)? = need, current?.accessToken == rejected {
                // The upstream refused this token and nothing can replace it: it is not handed out
                // again, so requests and /readyz agree (SPEC §7), however the refusal was learned.
                current?.dropAccessToken()
            }
            lastRefresh = .init(at: now, succeeded: false, detail: Self.reason(error))
            return (.failure(error), .refused(error, calledEndpoint: calledEndpoint))
        }
    }

    static func reason(_ error: TokenBrokerError) -> String {
        switch error {
        case .reauthenticationRequired(let reason), .unavailable(let reason, _), .misconfigured(let reason): reason
        case .rateLimited: error.description
        }
    }

    // MARK: Maintenance

    /// When the token should next be looked after: the advisory window of the current token,
    /// the end of a backoff pause, or soon while a permanent failure waits for a new store.
    func nextCheck(now: Date) -> Date {
        switch failure {
        case .transient(_, let retryAt, _):
            return retryAt
        case .permanent:
            return now + 0.5
        case .none:
            guard let current, let deadlines = windows.deadlines(of: current), satisfies(current, .usable, now: now) else { return now }
            return deadlines.refreshAt
        }
    }
}
