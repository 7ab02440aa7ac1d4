import FoundationEssentials
import Logging

extension TokenBroker {
    /// The protocol of SPEC §3, steps 2–4, for one refresh of this process: ``RefreshProtocol``
    /// decides, this carries its actions out and feeds back what came of them. Says which path
    /// it took: the endpoint called (`refreshed`), a token another process stored (`adopted`),
    /// or why it failed. When the protocol goes on after its outcome (the store written after
    /// use, under the lock), the rest runs in the background as ``pendingWrite``.
    func acquire(_ need: Need) async -> RefreshGate.Outcome {
        await finishWrites()
        // A subject identity's token is got before the lock is taken: getting it may run that
        // identity's own refresh, which must not hold this identity's lock (other processes
        // wait on it with lockTimeout). A failure is met again, and reported, under the lock.
        prefetchedSubject = nil
        if case .identity? = configuration.exchange?.subject, let subjectToken { prefetchedSubject = try? await subjectToken() }
        var machine = RefreshProtocol(
            need: need, configuration: configuration, storeName: storage.name, writesBeforeUse: writesBeforeUse || storage.fencesWrites,
            acceptance: gate.acceptance, corruptSighting: corruptSighting
        )
        var lock: (any TokenStorageLock)?
        var action = machine.start()
        while true {
            guard case .deliver(let outcome) = action else {
                action = await perform(action, on: &machine, lock: &lock)
                continue
            }
            let rest = machine.delivered()
            if rest == .done {
                corruptSighting = machine.corruptSighting
            } else {
                pendingWrite = Task { [machine, lock] in await self.carryOn(rest, on: machine, lock: lock) }
            }
            return outcome
        }
    }

    /// Runs the protocol to its end after its outcome was delivered.
    private func carryOn(_ action: RefreshProtocol.Action, on machine: RefreshProtocol, lock: (any TokenStorageLock)?) async {
        var (action, machine, lock) = (action, machine, lock)
        while action != .done {
            action = await perform(action, on: &machine, lock: &lock)
        }
        corruptSighting = machine.corruptSighting
        pendingWrite = nil
    }

    /// Carries out one action and returns what the machine says next.
    private func perform(_ action: RefreshProtocol.Action, on machine: inout RefreshProtocol, lock: inout (any TokenStorageLock)?) async -> RefreshProtocol.Action {
        switch action {
        case .readStore(let authoritative):
            do {
                let read = try await readStoreVersion(authoritative: authoritative)
                return machine.storeRead(read, now: now())
            } catch {
                return machine.failed(error)
            }
        case .discoverEndpoints:
            do {
                try await discoverEndpoints()
                return machine.discovered(configuration)
            } catch {
                return machine.failed(error)
            }
        case .takeLock:
            do {
                lock = try await takeLock()
                return machine.lockTaken()
            } catch {
                return machine.failed(error)
            }
        case .readCredentials(let refreshToken):
            do throws(TokenBrokerError) {
                var credentials = try endpoint.credentials(refreshToken: refreshToken)
                if case .identity(let name)? = configuration.exchange?.subject {
                    // The subject identity's token, refreshed first when needed (SPEC §2.4).
                    guard let subjectToken else { throw .misconfigured(reason: "subjectIdentity \"\(name)\" is not available in this process") }
                    if let prefetchedSubject {
                        credentials.subjectToken = prefetchedSubject
                    } else {
                        credentials.subjectToken = try await subjectToken()
                    }
                }
                exchangedFrom = credentials.subjectToken
                return machine.credentialsRead(credentials, now: now())
            } catch {
                return machine.failed(error)
            }
        case .callEndpoint(let credentials):
            gate.callingEndpoint(for: machine.need, now: now())
            observer?(.refreshing)
            let response = await endpoint.requestToken(credentials, grant: nil)
            return machine.endpointAnswered(response, now: now())
        case .write(let tokens, let version):
            do {
                switch try await write(tokens, replacing: version) {
                case .written(let written): return machine.written(written)
                case .superseded: return machine.superseded()
                }
            } catch {
                return machine.failed(error)
            }
        case .quarantine(let version, let reason):
            return machine.quarantined(moved: await moveAside(version, reason: reason))
        case .releaseLock:
            lock?.release()
            lock = nil
            return machine.lockReleased()
        case .note(let note):
            log(note)
            return machine.noted()
        case .deliver, .done:
            preconditionFailure("\(action) is handled by the loop that runs the protocol")
        }
    }

    private func log(_ note: RefreshProtocol.Note) {
        switch note {
        case .corruptStoreKept(let reason):
            logger.warning(
                "the token store cannot be parsed; treating it as empty for now (it is moved aside if it stays so for \(Int(RefreshProtocol.quarantineDelay)) s)",
                metadata: ["store": "\(storage.name)", "reason": "\(reason)"]
            )
        case .refusedButStoreChanged(let error):
            logger.warning("the token endpoint refused the refresh token, but the store changed meanwhile; using the store", metadata: ["error": "\(error)"])
        case .superseded(let what):
            logger.warning("the token store moved on while this process refreshed (its lock was lost); \(what) is discarded and the stored token used", metadata: ["store": "\(storage.name)"])
        }
    }

    /// Moves an unparseable store aside, unless it changed meanwhile; returns whether it did.
    private func moveAside(_ version: StorageVersion, reason: String) async -> Bool {
        do {
            guard let movedTo = try await storage.quarantine(ifStill: version, now: now()) else { return false }
            logger.error("the token store was corrupt and has been moved aside; starting from an empty store", metadata: ["store": "\(storage.name)", "movedTo": "\(movedTo)", "reason": "\(reason)"])
            return true
        } catch {
            logger.error("the token store is corrupt and could not be moved aside", metadata: ["store": "\(storage.name)", "reason": "\(reason)", "error": "\(error)"])
            return false
        }
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
