import FoundationEssentials

/// The protocol of SPEC §3, steps 2–4, for one refresh of this process, decided without I/O:
/// read the store, take the lock, read again, call the endpoint, write, release — with adoption,
/// fencing, the re-read that must confirm an `invalid_grant`, and the quarantine of a store that
/// stays unparseable.
///
/// ``TokenBroker`` carries out each ``Action`` and reports what came of it through the event
/// methods, each of which returns the next action, until ``Action/done``. The machine says when
/// the lock is released and whether the new token is written before or after it is handed out.
struct RefreshProtocol: Sendable {
    typealias Need = TokenBroker.Need
    typealias Outcome = RefreshGate.Outcome

    enum Action: Sendable, Equatable {
        /// Read the store; `authoritative` reads past a copy kept by change notifications.
        case readStore(authoritative: Bool)
        /// Discover the endpoints the configuration leaves out (a no-op once discovered).
        case discoverEndpoints
        case takeLock
        /// Read the client credentials afresh, for a call with `refreshToken`.
        case readCredentials(refreshToken: String?)
        case callEndpoint(TokenCredentials)
        /// Write under the lock; `replacing` is the version the decision was made on.
        case write(TokenSet, replacing: StorageVersion?)
        /// Move an unparseable store aside, unless it changed since it was read as `version`.
        case quarantine(StorageVersion, reason: String)
        case releaseLock
        /// Tell the operator what the protocol decided; then ``noted()``.
        case note(Note)
        /// The refresh's outcome: hand it to the needs that wait for it, then ``delivered()``
        /// (the store may still be written, after use, while the lock is held).
        case deliver(Outcome)
        case done
    }

    /// What the operator is told about a decision (the shell logs it).
    enum Note: Sendable, Equatable {
        /// The store cannot be parsed; this need treats it as empty and leaves it in place.
        case corruptStoreKept(reason: String)
        /// The endpoint refused, but the store changed meanwhile: its tokens are used.
        case refusedButStoreChanged(error: String)
        /// A fenced write was refused: the store moved on; `discarding` what this process had.
        case superseded(discarding: String)
    }

    /// An unparseable store, and since when it has looked exactly like this.
    struct CorruptSighting: Sendable, Equatable {
        var version: StorageVersion
        var since: Date
    }

    /// How long a store must stay unparseable and unchanged before it is moved aside: a file
    /// being written in place (`echo … > token.json`) is never taken for a corrupt one.
    static let quarantineDelay: Double = 5

    let need: Need
    private(set) var configuration: Configuration.Token
    let storeName: String
    /// Whether a new token is written before anyone uses it (one-shot commands, and storage
    /// that fences its writes); otherwise it is handed out first and written under the lock.
    let writesBeforeUse: Bool
    /// Which tokens meet a need (the gate's windows and reload cut-off).
    let acceptance: RefreshGate.Acceptance
    /// Kept across refreshes by the broker: the quarantine waits for 5 s of the same content.
    private(set) var corruptSighting: CorruptSighting?

    private var state: State = .initial
    private var lockHeld = false
    /// Whether discovery was asked for in this refresh.
    private var discoveryAsked = false
    /// What to do once a note has been told.
    private var afterNote: Action?

    /// The store as read under the lock, and how many times the endpoint has been asked.
    private struct Context: Sendable {
        var stored: StoredTokens
        var attempt: Int
        var tokens: TokenSet? { stored.contents.tokens }
    }

    private enum State: Sendable {
        case initial
        case readingUnlocked
        case discovering(then: Context?)
        case locking
        case readingLocked
        case quarantiningUnderLock(StoredTokens)
        case readingCredentials(Context)
        case calling(Context, TokenCredentials)
        case quarantiningBeforeWrite(TokenSet, Context)
        case writingToken(TokenSet)
        case rereadingAfterRefusal(Context, TokenCredentials, TokenEndpointRefusal)
        case writingRejection(TokenSet, error: TokenBrokerError, client: String)
        case rereadingAfterSuperseded
        case releasing(then: Outcome?)
        case delivering(thenWrite: (TokenSet, StorageVersion?)?)
        case writingAfterUse
        case done
    }

