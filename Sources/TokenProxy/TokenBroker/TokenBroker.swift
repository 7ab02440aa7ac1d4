import FoundationEssentials
import Logging
import Tracing

/// Hands out access tokens and refreshes them through the store-and-lock protocol of SPEC §3, so
/// that every process sharing a store causes one token-endpoint call per expiry.
///
/// The decisions are ``RefreshGate``'s; the actor carries them out: it reads and writes the
/// store, takes the lock and calls the endpoint (blocking calls on the blocking-I/O pool),
/// publishes the token for the data path and reports what happened.
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

    /// What happened to the token, for metrics and systemd's `STATUS=`. Only calls this process
    /// made to the token endpoint are `refreshed` or failures; a token another process obtained
    /// is `adopted`.
    public enum RefreshEvent: Sendable {
        /// A call to the token endpoint is starting.
        case refreshing
        case refreshed(expiresAt: Date?)
        case adopted(expiresAt: Date?)
        case transientFailure(reason: String)
        case reauthenticationRequired(reason: String)
        case misconfigured(reason: String)
        /// The refresh token expires within `token.refreshTokenWarning`: a login will be needed.
        case refreshTokenExpiring(expiresAt: Date)
        /// A refresh ended, or a token was adopted: what the status page lists and `/events` tells.
        case recorded(RefreshHistoryEntry)
    }

    /// One refresh as the status page lists it (SPEC §7): never a token.
    public struct RefreshHistoryEntry: Sendable, Equatable {
        public enum Result: String, Sendable {
            case refreshed, adopted, failed, refused
        }

        public var at: Date
        /// Why it ran: `expiry`, `proactive`, `401`, `forced`, or `store` for a token another
        /// process stored.
        public var trigger: String
        public var result: Result
        public var duration: Duration
        /// The new token's expiry, or why it failed.
        public var expiresAt: Date?
        public var detail: String?
        /// Whether the failure needs a new login.
        public var reauthenticationRequired = false
    }

    /// How many refreshes `/status` keeps per identity.
    static let historyKept = 10

    /// The outcome of the last refresh attempt, for status reports.
    public struct RefreshRecord: Sendable, Equatable {
        public var at: Date
        public var succeeded: Bool
        public var detail: String
    }

    var configuration: Configuration.Token
    var storage: any TokenStorage
    var endpoint: any TokenEndpoint
    let logger: Logger
    /// The wall clock every decision reads (injected, so that tests never sleep to see a rule work).
    let now: @Sendable () -> Date
    /// Where the data path reads the current token without asking the actor.
    public nonisolated let publisher: TokenPublisher
    var gate: RefreshGate
    var refreshTask: Task<Result<TokenSet, TokenBrokerError>, Never>?
    /// Whether a refreshed token is written to the store before anyone uses it. One-shot
    /// commands must (they exit right after); the proxy writes while the first requests use it.
    let writesBeforeUse: Bool
    var pendingWrite: Task<Void, Never>?
    /// An unparseable store seen under the lock, and since when (the refresh protocol moves it
    /// aside only after 5 s unchanged, SPEC §3).
    var corruptSighting: RefreshProtocol.CorruptSighting?
    private var loaded = false
    /// The last warning that the refresh token expires soon, so that it is repeated hourly only.
    var lastRefreshTokenWarning: (expiresAt: Date, at: Date)?
    /// Whether issuer discovery ran for the current configuration (its result is kept).
    var discovered = false
    /// The maintenance loop's current pause; cancelled when the token changes.
    var maintenancePause: Task<Void, Never>?
    /// Watches the storage for other processes' changes while the maintenance loop runs.
    var storageWatcher: Task<Void, Never>?
    /// The last note about a dropped access token, so that it is logged once per store.
    private var lastDiscardNote: String?
    /// Told about every refresh that reached the token endpoint (metrics, systemd status).
    let observer: (@Sendable (RefreshEvent) -> Void)?
    /// A token exchange's subject identity's current token (SPEC §2.4), got as a request gets
    /// it: refreshed first when needed.
    var subjectToken: (@Sendable () async throws(TokenBrokerError) -> String)?
    /// The subject token the current token was exchanged from, by this process (`nil`: a token
    /// loaded or adopted, of unknown origin).
    var exchangedFrom: String?
    /// The subject identity's latest token, as its changes were announced.
    var latestSubject: String?
    /// The subject token got for the refresh under way, before its lock was taken.
    var prefetchedSubject: String?
    /// An access token exchanged from a subject token that has since been replaced: not handed
    /// out again, but replaced at its next need, as a rejected one is.
    var supersededToken: String?
    /// The latest refreshes and adoptions, oldest first.
    var history: [RefreshHistoryEntry] = []
    /// A span per refresh, when traces are on (SPEC §2.6); requests that waited link to it.
    nonisolated let refreshTraces: RefreshTraces?

    public init(
        configuration: Configuration.Token,
        endpoint: TokenEndpointClient,
        logger: Logger,
        storage: (any TokenStorage)? = nil,
        backoff: RefreshBackoff = RefreshBackoff(),
        writesBeforeUse: Bool = true,
        observer: (@Sendable (RefreshEvent) -> Void)? = nil,
        onPublish: (@Sendable (PublishedToken) -> Void)? = nil,
        clock: @escaping @Sendable () -> Date = { Date() }
    ) {
        self.init(
            configuration: configuration, tokenEndpoint: endpoint, logger: logger, storage: storage, backoff: backoff,
            writesBeforeUse: writesBeforeUse, observer: observer, onPublish: onPublish, clock: clock
        )
    }

    /// A broker over any token endpoint (a fake one in tests) and any clock.
    init(
        configuration: Configuration.Token,
        tokenEndpoint endpoint: any TokenEndpoint,
        logger: Logger,
        storage: (any TokenStorage)? = nil,
        backoff: RefreshBackoff = RefreshBackoff(),
        writesBeforeUse: Bool = true,
        observer: (@Sendable (RefreshEvent) -> Void)? = nil,
        onPublish: (@Sendable (PublishedToken) -> Void)? = nil,
        refreshTraces: RefreshTraces? = nil,
        clock: @escaping @Sendable () -> Date = { Date() }
    ) {
        self.refreshTraces = refreshTraces
        self.now = clock
        self.publisher = TokenPublisher(onPublish: onPublish)
        self.writesBeforeUse = writesBeforeUse
        self.observer = observer
        self.configuration = configuration
        self.gate = RefreshGate(
            windows: RefreshWindows(refreshBefore: configuration.refreshBefore, minValidity: configuration.minValidity),
            minRefreshInterval: configuration.minRefreshInterval, backoff: backoff
        )
        self.storage = storage ?? FileTokenStorage(store: configuration.store, lockFile: configuration.lockFile)
        self.endpoint = endpoint
        self.logger = logger
    }

    /// A token that meets `need`, refreshing it if necessary.
    public func token(for need: Need) async throws(TokenBrokerError) -> TokenSet {
        if !loaded { await loadStore() }
        var need = need
        if let superseded = supersededToken {
            if gate.current?.accessToken == superseded, need == .usable || need == .fresh {
                need = .replacing(rejected: superseded)
            } else if gate.current?.accessToken != superseded {
                supersededToken = nil
            }
        }
        var attempt = RefreshGate.Attempt(need: need)
        while true {
            switch gate.decide(attempt, now: now()) {
            case .use(let tokens, let refreshInBackground):
                if refreshInBackground { refreshTask = launchRefresh(.fresh) }
                return tokens
            case .join:
                guard let refreshTask else {
                    attempt.joined = .failure(.unavailable(reason: "internal error: no refresh to join", retryAfter: nil))
                    continue
                }
                attempt.joined = await refreshTask.value
            case .start(let need):
                let task = launchRefresh(need)
                refreshTask = task
                attempt.joined = await task.value
            case .checkForChanges:
                if gate.recheck(await watch(storeMatters: true)) {
                    logger.info("the token store or the client secret changed since the refusal; trying again", metadata: ["store": "\(storage.name)"])
                }
                attempt.checkedForChanges = true
            case .lookInStore:
                if let stored = try? await readStore().tokens, gate.offer(stored, now: now()) {
                    publishCurrent()
                }
                attempt.lookedInStore = true
            case .fail(let error):
                throw error
            }
        }
    }

    /// The token a request would be sent with now, got the way the data path gets it: the
    /// published token while it is usable, else the broker's answer for a `.usable` need (which
    /// may refresh, or fail as a request would). `/readyz` asks this very question, so that it
    /// always agrees with what requests get (SPEC §7).
    public nonisolated func tokenForRequest(_ need: Need = .usable) async throws(TokenBrokerError) -> PublishedToken {
        if case .usable = need, let token = publisher.usableToken() { return token }
        _ = try await token(for: need)
        // The broker published what it returned; a token it could not publish (no expiry) is
        // refused like any unusable one.
        guard let token = publisher.latest() else { throw .unavailable(reason: "the token has no usable expiry", retryAfter: nil) }
        return token
    }

    /// Adopts what the store holds, if it is usable, without refreshing: at startup, requests
    /// must not wait for a refresh that the token on disk makes unnecessary.
    public func loadStore() async {
        loaded = true
        guard gate.current == nil, let stored = try? await readStore(authoritative: true).tokens, gate.load(stored, now: now()) else { return }
        publishCurrent()
    }

    /// Another process changed the store (fleet `NOTIFY`, SPEC §3.1, or the store file seen
    /// replaced): a newer usable token there is adopted without a call, and a permanent failure
    /// looks again at what changed.
    public func storageChanged() async {
        let held = gate.current
        guard let stored = try? await readStore().tokens else { return }
        // While this process refreshes, or once it got a token during the read, the store is
        // behind it (the proxy writes a new token after its first use): nothing there is news.
        let settled = refreshTask == nil && pendingWrite == nil && gate.current?.accessToken == held?.accessToken
        // Its own writes come back here too: only another, newer access token is news.
        if settled, stored.accessToken != held?.accessToken, stored.isNewer(than: held), gate.offer(stored, now: now()) {
            publishCurrent()
            logger.info("token adopted from the store (refreshed by another process)", metadata: ["store": "\(storage.name)", "expiresAt": "\(stored.expiresAt.map(RFC3339.format) ?? "unknown")"])
            observer?(.adopted(expiresAt: stored.expiresAt))
            record(RefreshHistoryEntry(at: now(), trigger: "store", result: .adopted, duration: .zero, expiresAt: stored.expiresAt))
        } else {
            maintenancePause?.cancel()
        }
    }

    var isRefreshing: Bool { gate.running != nil }

    /// Waits until no refresh runs and its token is in the store: the one started in the
    /// background for a token inside its advisory window, say.
    func refreshSettled() async {
        while let refreshTask {
            _ = await refreshTask.value
        }
        await finishWrites()
    }

    private func launchRefresh(_ need: Need) -> Task<Result<TokenSet, TokenBrokerError>, Never> {
        Task { await self.runRefresh(need) }
    }

    private func runRefresh(_ need: Need) async -> Result<TokenSet, TokenBrokerError> {
        let started = ContinuousClock.now
        // Ahead of its expiry while the token can still be sent, or because it cannot.
        let ahead = gate.current.map { gate.satisfies($0, .usable, now: now()) } ?? false
        let trigger = Self.trigger(need, ahead: ahead)
        let span = refreshTraces?.start(reason: trigger)
        // Inside the span, the refresh's log lines carry its trace_id and span_id.
        let outcome = await InstrumentationContext.withValue(span?.context) { await acquire(need) }
        let (result, report) = gate.finished(outcome, now: now(), random: Double.random(in: 0..<1))
        refreshTask = nil
        // The subject changed while this exchange was under way: its token is already old.
        if let latestSubject, let from = exchangedFrom, from != latestSubject, let current = gate.current?.accessToken {
            supersede(current)
        }
        publishCurrent()
        let entry = InstrumentationContext.withValue(span?.context) {
            self.report(report, need: need, trigger: trigger, elapsed: started.duration(to: .now))
        }
        if let span, let refreshTraces {
            refreshTraces.end(span, result: entry.result.rawValue, failure: entry.detail)
        }
        return result
    }

    /// Publishes the gate's token for the data path and wakes the maintenance loop, whose
    /// schedule follows the token however it was obtained (SPEC §5).
    func publishCurrent() {
        let superseded = supersededToken != nil && gate.current?.accessToken == supersededToken
        publisher.publish(gate.current, windows: gate.windows, superseded: superseded)
        maintenancePause?.cancel()
    }

    /// Uses `source` for a token exchange's `subjectIdentity`.
    func useSubject(_ source: @escaping @Sendable () async throws(TokenBrokerError) -> String) {
        subjectToken = source
    }

    /// The subject identity has a new token (SPEC §2.4): a token exchanged from the previous one
    /// is refreshed at its next need, not at once (nobody may need it).
    func subjectChanged(to subject: String) {
        latestSubject = subject
        // An exchange under way is checked when it delivers (it may have used either token).
        guard exchangedFrom != subject, !isRefreshing, let current = gate.current?.accessToken else { return }
        supersede(current)
        publishCurrent()
    }

    private func supersede(_ accessToken: String) {
        guard supersededToken != accessToken else { return }
        exchangedFrom = nil
        supersededToken = accessToken
        logger.info("the subject identity's token changed; the exchanged token is replaced at its next use")
    }

    func readStore(authoritative: Bool = false) async throws(TokenBrokerError) -> TokenStore.Contents {
        try await readStoreVersion(authoritative: authoritative).contents
    }

    /// The store's contents and the version they came from; `authoritative` reads past a
    /// copy kept by change notifications (under the lock, always).
    func readStoreVersion(authoritative: Bool = false) async throws(TokenBrokerError) -> StoredTokens {
        let read: StoredTokens
        do {
            read = try await storage.read(now: now(), authoritative: authoritative)
        } catch {
            throw Self.brokerError(error)
        }
        if case .tokens(_, let discarded?) = read.contents, discarded != lastDiscardNote {
            lastDiscardNote = discarded
            logger.warning("the token store's access token was refused and will be replaced by a refresh", metadata: ["store": "\(storage.name)", "reason": "\(discarded)"])
        }
        return read
    }

    static func brokerError(_ error: TokenStoreError) -> TokenBrokerError {
        switch error {
        case .refused(_, let reason): .misconfigured(reason: reason)
        case .system, .unavailable, .superseded: .unavailable(reason: error.description, retryAfter: nil)
        }
    }

    /// What a permanent failure watches, as it is now; `storeVersion`, when given, is the
    /// version of the store a decision was made on (a change after it must count).
    func watch(storeMatters: Bool, storeVersion: StorageVersion?? = nil) async -> RefreshGate.Watch {
        let endpoint = self.endpoint
        let version = await storage.currentVersion()
        let client = await BlockingIO.run { try? endpoint.credentials(refreshToken: nil).clientFingerprint }
        return RefreshGate.Watch(store: storeVersion ?? version, client: client, storeMatters: storeMatters)
    }

    /// Logs and records a refresh's outcome; returns its history entry.
    @discardableResult
    private func report(_ report: RefreshGate.Report, need: Need, trigger: String, elapsed: Duration) -> RefreshHistoryEntry {
        var metadata: Logger.Metadata = ["trigger": "\(Self.describe(need))", "durationMs": "\(elapsed.milliseconds)"]
        var entry = RefreshHistoryEntry(at: now(), trigger: trigger, result: .refreshed, duration: elapsed)
        switch report {
        case .refreshed(let tokens):
            if let expiresAt = tokens.expiresAt { metadata["expiresAt"] = "\(RFC3339.format(expiresAt))" }
            logger.info("token refreshed", metadata: metadata)
            observer?(.refreshed(expiresAt: tokens.expiresAt))
            entry.expiresAt = tokens.expiresAt
        case .adopted(let tokens):
            if let expiresAt = tokens.expiresAt { metadata["expiresAt"] = "\(RFC3339.format(expiresAt))" }
            logger.info("token adopted from the store (refreshed by another process)", metadata: metadata)
            observer?(.adopted(expiresAt: tokens.expiresAt))
            (entry.result, entry.expiresAt) = (.adopted, tokens.expiresAt)
        case .failed(let reason, let failures, let retryIn, let calledEndpoint):
            metadata["reason"] = "\(reason)"
            metadata["failures"] = "\(failures)"
            metadata["retryInMs"] = "\(retryIn.milliseconds)"
            logger.warning("token refresh failed; will retry", metadata: metadata)
            if calledEndpoint { observer?(.transientFailure(reason: reason)) }
            (entry.result, entry.detail) = (.failed, reason)
        case .refused(let error, let calledEndpoint):
            metadata["reason"] = "\(RefreshGate.reason(error))"
            switch error {
            case .misconfigured(let reason):
                logger.error("token refresh refused: configuration error; nothing is retried until the configuration changes", metadata: metadata)
                if calledEndpoint { observer?(.misconfigured(reason: reason)) }
            default:
                logger.error("token refresh refused: re-authentication required", metadata: metadata)
                if calledEndpoint { observer?(.reauthenticationRequired(reason: RefreshGate.reason(error))) }
                entry.reauthenticationRequired = true
            }
            (entry.result, entry.detail) = (.refused, RefreshGate.reason(error))
        }
        record(entry)
        return entry
    }

    /// Keeps `entry` in the history and tells the observer.
    private func record(_ entry: RefreshHistoryEntry) {
        history.append(entry)
        if history.count > Self.historyKept { history.removeFirst(history.count - Self.historyKept) }
        observer?(.recorded(entry))
    }

    /// The reason a refresh ran, as spans and the status page name it (SPEC §2.6).
    static func trigger(_ need: Need, ahead: Bool) -> String {
        switch need {
        case .usable, .fresh: ahead ? "proactive" : "expiry"
        case .replacing: "401"
        case .forced: "forced"
        }
    }

    static func describe(_ need: Need) -> String {
        switch need {
        case .usable, .fresh: "expiry"
        case .replacing: "upstream 401"
        case .forced: "forced"
        }
    }

    /// Closes the token endpoint client's and the storage's connections; call once before the
    /// process exits.
    public func shutdown() async {
        await finishWrites()
        await endpoint.shutdown()
        await storage.shutdown()
    }
}
