import Foundation
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// Fleet mode (SPEC §2.3, §3.1): several "hosts" — processes with separate store and lock paths —
/// sharing one token through a real PostgreSQL server that the test starts for itself.
@Suite("Fleet mode on PostgreSQL", .serialized)
struct FleetTests {
    /// One fleet member: a folder of its own (its own `token.json` and `token.lock`, which fleet
    /// mode must leave alone) and a configuration naming the shared database.
    struct Host {
        let directory: TemporaryDirectory
        let config: String

        func run(_ arguments: [String], stdin: String = "/dev/null") async throws -> TokenProxyProcess.Outcome {
            try await TokenProxyProcess.run(arguments + ["--config", config], stdin: stdin)
        }
    }

    static let key = Data((0..<32).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()

    static func hosts(
        _ count: Int, server: PostgresServer, issuer: MockTokenIssuer, key: String = FleetTests.key, name: String = "billing-api",
        _ change: (inout ConfigFixture) -> Void = { _ in }
    ) throws -> [Host] {
        try (0..<count).map { _ in
            let directory = try TemporaryDirectory()
            try directory.write("db-password", PostgresServer.password + "\n")
            try directory.write("fleet.key", key + "\n")
            var fixture = ConfigFixture(endpoint: issuer.url)
            fixture.topLevel["fleet"] = """
                { "postgres": "\(server.url)", "passwordFile": "db-password", "name": "\(name)", "encryptionKeyFile": "fleet.key" }
                """
            change(&fixture)
            return Host(directory: directory, config: try fixture.write(to: directory))
        }
    }

    /// Hands a refresh token to the fleet through `tokenproxy login` on `host`.
    static func handOver(_ token: String, to issuer: MockTokenIssuer, through host: Host) async throws {
        issuer.grantRefreshToken(token)
        let file = try host.directory.write("handover", token + "\n")
        let login = try await host.run(["login", "--refresh-token-file", "-"], stdin: file)
        #expect(login.status == 0, "\(login.stderr)")
        #expect(login.stdout.contains("fleet \"billing-api\""), "\(login.stdout)")
    }

    static func printed(_ outcome: TokenProxyProcess.Outcome) -> String {
        outcome.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    // MARK: Commands

    @Test func everyCommandWorksOnTheSharedRowAndNoTokenIsInADump() async throws {
        let server = try await PostgresServer.start()
        let issuer = try await MockTokenIssuer.start()
        let hosts = try Self.hosts(2, server: server, issuer: issuer)
        let (a, b) = (hosts[0], hosts[1])
        try await Self.handOver("rt-fleet-initial", to: issuer, through: a)

        let status = try await b.run(["token"])
        #expect(status.status == 0, "no access token yet, but a refresh token: \(status.stdout)")
        #expect(status.stdout.contains("refresh token: present"), "\(status.stdout)")
        #expect(status.stdout.contains("store: fleet \"billing-api\" (\(server.url))"), "\(status.stdout)")

        let first = try await b.run(["token", "--print"])
        #expect(first.status == 0, "\(first.stderr)")
        let again = try await a.run(["token", "--print"])
        #expect(Self.printed(again) == Self.printed(first), "host A uses host B's token")
        #expect(issuer.callCount == 1)

        let refresh = try await a.run(["refresh"])
        #expect(refresh.status == 0, "\(refresh.stderr)")
        let second = try await b.run(["token", "--print"])
        #expect(Self.printed(second) != Self.printed(first))
        #expect(issuer.callCount == 2)

        // A dump shows the row and no token: not the access tokens, not the refresh tokens.
        let dump = try await server.dump()
        #expect(dump.contains("tokenproxy_tokens"))
        var secrets = [Self.printed(first), Self.printed(second), "rt-fleet-initial"]
        secrets += issuer.calls.compactMap { $0.form["refresh_token"] }
        for secret in secrets { #expect(!dump.contains(secret), "the dump holds a token") }
        // Fleet mode neither reads nor writes the local store and lock.
        for host in hosts { #expect(!host.directory.names().contains { $0.hasPrefix("token.") }, "\(host.directory.names())") }

        let logout = try await b.run(["logout"])
        #expect(logout.status == 0, "\(logout.stderr)")
        let afterLogout = try await a.run(["token", "--print"])
        #expect(afterLogout.status == 3, "\(afterLogout.stderr)")
        #expect(issuer.callCount == 2)
        await issuer.shutdown()
        await server.destroy()
    }

    @Test func aWrongKeyIsReportedAsSuchAndTheRowIsLeftAlone() async throws {
        let server = try await PostgresServer.start()
        let issuer = try await MockTokenIssuer.start()
        let good = try Self.hosts(1, server: server, issuer: issuer)[0]
        try await Self.handOver("rt-fleet-initial", to: issuer, through: good)
        #expect(try await good.run(["token", "--print"]).status == 0)
        let before = try await server.superuser("SELECT version, encode(sealed, 'hex') FROM tokenproxy_tokens")

        let otherKey = Data((0..<32).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
        let wrong = try Self.hosts(1, server: server, issuer: issuer, key: otherKey)[0]
        let otherToken = try wrong.directory.write("rt", "rt-other")
        for arguments in [["token", "--print"], ["token"], ["refresh"], ["login", "--refresh-token-file", otherToken]] {
            let outcome = try await wrong.run(arguments)
            #expect(outcome.status == 2, "\(arguments): \(outcome.stderr)")
            #expect(outcome.stderr.contains("fleet.encryptionKeyFile"), "\(arguments): \(outcome.stderr)")
            #expect(outcome.stderr.contains("was sealed with key"), "\(arguments): \(outcome.stderr)")
        }
        #expect(try await server.superuser("SELECT version, encode(sealed, 'hex') FROM tokenproxy_tokens") == before, "the row is untouched")
        #expect(issuer.callCount == 1)

        // Rotation: the new key seals, the old one (previousEncryptionKeyFiles) still opens.
        try wrong.directory.write("old.key", Self.key)
        let rotated = try Self.hosts(1, server: server, issuer: issuer, key: otherKey) {
            $0.topLevel["fleet"] = $0.topLevel["fleet"]!.replacingOccurrences(of: " }", with: ", \"previousEncryptionKeyFiles\": [\"\(wrong.directory.file("old.key"))\"] }")
        }[0]
        let refreshed = try await rotated.run(["refresh"])
        #expect(refreshed.status == 0, "\(refreshed.stderr)")
        #expect(try await rotated.run(["token", "--print"]).status == 0)
        let oldKeyOnly = try await good.run(["token", "--print"])
        #expect(oldKeyOnly.status == 2, "a host that has only the old key is told so: \(oldKeyOnly.stderr)")
        await issuer.shutdown()
        await server.destroy()
    }
}