    init(need: Need, configuration: Configuration.Token, storeName: String, writesBeforeUse: Bool, acceptance: RefreshGate.Acceptance, corruptSighting: CorruptSighting?) {
        self.need = need
        self.configuration = configuration
        self.storeName = storeName
        self.writesBeforeUse = writesBeforeUse
        self.acceptance = acceptance
        self.corruptSighting = corruptSighting
    }

    // MARK: Events

    /// 2. Another process may already have refreshed: look without the lock.
    mutating func start() -> Action {
        precondition(isIn(.initial), "RefreshProtocol started twice")
        state = .readingUnlocked
        return .readStore(authoritative: false)
    }

    mutating func storeRead(_ read: StoredTokens, now: Date) -> Action {
        switch state {
        case .readingUnlocked:
            if let tokens = read.contents.tokens, acceptance.satisfies(tokens, need, now: now) { return finish(.adopted(tokens)) }
            // Discovery happens before the lock (it may take a while), but only when a call may
            // follow: with no refresh token there is nothing to call with (SPEC §1: exit 3).
            if mayCall(with: read.contents.tokens) {
                discoveryAsked = true
                state = .discovering(then: nil)
                return .discoverEndpoints
            }
            state = .locking
            return .takeLock
        case .readingLocked:
            // 3. Under the lock, look once more: the holder waited for may have refreshed.
            guard case .corrupt(let reason, let version) = read.contents else { return decideUnderLock(read, now: now) }
            if let sighting = corruptSighting, sighting.version == version {
                if now.timeIntervalSince(sighting.since) >= Self.quarantineDelay {
                    state = .quarantiningUnderLock(read)
                    return .quarantine(version, reason: reason)
                }
            } else {
                corruptSighting = CorruptSighting(version: version, since: now)
            }
            // The need at hand proceeds as if the store held nothing (SPEC §3).
            let next = decideUnderLock(read, now: now)
            return note(.corruptStoreKept(reason: reason), then: next)
        case .rereadingAfterRefusal(var context, let credentials, let refusal):
            let message = refusal.message(configuration)
            guard read.contents != context.stored.contents else {
                // The store confirms the refusal: record it for every process, and drop an access
                // token the upstream refused (SPEC §4).
                var marked = context.tokens ?? TokenSet()
                marked.rejection = .init(error: refusal.error, errorDescription: refusal.description, credential: credentials.fingerprint, at: now)
                return writeRejection(marked, error: .reauthenticationRequired(reason: message), context: context, client: credentials.clientFingerprint)
            }
            // Someone wrote the store meanwhile (a hand-over, or a process that ignores the lock).
            guard let newer = read.contents.tokens, context.attempt < 3 else {
                // Empty or half written: a writer is at work; the next need looks again.
                return finish(.refused(.reauthenticationRequired(reason: message), watch: watch(read.version, credentials, storeMatters: true), remaining: nil))
            }
            let next: Action
            if acceptance.satisfies(newer, need, now: now) {
                next = finish(.adopted(newer))
            } else {
                context.stored = read
                context.attempt += 1
                next = readCredentials(context)
            }
            return note(.refusedButStoreChanged(error: refusal.error), then: next)
        case .rereadingAfterSuperseded:
            if let newer = read.contents.tokens, acceptance.satisfies(newer, need, now: now) { return finish(.adopted(newer)) }
            return finish(.failed(.unavailable(reason: "the token store \(storeName) moved on during the refresh; trying again", retryAfter: nil), retryAfter: nil))
        default:
            preconditionFailure("storeRead in \(state)")
        }
    }

    /// Discovery succeeded (or was not needed); `configuration` is what it filled in.
    mutating func discovered(_ configuration: Configuration.Token) -> Action {
        guard case .discovering(let context) = state else { preconditionFailure("discovered in \(state)") }
        self.configuration = configuration
        if let context { return readCredentials(context) }
        state = .locking
        return .takeLock
    }

    mutating func lockTaken() -> Action {
        guard case .locking = state else { preconditionFailure("lockTaken in \(state)") }
        lockHeld = true
        state = .readingLocked
        return .readStore(authoritative: true)
    }

