import FoundationEssentials
import Logging

extension TokenBroker {
    /// The protocol of SPEC §3, steps 2–4, for one refresh of this process.
    func acquire(reason: Need) async throws(TokenBrokerError) -> TokenSet {
        await finishWrites()
        // 2. Another process may already have refreshed.
        if let stored = try await readStore(quarantineCorrupt: false).tokens, satisfies(stored, reason) {
            adopt(stored)
            return stored
        }
        // 3. Under the lock, look once more: the holder we waited for may have refreshed.
        let lock = try await takeLock()
        var lockPassedOn = false
        defer { if !lockPassedOn { lock.release() } }
        var stored = try await readStore(quarantineCorrupt: true).tokens
        if let stored, satisfies(stored, reason) {
            adopt(stored)
            return stored
        }
        // 4. Call the endpoint; on invalid_grant, believe it only once the store confirms it.
        var attempts = 0
        while true {
            attempts += 1
            let credentials = try endpoint.credentials(refreshToken: stored?.refreshToken)
            if let rejection = stored?.rejection, rejection.credential == credentials.fingerprint {
                throw await permanentFailure("the token endpoint refused these credentials with \(rejection.error) at \(RFC3339.format(rejection.at))")
            }
            if configuration.grant == .refreshToken, credentials.refreshToken == nil {
                throw await permanentFailure("the store \(store.path) holds no refresh token")
            }
            if case .replacing = reason { lastReactiveRefresh = .now }
            observer?(.refreshing)
            switch await endpoint.requestToken(credentials) {
            case .granted(var tokens):
                // Rotation replaces the refresh token; an answer without one keeps the old one.
                tokens.refreshToken = tokens.refreshToken ?? stored?.refreshToken
                if writesBeforeUse {
                    try await write(tokens)
                    adopt(tokens)
                } else {
                    // Requests get the token now; the store is written while this process still
                    // holds the lock, so other processes wait for the file, not the other way round.
                    adopt(tokens)
                    lockPassedOn = true
                    pendingWrite = Task { await self.persist(tokens, thenRelease: lock) }
                }
                return tokens
            case .transient(let reason, let retryAfter):
                throw .unavailable(reason: reason, retryAfter: retryAfter)
            case .permanent(let error, let description):
                let again = try await readStore(quarantineCorrupt: true).tokens
                if let again, again.refreshToken != stored?.refreshToken || again.accessToken != stored?.accessToken, attempts < 3 {
                    // Someone wrote the store meanwhile (a person handing over a new refresh
                    // token, or a process that does not honour the lock): use what it holds.
                    logger.warning("token endpoint refused the refresh token, but the store changed meanwhile; using the store", metadata: ["error": "\(error)"])
                    if satisfies(again, reason) {
                        adopt(again)
                        return again
                    }
                    stored = again
                    continue
                }
                var marked = stored ?? TokenSet()
                marked.rejection = .init(error: error, errorDescription: description, credential: credentials.fingerprint, at: Date())
                try await write(marked)
                let detail = description.map { " (\($0))" } ?? ""
                throw await permanentFailure("the token endpoint refused the credentials: \(error)\(detail)")
            }
        }
    }

    /// Records a permanent failure against the store as it is now, and builds the error that
    /// tells the operator how to recover.
    private func permanentFailure(_ reason: String) async -> TokenBrokerError {
        let (store, endpoint) = (self.store, self.endpoint)
        let (version, client) = await BlockingIO.run { (store.fingerprint(), try? endpoint.credentials(refreshToken: nil).fingerprint) }
        let message = "\(reason); \(configuration.reauthenticationRemedy)"
        failure = .permanent(reason: message, storeVersion: version, clientVersion: client)
        return .reauthenticationRequired(reason: message)
    }

    private func persist(_ tokens: TokenSet, thenRelease lock: FileLock) async {
        try? await write(tokens)
        lock.release()
        pendingWrite = nil
    }

    /// Waits until the last refreshed token is in the store (before exit, or the next refresh).
    public func finishWrites() async {
        if let pendingWrite { await pendingWrite.value }
    }

    func takeLock() async throws(TokenBrokerError) -> FileLock {
        let path = configuration.lockFile
        let timeout = configuration.lockTimeout
        do {
            return try await BlockingIO.run { () throws(FileLockError) in try FileLock.acquire(path: path, timeout: timeout) }
        } catch {
            throw .unavailable(reason: error.description, retryAfter: nil)
        }
    }

    func write(_ tokens: TokenSet) async throws(TokenBrokerError) {
        let store = self.store
        do {
            try await BlockingIO.run { () throws(TokenStoreError) in
                store.removeAbandonedTemporaryFiles()
                try store.write(tokens)
            }
        } catch {
            logger.critical("the new token could not be saved; a rotated refresh token may be lost", metadata: ["error": "\(error)"])
            throw .unavailable(reason: error.description, retryAfter: nil)
        }
    }

    /// Logs the outcome and moves the failure state (backoff, or stop until the store changes).
    func record(_ result: Result<TokenSet, TokenBrokerError>, reason: Need, started: ContinuousClock.Instant) {
        let elapsed = started.duration(to: .now)
        var metadata: Logger.Metadata = ["trigger": "\(Self.describe(reason))", "durationMs": "\(elapsed.milliseconds)"]
        switch result {
        case .success(let tokens):
            if let expiresAt = tokens.expiresAt { metadata["expiresAt"] = "\(RFC3339.format(expiresAt))" }
            if tokens.obtainedAt.map({ $0 >= Date(timeIntervalSinceNow: -elapsed.timeInterval - 1) }) ?? false {
                lastRefresh = RefreshRecord(at: Date(), succeeded: true, detail: "refreshed")
                logger.info("token refreshed", metadata: metadata)
                observer?(.refreshed(expiresAt: tokens.expiresAt))
            } else {
                logger.debug("token taken from the store", metadata: metadata)
            }
        case .failure(.reauthenticationRequired(let message)):
            lastRefresh = RefreshRecord(at: Date(), succeeded: false, detail: message)
            logger.error("token refresh refused: re-authentication required", metadata: metadata.merging(["reason": "\(message)"]) { $1 })
            observer?(.reauthenticationRequired(reason: message))
        case .failure(.unavailable(let message, let retryAfter)):
            let count: Int
            if case .transient(let previous, _, _) = failure { count = previous + 1 } else { count = 1 }
            let untilMandatory = current.flatMap { windows.deadlines(of: $0) }.map { Duration(timeInterval: $0.mustRefreshAt.timeIntervalSinceNow) }
            var delay = backoff.delay(afterFailures: count, untilMandatory: untilMandatory, random: Double.random(in: 0..<1))
            if let retryAfter, retryAfter > delay, retryAfter <= backoff.maximum { delay = retryAfter }
            failure = .transient(count: count, retryAt: .now.advanced(by: delay), reason: message)
            lastRefresh = RefreshRecord(at: Date(), succeeded: false, detail: message)
            metadata["reason"] = "\(message)"
            metadata["failures"] = "\(count)"
            metadata["retryInMs"] = "\(delay.milliseconds)"
            logger.warning("token refresh failed; will retry", metadata: metadata)
            observer?(.transientFailure(reason: message))
        }
    }

    static func describe(_ need: Need) -> String {
        switch need {
        case .usable, .fresh: "expiry"
        case .replacing: "upstream 401"
        case .forced: "forced"
        }
    }
}
