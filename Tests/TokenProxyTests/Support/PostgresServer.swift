import Foundation
import Glibc

/// A throwaway PostgreSQL cluster of a test's own (SPEC §3.1 is tested against the real server,
/// never a mock): `initdb` into a temporary folder, a loopback port, password authentication
/// (scram-sha-256), a role and a database for tokenproxy. Run as the `postgres` user when the
/// tests run as root, since the server refuses to run as root.
///
/// `.ci/run` installs the server from Debian's packages (`postgresql`).
final class PostgresServer: @unchecked Sendable {
    static let role = "tokenproxy"
    static let database = "tokenproxy"
    static let password = "fleet-db-pa55word"
    static let superuserPassword = "superuser-pa55word"

    let port: Int
    let folder: String
    private let binaries: String

    var url: String { "postgres://\(Self.role)@127.0.0.1:\(port)/\(Self.database)" }
    private var dataFolder: String { folder + "/data" }

    /// The folder of `pg_ctl`, `initdb`, `psql` and `pg_dump`: the newest installed version.
    static func findBinaries() throws -> String {
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).compactMap(Int.init).sorted()
        guard let newest = versions.last, FileManager.default.isExecutableFile(atPath: "\(root)/\(newest)/bin/pg_ctl") else {
            throw Failure("PostgreSQL is not installed (no \(root)/*/bin/pg_ctl); `.ci/run` installs it with apt-get install postgresql")
        }
        return "\(root)/\(newest)/bin"
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    private init(port: Int, folder: String, binaries: String) {
        self.port = port
        self.folder = folder
        self.binaries = binaries
    }

    /// A new cluster, started, with the tokenproxy role and database.
    static func start() async throws -> PostgresServer {
        let binaries = try findBinaries()
        var template = Array("/tmp/tokenproxy-pg-XXXXXX".utf8CString)
        guard let created = mkdtemp(&template) else { throw Failure("mkdtemp failed") }
        let folder = String(cString: created)
        let server = PostgresServer(port: try LoopbackPort.unused(), folder: folder, binaries: binaries)
        try "\(superuserPassword)\n".write(toFile: folder + "/superuser-password", atomically: false, encoding: .utf8)
        if getuid() == 0, let owner = getpwnam("postgres") {
            chown(folder, owner.pointee.pw_uid, owner.pointee.pw_gid)
            chown(folder + "/superuser-password", owner.pointee.pw_uid, owner.pointee.pw_gid)
        }
        try await server.runAsServerUser(["initdb", "-D", server.dataFolder, "-U", "postgres", "--auth=scram-sha-256", "--pwfile=\(folder)/superuser-password", "-N", "-E", "UTF8", "--locale=C"])
        try await server.startServer()
        try await server.superuser("CREATE ROLE \(role) LOGIN PASSWORD '\(password)'", database: "postgres")
        try await server.superuser("CREATE DATABASE \(database) OWNER \(role)", database: "postgres")
        return server
    }

    /// Starts the server (again, after ``stop()``), on the same port and data.
    func startServer() async throws {
        let options = "-p \(port) -k \(folder) -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        try await runAsServerUser(["pg_ctl", "start", "-w", "-t", "30", "-D", dataFolder, "-l", folder + "/server.log", "-o", options])
    }

    /// Turns TLS on with `certificates` (the server then accepts TLS and plain connections).
    func enableTLS(_ certificates: TestCertificates) async throws {
        let certificate = folder + "/server.pem", key = folder + "/server.key"
        try FileManager.default.copyItem(atPath: certificates.certificateFile, toPath: certificate)
        try FileManager.default.copyItem(atPath: certificates.keyFile, toPath: key)
        chmod(key, 0o600)
        if getuid() == 0, let owner = getpwnam("postgres") {
            chown(certificate, owner.pointee.pw_uid, owner.pointee.pw_gid)
            chown(key, owner.pointee.pw_uid, owner.pointee.pw_gid)
        }
        try await superuser("ALTER SYSTEM SET ssl_cert_file = '\(certificate)'", database: "postgres")
        try await superuser("ALTER SYSTEM SET ssl_key_file = '\(key)'", database: "postgres")
        try await superuser("ALTER SYSTEM SET ssl = on", database: "postgres")
        try await superuser("SELECT pg_reload_conf()", database: "postgres")
        try await Task.sleep(for: .milliseconds(300))
    }

    /// Stops the server at once (`fast`: every session is closed, as in a failover).
    func stop() async throws {
        try await runAsServerUser(["pg_ctl", "stop", "-w", "-t", "30", "-m", "fast", "-D", dataFolder])
    }

    /// Stops the server if it runs and removes its folder.
    func destroy() async {
        _ = try? await stop()
        try? FileManager.default.removeItem(atPath: folder)
    }

    /// Runs `sql` as the superuser in tokenproxy's database; returns the rows, `|`-separated.
    @discardableResult
    func superuser(_ sql: String, database: String = PostgresServer.database) async throws -> String {
        try await run(binaries + "/psql", ["-h", "127.0.0.1", "-p", "\(port)", "-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql], password: Self.superuserPassword)
    }

    /// Runs the psql script at `path` as the superuser in tokenproxy's database, with `variables`.
    func superuserScript(_ path: String, variables: [String: String]) async throws {
        let arguments = ["-h", "127.0.0.1", "-p", "\(port)", "-U", "postgres", "-d", Self.database, "-v", "ON_ERROR_STOP=1", "-f", path]
            + variables.sorted { $0.key < $1.key }.flatMap { ["-v", "\($0.key)=\($0.value)"] }
        try await run(binaries + "/psql", arguments, password: Self.superuserPassword)
    }

    /// `pg_dump` of tokenproxy's database, as text.
    func dump() async throws -> String {
        try await run(binaries + "/pg_dump", ["-h", "127.0.0.1", "-p", "\(port)", "-U", "postgres", "-d", Self.database], password: Self.superuserPassword)
    }

    /// Ends the sessions that hold an advisory lock (the fleet lock's holder); returns how many.
    func terminateLockHolders() async throws -> Int {
        let ended = try await superuser("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
        return ended.split(separator: "\n").filter { $0 == "t" }.count
    }

    private func runAsServerUser(_ arguments: [String]) async throws {
        var command = [binaries + "/" + arguments[0]] + arguments.dropFirst()
        // From the cluster's own folder: the server user may not enter the test's working folder.
        if getuid() == 0 { command = ["/usr/sbin/runuser", "-u", "postgres", "--", "/usr/bin/env", "-C", folder] + command }
        _ = try await run(command[0], Array(command.dropFirst()), password: nil)
    }

    @discardableResult
    private func run(_ program: String, _ arguments: [String], password: String?) async throws -> String {
        var environment = ["LC_ALL": "C"]
        if let password { environment["PGPASSWORD"] = password }
        let process = TokenProxyProcess(arguments, environment: environment, program: program)
        try process.start()
        let outcome = await process.wait(timeout: .seconds(60))
        guard outcome.status == 0, !outcome.signaled else {
            throw Failure("\(([program] + arguments).joined(separator: " ")) failed (\(outcome.status)): \(outcome.stderr)\(outcome.stdout)")
        }
        return outcome.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