    mutating func credentialsRead(_ credentials: TokenCredentials, now: Date) -> Action {
        guard case .readingCredentials(let context) = state else { preconditionFailure("credentialsRead in \(state)") }
        let client = credentials.clientFingerprint
        if let rejection = context.tokens?.rejection, rejection.credential == credentials.fingerprint {
            // Another process was refused these very credentials: believe the store, no call.
            let said = rejection.errorDescription.map { " (\($0))" } ?? ""
            let error = TokenBrokerError.reauthenticationRequired(
                reason: "the token endpoint refused these credentials with \(rejection.error)\(said) at \(RFC3339.format(rejection.at)); \(configuration.reauthenticationRemedy)"
            )
            if case .replacing(let rejected) = need, var dropped = context.tokens, dropped.accessToken == rejected {
                // A 401 for the stored token, refused for good: the token goes, here as in the store.
                dropped.dropAccessToken()
                state = .writingRejection(dropped, error: error, client: client)
                return .write(dropped, replacing: context.stored.version)
            }
            return finish(.refused(error, watch: watch(context.stored.version, credentials, storeMatters: true), remaining: context.tokens))
        }
        if configuration.grant == .refreshToken, credentials.refreshToken == nil {
            let error = TokenBrokerError.reauthenticationRequired(reason: "the token store \(storeName) holds no refresh token; \(configuration.reauthenticationRemedy)")
            return finish(.refused(error, watch: watch(context.stored.version, credentials, storeMatters: true), remaining: context.tokens))
        }
        state = .calling(context, credentials)
        return .callEndpoint(credentials)
    }

    /// 4. What the token endpoint answered; `now` is when.
    mutating func endpointAnswered(_ response: TokenResponse, now: Date) -> Action {
        guard case .calling(let context, let credentials) = state else { preconditionFailure("endpointAnswered in \(state)") }
        switch response {
        case .granted(var granted):
            // Rotation replaces the refresh token; an answer without one keeps the old one.
            if granted.refreshToken == nil {
                granted.refreshToken = context.tokens?.refreshToken
                granted.refreshExpiresAt = context.tokens?.refreshExpiresAt
            }
            // The throttle of tools' refusal reports outlives the token they refused.
            granted.accessTokenRefusedAt = context.tokens?.accessTokenRefusedAt
            configuration.stampRefreshExpiry(&granted, now: now)
            if case .corrupt(let reason, let version) = context.stored.contents {
                // The new token replaces an unparseable file: keep that one for inspection.
                state = .quarantiningBeforeWrite(granted, context)
                return .quarantine(version, reason: reason)
            }
            return writeGranted(granted, replacing: context.stored.version)
        case .transient(let reason, let retryAfter):
            return finish(.failed(.unavailable(reason: reason, retryAfter: retryAfter), retryAfter: retryAfter))
        case .refused(let refusal):
            if refusal.kind == .configuration {
                // invalid_scope and the like: only a new configuration helps; the store is untouched.
                return finish(.refused(.misconfigured(reason: refusal.message(configuration)), watch: watch(context.stored.version, credentials, storeMatters: false), remaining: nil))
            }
            // Believe a refusal only once the store confirms it (SPEC §3).
            state = .rereadingAfterRefusal(context, credentials, refusal)
            return .readStore(authoritative: true)
        }
    }

    mutating func written(_ version: StorageVersion?) -> Action {
        switch state {
        case .writingToken(let tokens):
            return finish(.refreshed(tokens))
        case .writingRejection(let marked, let error, let client):
            return finish(.refused(error, watch: RefreshGate.Watch(store: version, client: client, storeMatters: true), remaining: marked))
        case .writingAfterUse:
            return releaseAfterUse()
        default:
            preconditionFailure("written in \(state)")
        }
    }

    /// A fenced write was refused: the lock was lost while this process worked, and another
    /// stored something newer (SPEC §3.1). The newer wins; nothing is written over it.
    mutating func superseded() -> Action {
        switch state {
        case .writingToken:
            state = .rereadingAfterSuperseded
            return note(.superseded(discarding: "the token this process obtained"), then: .readStore(authoritative: true))
        case .writingRejection:
            state = .rereadingAfterSuperseded
            return note(.superseded(discarding: "the refusal"), then: .readStore(authoritative: true))
        case .writingAfterUse:
            return releaseAfterUse()
        default:
            preconditionFailure("superseded in \(state)")
        }
    }

    mutating func quarantined(moved: Bool) -> Action {
        switch state {
        case .quarantiningUnderLock(let read):
            guard moved else { return decideUnderLock(read, now: nil) }
            corruptSighting = nil
            return decideUnderLock(StoredTokens(contents: .empty, version: nil), now: nil)
        case .quarantiningBeforeWrite(let granted, let context):
            if moved { corruptSighting = nil }
            return writeGranted(granted, replacing: moved ? nil : context.stored.version)
        default:
            preconditionFailure("quarantined in \(state)")
        }
    }

