import Atomics
import FoundationEssentials
import Glibc
import Logging
import NIOCore
import NIOSSL
import PostgresNIO

/// Opens connections to the fleet's database (SPEC §2.3): TLS when `fleet.tls` is present
/// (verified, never optional), the password read from `fleet.passwordFile` at every connection
/// (a rotated password is picked up), and an `application_name` that says what the connection is
/// for (`tokenproxy lock billing-api`), so that an operator can see who holds the lock.
struct PostgresConnector: Sendable {
    let fleet: Configuration.Fleet
    /// postgres-nio's own log lines, at `notice` and above.
    let logger: Logger

    private static let connectionIDs = ManagedAtomic(0)

    init(fleet: Configuration.Fleet, logger: Logger) {
        self.fleet = fleet
        var quiet = logger
        quiet.logLevel = max(logger.logLevel, .notice)
        self.logger = quiet
    }

    /// A new connection, for `purpose` (`data`, `lock`, `listen`); `timeout` bounds the TCP
    /// connect. (Not a deadline around the whole call: a connection that arrived just after
    /// the deadline would be dropped unclosed.)
    func connect(purpose: String, timeout: Duration) async throws(TokenStoreError) -> PostgresConnection {
        var password: String?
        if let path = fleet.passwordFile {
            switch Self.readPassword(path: path) {
            case .success(let text): password = text
            case .failure(let problem): throw .refused(path: path, reason: problem.message)
            }
        }
        var configuration: PostgresConnection.Configuration
        let url = fleet.postgres
        switch url.endpoint {
        case .tcp(let host, let port):
            configuration = .init(host: host, port: port, username: url.username, password: password, database: url.database, tls: try tls())
        case .unixSocket(let path):
            configuration = .init(unixSocketPath: path, username: url.username, password: password, database: url.database)
        }
        configuration.options.connectTimeout = .milliseconds(max(Int64(timeout.milliseconds), 1))
        configuration.options.additionalStartupParameters = [("application_name", "tokenproxy \(purpose) \(fleet.name)")]
        let (logger, settings) = (self.logger, configuration)
        let id = Self.connectionIDs.loadThenWrappingIncrement(ordering: .relaxed)
        do {
            return try await PostgresConnection.connect(configuration: settings, id: id, logger: logger)
        } catch {
            throw .unavailable(reason: describe(error))
        }
    }

    private func tls() throws(TokenStoreError) -> PostgresConnection.Configuration.TLS {
        guard let settings = fleet.tls else { return .disable }
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateVerification = .fullVerification
        if let caFile = settings.caFile { tls.trustRoots = .file(caFile) }
        do {
            return .require(try NIOSSLContext(configuration: tls))
        } catch {
            throw .refused(path: settings.caFile ?? "fleet.tls", reason: "fleet.tls: cannot set up TLS: \(error)")
        }
    }

    /// What went wrong, in words an operator can act on, naming the database.
    func describe(_ error: any Error) -> String {
        let database = "the fleet database \(fleet.postgres)"
        if error is DeadlineExceeded { return "\(database) did not answer in time" }
        guard let error = error as? PSQLError else { return "\(database) cannot be reached: \(error)" }
        if let message = error.serverInfo?[.message] {
            let state = error.serverInfo?[.sqlState] ?? ""
            if state == "42501" { return "\(database) refused: \(message); grant the role \(fleet.postgres.username) what deploy/fleet/schema.sql grants" }
            if state == "28P01" || state == "28000" { return "\(database) refused the login: \(message); check fleet.passwordFile and the role" }
            return "\(database) answered: \(message)"
        }
        switch error.code {
        case .serverClosedConnection, .clientClosedConnection, .uncleanShutdown:
            return "\(database) closed the connection"
        case .sslUnsupported:
            return "\(database) does not offer TLS, but fleet.tls asks for it"
        default:
            if let underlying = error.underlying { return "\(database) cannot be reached: \(underlying)" }
            return "\(database) cannot be reached (\(error.code))"
        }
    }

    /// The SQLSTATE of a server error, if `error` is one.
    static func sqlState(of error: any Error) -> String? {
        (error as? PSQLError)?.serverInfo?[.sqlState]
    }

    /// `fleet.passwordFile`: its content with one trailing newline stripped (SPEC §2).
    static func readPassword(path: String) -> Result<String, TokenSealing.KeyProblem> {
        var bytes: [UInt8]
        switch SecretFile.read(path) {
        case .success(let content): bytes = content
        case .failure(let failure): return .failure(.init(message: "cannot read the password file \(path): \(failure.reason)"))
        }
        if bytes.last == 0x0A { bytes.removeLast() }
        if bytes.last == 0x0D { bytes.removeLast() }
        guard !bytes.isEmpty, bytes.count <= 1024, !bytes.contains(0) else {
            return .failure(.init(message: "the password file \(path) must hold the database password (1 to 1024 bytes, one trailing newline allowed)"))
        }
        return .success(String(decoding: bytes, as: UTF8.self))
    }
}

/// An operation that took longer than it was given.
struct DeadlineExceeded: Error {}

/// Runs `body`, giving up (and cancelling it) after `duration`.
func withDeadline<T: Sendable>(_ duration: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: duration)
            throw DeadlineExceeded()
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}
