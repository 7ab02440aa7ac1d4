import FoundationEssentials
import Logging

extension TokenBroker {
    /// The protocol of SPEC §3, steps 2–4, for one refresh of this process. Says which path it
    /// took: the endpoint called (`refreshed`), a token another process stored (`adopted`), or
    /// why it failed.
    func acquire(_ need: Need) async -> RefreshGate.Outcome {
        await finishWrites()
        do {
            // 2. Another process may already have refreshed.
            let first = try await readStore().tokens
            if let stored = first, gate.satisfies(stored, need, now: Date()) {
                return .adopted(stored)
            }
            // Discovery may take a while: before the lock, but only when a call may follow. With
            // no refresh token there is nothing to call with, and nothing to retry (SPEC §1: exit 3).
            if configuration.grant == .clientCredentials || first?.refreshToken != nil {
                try await discoverEndpoints()
            }
            // 3. Under the lock, look once more: the holder we waited for may have refreshed.
            let lock = try await takeLock()
            var lockPassedOn = false
            defer { if !lockPassedOn { lock.release() } }
            let read = try await readStoreUnderLock()
            var (stored, version) = (read.contents, read.version)
            if let tokens = stored.tokens, gate.satisfies(tokens, need, now: Date()) {
                return .adopted(tokens)
            }
            // 4. Call the endpoint; believe a refusal only once the store confirms it.
            for attempt in 1...3 {
                let tokens = stored.tokens
                let credentials = try endpoint.credentials(refreshToken: tokens?.refreshToken)
                if let rejection = tokens?.rejection, rejection.credential == credentials.fingerprint {
                    let said = rejection.errorDescription.map { " (\($0))" } ?? ""
                    let reason = "the token endpoint refused these credentials with \(rejection.error)\(said) at \(RFC3339.format(rejection.at)); \(configuration.reauthenticationRemedy)"
                    if case .replacing(let rejected) = need, var dropped = tokens, dropped.accessToken == rejected {
                        // A 401 for the stored token, refused for good: the token goes, from the
                        // store too, so that `tokenproxy token` and /readyz tell the truth (SPEC §4).
                        dropped.dropAccessToken()
                        guard case .written(let written) = try await write(dropped, replacing: version) else {
                            return try await superseded(need, discarding: "the refusal")
                        }
                        return await refused(.reauthenticationRequired(reason: reason), storeMatters: true, remaining: dropped, storeVersion: written)
                    }
                    return await refused(.reauthenticationRequired(reason: reason), storeMatters: true, remaining: tokens, storeVersion: version)
                }
                if configuration.grant == .refreshToken, credentials.refreshToken == nil {
                    let reason = "the token store \(storage.name) holds no refresh token; \(configuration.reauthenticationRemedy)"
                    return await refused(.reauthenticationRequired(reason: reason), storeMatters: true, remaining: nil, storeVersion: version)
                }
                // The store gained a refresh token between the two reads: discover now (once).
                try await discoverEndpoints()
                gate.callingEndpoint(for: need, now: Date())
                observer?(.refreshing)
                switch await endpoint.requestToken(credentials) {
                case .granted(var granted):
                    // Rotation replaces the refresh token; an answer without one keeps the old one.
                    if granted.refreshToken == nil {
                        granted.refreshToken = tokens?.refreshToken
                        granted.refreshExpiresAt = tokens?.refreshExpiresAt
                    }
                    configuration.stampRefreshExpiry(&granted, now: Date())
                    if case .corrupt(let reason, let corrupt) = stored {
                        // The new token replaces an unparseable file: keep that one for inspection.
                        if await moveAside(corrupt, reason: reason) { version = nil }
                    }
                    if writesBeforeUse || storage.fencesWrites {
                        guard case .written = try await write(granted, replacing: version) else {
                            return try await superseded(need, discarding: "the token this process obtained")
                        }
                    } else {
                        // Requests get the token now; the store is written while this process still
                        // holds the lock, so other processes wait for the file, not the other way round.
                        lockPassedOn = true
                        pendingWrite = Task { await self.persist(granted, replacing: version, thenRelease: lock) }
                    }
                    return .refreshed(granted)
                case .transient(let reason, let retryAfter):
                    return .failed(.unavailable(reason: reason, retryAfter: retryAfter), retryAfter: retryAfter)
                case .refused(let refusal):
                    let message = refusal.message(configuration)
                    if refusal.kind == .configuration {
                        return await refused(.misconfigured(reason: message), storeMatters: false, remaining: nil)
                    }
                    let reread = try await readStoreVersion(authoritative: true)
                    let (again, againVersion) = (reread.contents, reread.version)
                    if again != stored {
                        // Someone wrote the store meanwhile (a person handing over a new refresh
                        // token, or a process that does not honour the lock).
                        guard let newer = again.tokens, attempt < 3 else {
                            // Empty or half written: a writer is at work. Leave the file alone; the
                            // next need looks again once it has changed.
                            return await refused(.reauthenticationRequired(reason: message), storeMatters: true, remaining: nil, storeVersion: againVersion)
                        }
                        logger.warning("the token endpoint refused the refresh token, but the store changed meanwhile; using the store", metadata: ["error": "\(refusal.error)"])
                        if gate.satisfies(newer, need, now: Date()) { return .adopted(newer) }
                        (stored, version) = (again, againVersion)
                        continue
                    }
                    var marked = tokens ?? TokenSet()
                    marked.rejection = .init(error: refusal.error, errorDescription: refusal.description, credential: credentials.fingerprint, at: Date())
                    if case .replacing(let rejected) = need, marked.accessToken == rejected {
                        // The upstream refused this access token and nothing can replace it: drop it,
                        // so that `tokenproxy token` and /readyz tell the truth (SPEC §4).
                        marked.dropAccessToken()
                    }
                    guard case .written(let written) = try await write(marked, replacing: version) else {
                        return try await superseded(need, discarding: "the refusal")
                    }
                    return await refused(.reauthenticationRequired(reason: message), storeMatters: true, remaining: marked, storeVersion: written)
                }
            }
            return .failed(.unavailable(reason: "the token store kept changing during the refresh", retryAfter: nil), retryAfter: nil)
        } catch {
            return .failed(error, retryAfter: nil)
        }
    }

