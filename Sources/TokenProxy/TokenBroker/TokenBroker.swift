import FoundationEssentials
import Logging

/// Hands out access tokens and refreshes them through the store-and-lock protocol of SPEC §3, so
/// that every process sharing a store causes one token-endpoint call per expiry.
///
/// Concurrent needs inside a process share one refresh (single flight). A refresh reads the
/// store, then takes the lock, reads the store again, and only then calls the endpoint and writes
/// the result before unlocking. Blocking calls run on the blocking-I/O pool.
public actor TokenBroker {
    /// What a caller needs the token for.
    public enum Need: Sendable, Equatable {
        /// A token that may be sent now (outside the mandatory window). A token inside the
        /// advisory window is returned at once and refreshed in the background.
        case usable
        /// A token outside the advisory window, for callers that keep it a while (`token --print`).
        case fresh
        /// The upstream refused `rejected` with 401: a different usable token. When the store
        /// already holds a newer token, that one is used; no refresh happens twice for one token.
        case replacing(rejected: String)
        /// A refresh whatever the store holds (`tokenproxy refresh`, `POST /token/refresh`).
        case forced
    }

    let configuration: Configuration.Token
    let windows: RefreshWindows
    let store: TokenStore
    let endpoint: TokenEndpointClient
    let backoff: RefreshBackoff
    let logger: Logger
    /// Where the data path reads the current token without asking the actor.
    public nonisolated let publisher = TokenPublisher()

    /// The token last read from the store or received from the endpoint.
    private(set) var current: TokenSet?
    private var refreshInFlight: Task<Result<TokenSet, TokenBrokerError>, Never>?
    var failure: FailureState = .none
    /// When the last 401-caused refresh happened (`token.minRefreshInterval` spaces them out).
    var lastReactiveRefresh: ContinuousClock.Instant?
    var lastRefresh: RefreshRecord?
    /// Whether a refreshed token is written to the store before anyone uses it. One-shot
    /// commands must (they exit right after); the proxy writes while the first requests use it.
    let writesBeforeUse: Bool
    var pendingWrite: Task<Void, Never>?
    /// Told about every refresh that reached the token endpoint (metrics, systemd status).
    let observer: (@Sendable (RefreshEvent) -> Void)?

    /// The outcome of one call to the token endpoint.
    public enum RefreshEvent: Sendable {
        /// A call to the token endpoint is starting.
        case refreshing
        case refreshed(expiresAt: Date?)
        case transientFailure(reason: String)
        case reauthenticationRequired(reason: String)
    }

    enum FailureState: Sendable {
        case none
        /// The endpoint failed `count` times in a row; no call before `retryAt`.
        case transient(count: Int, retryAt: ContinuousClock.Instant, reason: String)
        /// The credentials were refused; nothing is tried until the store or the client secret changes.
        case permanent(reason: String, storeVersion: TokenStore.Fingerprint?, clientVersion: String?)
    }

    /// The outcome of the last refresh attempt, for status reports.
    public struct RefreshRecord: Sendable {
        public var at: Date
        public var succeeded: Bool
        public var detail: String
    }

    public init(
        configuration: Configuration.Token,
        endpoint: TokenEndpointClient,
        logger: Logger,
        backoff: RefreshBackoff = RefreshBackoff(),
        writesBeforeUse: Bool = true,
        observer: (@Sendable (RefreshEvent) -> Void)? = nil
    ) {
        self.writesBeforeUse = writesBeforeUse
        self.observer = observer
        self.configuration = configuration
        self.windows = RefreshWindows(refreshBefore: configuration.refreshBefore, minValidity: configuration.minValidity)
        self.store = TokenStore(path: configuration.store)
        self.endpoint = endpoint
        self.backoff = backoff
        self.logger = logger
    }

    /// A token that meets `need`, refreshing it if necessary.
    public func token(for need: Need) async throws(TokenBrokerError) -> TokenSet {
        if current == nil { await loadStore() }
        if let current, satisfies(current, need) {
            startBackgroundRefreshIfAdvised(current)
            return current
        }
        if case .replacing(let rejected) = need, let current, current.accessToken == rejected, isReactiveRefreshThrottled(),
            windows.freshness(of: current, at: Date()) >= .refreshAdvised
        {
            // A backend that keeps answering 401 must not turn into a refresh storm: the caller
            // replays once with the token it has.
            return current
        }
        try await checkFailureState(for: need)
        // The failure check may have adopted a usable token another process stored.
        if let current, satisfies(current, need) { return current }
        // Join a refresh already under way; if its result does not meet this need (it adopted
        // the very token this caller saw rejected), run one more.
        if let refreshInFlight {
            let tokens = try await refreshInFlight.value.get()
            if satisfies(tokens, need) { return tokens }
        }
        return try await refresh(reason: need).get()
    }

    /// Adopts what the store holds, if it is usable, without refreshing: at startup, requests
    /// must not wait for a refresh that the token on disk makes unnecessary.
    public func loadStore() async {
        guard current == nil, let stored = try? await readStore(quarantineCorrupt: false).tokens,
            windows.freshness(of: stored, at: Date()) >= .refreshAdvised
        else { return }
        adopt(stored)
    }

    var isRefreshing: Bool { refreshInFlight != nil }

    /// Whether `tokens` can be handed out for `need` without a refresh.
    func satisfies(_ tokens: TokenSet, _ need: Need) -> Bool {
        let freshness = windows.freshness(of: tokens, at: Date())
        switch need {
        case .usable: return freshness >= .refreshAdvised
        case .fresh: return freshness == .fresh
        case .replacing(let rejected): return tokens.accessToken != rejected && freshness >= .refreshAdvised
        case .forced: return false
        }
    }

    private func isReactiveRefreshThrottled() -> Bool {
        guard let lastReactiveRefresh else { return false }
        return ContinuousClock.now < lastReactiveRefresh.advanced(by: configuration.minRefreshInterval)
    }

    /// Fails fast while the endpoint is known to fail, unless another process has meanwhile put
    /// a usable token into the store.
    private func checkFailureState(for need: Need) async throws(TokenBrokerError) {
        switch failure {
        case .none:
            return
        case .permanent(let reason, let storeVersion, let clientVersion):
            let (store, endpoint) = (self.store, self.endpoint)
            let (version, client) = await BlockingIO.run { (store.fingerprint(), try? endpoint.credentials(refreshToken: nil).fingerprint) }
            guard version == storeVersion, client == clientVersion else {
                logger.info("the token store or the client secret changed since the credentials were refused; trying again", metadata: ["store": "\(store.path)"])
                failure = .none
                return
            }
            throw .reauthenticationRequired(reason: reason)
        case .transient(_, let retryAt, let reason):
            let now = ContinuousClock.now
            guard now < retryAt, need != .forced else { return }
            if let stored = try? await readStore(quarantineCorrupt: false).tokens, satisfies(stored, need) {
                adopt(stored)
                return
            }
            throw .unavailable(reason: reason, retryAfter: now.duration(to: retryAt))
        }
    }

    private func startBackgroundRefreshIfAdvised(_ tokens: TokenSet) {
        guard refreshInFlight == nil, windows.freshness(of: tokens, at: Date()) == .refreshAdvised else { return }
        if case .transient(_, let retryAt, _) = failure, ContinuousClock.now < retryAt { return }
        if case .permanent = failure { return }
        _ = refresh(reason: .fresh)
    }

    /// Starts the single refresh of this process (or returns the one under way) and awaits it.
    @discardableResult
    private func refresh(reason: Need) -> Task<Result<TokenSet, TokenBrokerError>, Never> {
        if let refreshInFlight { return refreshInFlight }
        let task = Task { await self.runRefresh(reason: reason) }
        refreshInFlight = task
        return task
    }

    private func refresh(reason: Need) async -> Result<TokenSet, TokenBrokerError> {
        await refresh(reason: reason).value
    }

    private func runRefresh(reason: Need) async -> Result<TokenSet, TokenBrokerError> {
        let started = ContinuousClock.now
        let result: Result<TokenSet, TokenBrokerError>
        do {
            result = .success(try await acquire(reason: reason))
        } catch {
            result = .failure(error)
        }
        refreshInFlight = nil
        record(result, reason: reason, started: started)
        return result
    }

    func adopt(_ tokens: TokenSet) {
        current = tokens
        failure = .none
        publisher.publish(tokens, windows: windows)
    }

    func readStore(quarantineCorrupt: Bool) async throws(TokenBrokerError) -> TokenStore.Contents {
        let store = self.store
        let logger = self.logger
        do {
            return try await BlockingIO.run { () throws(TokenStoreError) in try store.read(quarantineCorrupt: quarantineCorrupt, logger: logger) }
        } catch {
            throw .unavailable(reason: error.description, retryAfter: nil)
        }
    }
}
