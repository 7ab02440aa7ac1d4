import FoundationEssentials
import Logging
import NIOCore
import PostgresNIO

/// The fleet's storage (SPEC §3.1): one row per `fleet.name` in `tokenproxy_tokens`, sealed with
/// AES-256-GCM; a session-level advisory lock on a connection of its own (PostgreSQL releases it
/// when its holder dies or its connection drops); writes fenced by the row's version; a `NOTIFY`
/// with each write, which every host `LISTEN`s for.
///
/// Three kinds of connection, so that none waits for another: `data` (reads and writes, kept
/// open), `lock` (one per lock held), `listen` (kept open, reconnected with backoff). While the
/// listener is connected, the row it last saw answers non-authoritative reads, so that requests
/// never wait on the database.
public actor PostgresTokenStorage: TokenStorage {
    public nonisolated let name: String
    public nonisolated var fencesWrites: Bool { true }

    let fleet: Configuration.Fleet
    let connector: PostgresConnector
    let sealing: TokenSealing
    let logger: Logger
    /// The longest any one query or connection attempt may take (the lock has its own timeout).
    static let operationTimeout = Duration.seconds(5)
    /// The channel every host listens on; the payload is the row's name.
    static let channel = "tokenproxy_tokens"

    private var data: PostgresConnection?
    /// The data connection being opened: callers that need it meanwhile wait for this one
    /// rather than open their own (a connection dropped unclosed would leak).
    private var connecting: Task<PostgresConnection, any Error>?
    private var schemaReady = false
    /// The row as the listener last saw it; `nil` while the listener is not connected (then
    /// every read goes to the database).
    private var snapshot: StoredTokens?
    private var listening: Bool { snapshot != nil }
    private var lastProblem: String?

    /// - Throws: ``TokenStoreError/refused(path:reason:)`` when a key file cannot be used.
    public init(fleet: Configuration.Fleet, logger: Logger) throws(TokenStoreError) {
        self.fleet = fleet
        self.name = "fleet \"\(fleet.name)\" (\(fleet.postgres))"
        self.connector = PostgresConnector(fleet: fleet, logger: logger)
        self.sealing = try TokenSealing.load(current: fleet.encryptionKeyFile, previous: fleet.previousEncryptionKeyFiles)
        self.logger = logger
    }

    // MARK: TokenStorage

    public func read(now: Date, authoritative: Bool) async throws(TokenStoreError) -> StoredTokens {
        if !authoritative, let snapshot { return snapshot }
        let read = try await readRow(now: now)
        if listening { snapshot = read }
        return read
    }

    public func currentVersion() async -> StorageVersion? {
        if let snapshot { return snapshot.version }
        let row = fleet.name
        do {
            let versions = try await run { connection, logger in
                try await connection.query("SELECT version FROM tokenproxy_tokens WHERE name = \(row)", logger: logger).collect(Int64.self)
            }
            return versions.first.map(StorageVersion.row)
        } catch {
            return nil
        }
    }

    public nonisolated func lock(timeout: Duration) async throws(TokenStoreError) -> any TokenStorageLock {
        let started = ContinuousClock.now
        let connection = try await connector.connect(purpose: "lock", timeout: timeout)
        let left = timeout - started.duration(to: .now)
        let (row, logger) = (fleet.name, connector.logger)
        do {
            let milliseconds = "\(max(left.milliseconds, 1))ms"
            try await withDeadline(left + .seconds(1)) {
                // lock_timeout bounds the wait inside the server; the deadline covers a server that
                // stopped answering altogether.
                try await connection.query("SELECT set_config('lock_timeout', \(milliseconds), false)", logger: logger).drain()
                try await connection.query("SELECT pg_advisory_lock(hashtextextended('tokenproxy ' || \(row), 0))", logger: logger).drain()
            }
        } catch {
            try? await connection.close()
            if PostgresConnector.sqlState(of: error) == "55P03" || error is DeadlineExceeded {
                throw .unavailable(reason: "another host held the fleet lock of \(name) for longer than token.lockTimeout (\(timeout.configString)); it may be stuck in a call to the token endpoint")
            }
            throw .unavailable(reason: connector.describe(error))
        }
        return PostgresAdvisoryLock(connection: connection)
    }

    public func write(_ tokens: TokenSet, replacing expected: StorageVersion?) async throws(TokenStoreError) -> StorageVersion? {
        let row = fleet.name
        let (sealedData, keyID) = sealing.seal(StoreDocument.encode(tokens), name: row)
        let sealed = ByteBuffer(bytes: sealedData)
        var read: Int64?
        if case .row(let version) = expected { read = version }
        let channel = Self.channel
        let written = try await run { [read] connection, logger in
            // One statement, so one transaction: the row changes only if it still holds the version
            // read under the lock (fencing), and the NOTIFY goes out when it commits.
            let query: PostgresQuery
            if let read {
                query = """
                    WITH written AS (
                        UPDATE tokenproxy_tokens SET version = version + 1, key_id = \(keyID), sealed = \(sealed), updated_at = now()
                        WHERE name = \(row) AND version = \(read) RETURNING version),
                    announced AS (SELECT pg_notify(\(channel), \(row)) FROM written)
                    SELECT written.version FROM written, announced
                    """
            } else {
                query = """
                    WITH written AS (
                        INSERT INTO tokenproxy_tokens (name, version, key_id, sealed) VALUES (\(row), 1, \(keyID), \(sealed))
                        ON CONFLICT (name) DO NOTHING RETURNING version),
                    announced AS (SELECT pg_notify(\(channel), \(row)) FROM written)
                    SELECT written.version FROM written, announced
                    """
            }
            return try await connection.query(query, logger: logger).collect(Int64.self)
        }
        guard let version = written.first else { throw .superseded }
        if listening { snapshot = StoredTokens(contents: .tokens(tokens, discarded: nil), version: .row(version)) }
        return .row(version)
    }

    /// A row that opens but does not parse is replaced by the next write, never moved: there is
    /// no "aside" in a table, and the row's history is the database's backups.
    public func quarantine(ifStill version: StorageVersion, now: Date) async throws(TokenStoreError) -> String? { nil }

    public nonisolated func watchChanges(_ changed: @escaping @Sendable () async -> Void) async {
        var pause = Duration.milliseconds(250)
        let row = fleet.name
        while !Task.isCancelled {
            var failure: (any Error)?
            do {
                let connection = try await connector.connect(purpose: "listen", timeout: Self.operationTimeout)
                do {
                    try await connection.listen(on: Self.channel) { notifications in
                        // Listening from here on: catch up with what was written while not.
                        try await self.listenerConnected()
                        pause = .milliseconds(250)
                        await changed()
                        for try await notification in notifications where notification.payload == row {
                            try await self.rowAnnounced()
                            await changed()
                        }
                    }
                } catch {
                    failure = error
                }
                try? await connection.close()
            } catch {
                failure = error
            }
            await listenerLost(failure)
            guard !Task.isCancelled else { break }
            try? await Task.sleep(for: pause)
            pause = min(pause * 2, .seconds(5))
        }
    }

    public func problem() async -> String? {
        if let lastProblem { return lastProblem }
        return listening ? nil : "not listening for token changes from the fleet database \(fleet.postgres) yet"
    }

    public func shutdown() async {
        snapshot = nil
        if let data { try? await data.close() }
        data = nil
    }

    // MARK: Listening

    private func listenerConnected() async throws {
        snapshot = try await readRow(now: Date())
        lastProblem = nil
        logger.debug("listening for token changes", metadata: ["store": "\(name)"])
    }

    private func rowAnnounced() async throws {
        snapshot = try await readRow(now: Date())
    }

    private func listenerLost(_ error: (any Error)?) {
        let wasListening = listening
        snapshot = nil
        guard let error, !(error is CancellationError), !Task.isCancelled else { return }
        let reason = (error as? TokenStoreError)?.description ?? connector.describe(error)
        lastProblem = reason
        if wasListening {
            logger.warning("lost the fleet database; a valid token keeps being used, refreshes wait for the database", metadata: ["store": "\(name)", "reason": "\(reason)"])
        }
    }

    // MARK: Rows

    private func readRow(now: Date) async throws(TokenStoreError) -> StoredTokens {
        let row = fleet.name
        let rows = try await run { connection, logger in
            try await connection.query("SELECT version, key_id, sealed FROM tokenproxy_tokens WHERE name = \(row)", logger: logger)
                .collect((Int64, String, ByteBuffer).self)
        }
        guard let (version, keyID, sealed) = rows.first else { return StoredTokens(contents: .empty, version: nil) }
        let plaintext = try sealing.open(Data(buffer: sealed), keyID: keyID, name: row)
        do {
            let (tokens, discarded) = try StoreDocument.decode(plaintext, now: now)
            return StoredTokens(contents: .tokens(tokens, discarded: discarded), version: .row(version))
        } catch {
            return StoredTokens(contents: .corrupt(reason: error.description, version: .row(version)), version: .row(version))
        }
    }

    /// Runs `body` on the data connection (opened, and the schema checked, when needed) within
    /// ``operationTimeout``. A failure closes the connection, so that the next call opens a new one.
    private func run<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection, Logger) async throws -> T) async throws(TokenStoreError) -> T {
        let connection: PostgresConnection
        if let data, !data.isClosed {
            connection = data
        } else {
            let connector = self.connector
            let opening = connecting ?? Task { () async throws -> PostgresConnection in
                try await connector.connect(purpose: "data", timeout: Self.operationTimeout)
            }
            connecting = opening
            do {
                connection = try await opening.value
                connecting = nil
            } catch {
                connecting = nil
                let failure = (error as? TokenStoreError) ?? .unavailable(reason: connector.describe(error))
                lastProblem = failure.description
                throw failure
            }
            data = connection
        }
        let logger = connector.logger
        do {
            if !schemaReady {
                try await withDeadline(Self.operationTimeout) { try await Self.prepareSchema(on: connection, logger: logger) }
                schemaReady = true
            }
            let result = try await withDeadline(Self.operationTimeout) { try await body(connection, logger) }
            lastProblem = nil
            return result
        } catch {
            if data === connection { data = nil }
            try? await connection.close()
            if let error = error as? TokenStoreError { throw error }
            let reason = connector.describe(error)
            lastProblem = reason
            throw .unavailable(reason: reason)
        }
    }
}

/// The fleet lock: a session-level advisory lock held by a connection of its own. Closing the
/// connection releases it; so does the server, when the holder dies or the connection drops.
struct PostgresAdvisoryLock: TokenStorageLock {
    let connection: PostgresConnection

    func release() {
        let connection = self.connection
        Task { try? await connection.close() }
    }
}

extension PostgresRowSequence {
    /// Every row, decoded.
    func collect<each Column: PostgresDecodable & Sendable>(_ columns: (repeat each Column).Type) async throws -> [(repeat each Column)] {
        var rows: [(repeat each Column)] = []
        for try await row in decode(columns) { rows.append(row) }
        return rows
    }

    /// Reads the answer to its end (a statement run for its effect).
    func drain() async throws {
        for try await _ in self {}
    }
}