    /// A permanent refusal, watching the store from `storeVersion` (the version the decision
    /// was made on): a hand-over written a moment after that read still counts as a change.
    private func refused(_ error: TokenBrokerError, storeMatters: Bool, remaining: TokenSet?, storeVersion: StorageVersion?? = nil) async -> RefreshGate.Outcome {
        .refused(error, watch: await watch(storeMatters: storeMatters, storeVersion: storeVersion), remaining: remaining)
    }

    /// A fenced write was refused: while this process called the endpoint, its lock was lost and
    /// another host stored a newer token (SPEC §3.1). The newer token wins; what this process got
    /// is discarded, never written over it.
    private func superseded(_ need: Need, discarding what: String) async throws(TokenBrokerError) -> RefreshGate.Outcome {
        let newer = try await readStore(authoritative: true).tokens
        logger.warning("the token store moved on while this process refreshed (its lock was lost); \(what) is discarded and the stored token used", metadata: ["store": "\(storage.name)"])
        if let newer, gate.satisfies(newer, need, now: Date()) { return .adopted(newer) }
        return .failed(.unavailable(reason: "the token store \(storage.name) moved on during the refresh; trying again", retryAfter: nil), retryAfter: nil)
    }

    /// Reads the store while holding the lock. An unparseable store is treated as empty for the
    /// need at hand and moved aside only once it has stayed the same for a while (SPEC §3).
    private func readStoreUnderLock() async throws(TokenBrokerError) -> StoredTokens {
        let read = try await readStoreVersion(authoritative: true)
        guard case .corrupt(let reason, let corrupt) = read.contents else { return read }
        guard gate.sawCorruptStore(corrupt, now: Date()) else {
            logger.warning("the token store cannot be parsed; treating it as empty for now (it is moved aside if it stays so for \(Int(RefreshGate.quarantineDelay)) s)", metadata: ["store": "\(storage.name)", "reason": "\(reason)"])
            return read
        }
        return await moveAside(corrupt, reason: reason) ? StoredTokens(contents: .empty, version: nil) : read
    }

    /// Moves an unparseable store aside, unless it changed meanwhile; returns whether it did.
    private func moveAside(_ version: StorageVersion, reason: String) async -> Bool {
        do {
            guard let movedTo = try await storage.quarantine(ifStill: version, now: Date()) else { return false }
            logger.error("the token store was corrupt and has been moved aside; starting from an empty store", metadata: ["store": "\(storage.name)", "movedTo": "\(movedTo)", "reason": "\(reason)"])
            return true
        } catch {
            logger.error("the token store is corrupt and could not be moved aside", metadata: ["store": "\(storage.name)", "reason": "\(reason)", "error": "\(error)"])
            return false
        }
    }

    private func persist(_ tokens: TokenSet, replacing version: StorageVersion?, thenRelease lock: any TokenStorageLock) async {
        _ = try? await write(tokens, replacing: version)
        lock.release()
        pendingWrite = nil
    }

    /// Waits until the last refreshed token is in the store (before exit, or the next refresh).
    public func finishWrites() async {
        if let pendingWrite { await pendingWrite.value }
    }

    func takeLock() async throws(TokenBrokerError) -> any TokenStorageLock {
        do {
            return try await storage.lock(timeout: configuration.lockTimeout)
        } catch {
            throw Self.brokerError(error)
        }
    }

    /// How a write under the lock ended.
    enum WriteOutcome {
        case written(StorageVersion?)
        /// The storage fences its writes and had moved on (the lock was lost meanwhile).
        case superseded
    }

    /// Writes under the lock; `version` is what was read under it.
    @discardableResult
    func write(_ tokens: TokenSet, replacing version: StorageVersion?) async throws(TokenBrokerError) -> WriteOutcome {
        do {
            return .written(try await storage.write(tokens, replacing: version))
        } catch .superseded {
            return .superseded
        } catch {
            logger.critical("the new token could not be saved; a rotated refresh token may be lost", metadata: ["store": "\(storage.name)", "error": "\(error)"])
            throw Self.brokerError(error)
        }
    }
}