    /// A step failed: reading the store or the credentials, discovery, the lock, a write.
    mutating func failed(_ error: TokenBrokerError) -> Action {
        if case .writingAfterUse = state { return releaseAfterUse() }
        return finish(.failed(error, retryAfter: nil))
    }

    mutating func lockReleased() -> Action {
        guard case .releasing(let outcome) = state else { preconditionFailure("lockReleased in \(state)") }
        guard let outcome else {
            state = .done
            return .done
        }
        state = .delivering(thenWrite: nil)
        return .deliver(outcome)
    }

    mutating func noted() -> Action {
        guard let next = afterNote else { preconditionFailure("noted without a note") }
        afterNote = nil
        return next
    }

    /// The outcome was handed out; the store may still have to be written.
    mutating func delivered() -> Action {
        guard case .delivering(let write) = state else { preconditionFailure("delivered in \(state)") }
        guard let (tokens, version) = write else {
            state = .done
            return .done
        }
        state = .writingAfterUse
        return .write(tokens, replacing: version)
    }

    var isDone: Bool { isIn(.done) }

    // MARK: Steps

    private func isIn(_ probe: State) -> Bool {
        switch (state, probe) {
        case (.initial, .initial), (.done, .done): true
        default: false
        }
    }

    /// Whether a call to the endpoint may follow a read that found `tokens`.
    private func mayCall(with tokens: TokenSet?) -> Bool {
        configuration.grant != .refreshToken || tokens?.refreshToken != nil
    }

    /// `now` is `nil` after a quarantine (an empty store satisfies no need).
    private mutating func decideUnderLock(_ read: StoredTokens, now: Date?) -> Action {
        if let now, let tokens = read.contents.tokens, acceptance.satisfies(tokens, need, now: now) { return finish(.adopted(tokens)) }
        let context = Context(stored: read, attempt: 1)
        if !discoveryAsked, mayCall(with: read.contents.tokens) {
            // The store gained a refresh token between the two reads: discover now.
            discoveryAsked = true
            state = .discovering(then: context)
            return .discoverEndpoints
        }
        return readCredentials(context)
    }

    private mutating func readCredentials(_ context: Context) -> Action {
        state = .readingCredentials(context)
        return .readCredentials(refreshToken: context.tokens?.refreshToken)
    }

    private mutating func writeGranted(_ granted: TokenSet, replacing version: StorageVersion?) -> Action {
        if writesBeforeUse {
            state = .writingToken(granted)
            return .write(granted, replacing: version)
        }
        // Requests get the token now; the store is written while this process still holds the
        // lock, so other processes wait for the file, not the other way round.
        state = .delivering(thenWrite: (granted, version))
        return .deliver(.refreshed(granted))
    }

    private mutating func writeRejection(_ marked: TokenSet, error: TokenBrokerError, context: Context, client: String) -> Action {
        var marked = marked
        if case .replacing(let rejected) = need, marked.accessToken == rejected {
            // The upstream refused this access token and nothing can replace it: drop it, so that
            // `tokenproxy token` and /readyz tell the truth (SPEC §4).
            marked.dropAccessToken()
        }
        state = .writingRejection(marked, error: error, client: client)
        return .write(marked, replacing: context.stored.version)
    }

    private func watch(_ version: StorageVersion?, _ credentials: TokenCredentials, storeMatters: Bool) -> RefreshGate.Watch {
        RefreshGate.Watch(store: version, client: credentials.clientFingerprint, storeMatters: storeMatters)
    }

    /// Releases the lock if it is held, then delivers `outcome`.
    private mutating func finish(_ outcome: Outcome) -> Action {
        if lockHeld {
            lockHeld = false
            state = .releasing(then: outcome)
            return .releaseLock
        }
        state = .delivering(thenWrite: nil)
        return .deliver(outcome)
    }

    private mutating func releaseAfterUse() -> Action {
        lockHeld = false
        state = .releasing(then: nil)
        return .releaseLock
    }

    private mutating func note(_ note: Note, then next: Action) -> Action {
        afterNote = next
        return .note(note)
    }
}
