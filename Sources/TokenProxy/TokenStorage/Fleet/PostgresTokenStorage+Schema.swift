import Logging
import PostgresNIO

extension PostgresTokenStorage {
    /// The schema version this build reads and writes.
    static let schemaVersion: Int32 = 1

    /// Creates tokenproxy's two tables when they are missing (`deploy/fleet/schema.sql` holds the
    /// same, for a DBA who would rather create them and grant a role less), and refuses a schema
    /// that a newer tokenproxy migrated.
    static func prepareSchema(on connection: PostgresConnection, logger: Logger) async throws {
        if let version = try await installedSchema(on: connection, logger: logger) {
            guard version <= schemaVersion else { throw TokenStoreError.refused(path: "fleet.postgres", reason: "the fleet database holds tokenproxy schema version \(version), newer than this tokenproxy (\(schemaVersion)); upgrade tokenproxy") }
            return
        }
        try await connection.withTransaction(logger: logger) { connection in
            // Hosts starting together create the tables once.
            try await connection.query("SELECT pg_advisory_xact_lock(hashtextextended('tokenproxy schema', 0))", logger: logger).drain()
            try await connection.query(
                """
                CREATE TABLE IF NOT EXISTS tokenproxy_tokens (
                    name text PRIMARY KEY,
                    version bigint NOT NULL,
                    key_id text NOT NULL,
                    sealed bytea NOT NULL,
                    updated_at timestamptz NOT NULL DEFAULT now())
                """, logger: logger
            ).drain()
            try await connection.query("CREATE TABLE IF NOT EXISTS tokenproxy_schema (version integer NOT NULL)", logger: logger).drain()
            try await connection.query(
                "INSERT INTO tokenproxy_schema (version) SELECT \(schemaVersion) WHERE NOT EXISTS (SELECT 1 FROM tokenproxy_schema)", logger: logger
            ).drain()
        }
    }

    private static func installedSchema(on connection: PostgresConnection, logger: Logger) async throws -> Int32? {
        let exists = try await connection.query("SELECT to_regclass('tokenproxy_schema') IS NOT NULL", logger: logger).collect(Bool.self)
        guard exists.first == true else { return nil }
        return try await connection.query("SELECT max(version) FROM tokenproxy_schema", logger: logger).collect(Int32?.self).first ?? nil
    }
}
