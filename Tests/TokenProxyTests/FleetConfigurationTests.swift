import Foundation
import Testing

@testable import TokenProxy

/// `fleet` configuration and sealing (SPEC §2.3), without a database.
@Suite("Fleet configuration and sealing")
struct FleetConfigurationTests {
    @Test(arguments: [
        ("postgres://tokenproxy@db.internal:5433/tokens", "postgres://tokenproxy@db.internal:5433/tokens"),
        ("postgresql://tp@db.internal/tokens", "postgres://tp@db.internal:5432/tokens"),
        ("postgres://tp@db.internal", "postgres://tp@db.internal:5432/tp"),
        ("postgres://tp@[::1]:5432/t", "postgres://tp@[::1]:5432/t"),
        ("postgres://tp@/tokens?host=/var/run/postgresql", "postgres://tp@/tokens (socket /var/run/postgresql/.s.PGSQL.5432)"),
        ("postgres://tp@/tokens?host=/run/pg&port=6000", "postgres://tp@/tokens (socket /run/pg/.s.PGSQL.6000)"),
    ])
    func validURLs(text: String, described: String) throws {
        let url = try PostgresURL.parse(text).get()
        #expect(url.description == described)
    }

    @Test(arguments: [
        ("mysql://tp@db/t", "must start with postgres://"),
        ("postgres://db.internal/t", "names no role"),
        ("postgres://tp:hunter2@db/t", "fleet.passwordFile"),
        ("postgres://tp@db/t?password=x", "fleet.passwordFile"),
        ("postgres://tp@db/t?sslmode=require", "fleet.tls"),
        ("postgres://tp@db:99999/t", "invalid port"),
        ("postgres://tp@db/t?application_name=x", "does not know"),
        ("postgres://tp@/t", "names no host"),
    ])
    func invalidURLs(text: String, says: String) {
        guard case .failure(let error) = PostgresURL.parse(text) else {
            Issue.record("\(text) was accepted")
            return
        }
        #expect(error.reason.contains(says), "\(error.reason)")
    }

    @Test func checkConfigNamesEveryFleetProblemWithoutConnecting() async throws {
        let directory = try TemporaryDirectory()
        try directory.write("short.key", Data(repeating: 7, count: 16).base64EncodedString())
        var fixture = ConfigFixture(endpoint: "http://127.0.0.1:9/token")
        fixture.topLevel["fleet"] = """
            { "postgres": "postgres://tp:secret@db/t", "passwordFile": "missing-password", "name": "has space",
              "encryptionKeyFile": "short.key", "previousEncryptionKeyFiles": ["missing.key"], "tls": { "caFile": "missing-ca.pem" }, "typo": 1 }
            """
        let config = try fixture.write(to: directory)
        let outcome = try await TokenProxyProcess.run(["check-config", "--config", config])
        #expect(outcome.status == 2)
        for expected in [
            "fleet.postgres", "fleet.passwordFile", "fleet.name", "fleet.encryptionKeyFile: the key file", "openssl rand -base64 32",
            "fleet.previousEncryptionKeyFiles[0]", "fleet.tls.caFile", "fleet.typo",
        ] {
            #expect(outcome.stderr.contains(expected), "\(expected) in \(outcome.stderr)")
        }
        #expect(!outcome.stderr.contains("secret"), "the URL's password is not repeated")
    }

    @Test func aValidFleetPassesCheckConfig() async throws {
        let directory = try TemporaryDirectory()
        try directory.write("fleet.key", "  " + Data((0..<32).map { _ in UInt8.random(in: 0...255) }).base64EncodedString() + "\n")
        try directory.write("password", "pw\n")
        var fixture = ConfigFixture(endpoint: "http://127.0.0.1:9/token")
        fixture.topLevel["fleet"] = #"{ "postgres": "postgres://tp@192.0.2.1/t", "passwordFile": "password", "name": "api", "encryptionKeyFile": "fleet.key" }"#
        let outcome = try await TokenProxyProcess.run(["check-config", "--config", try fixture.write(to: directory)])
        #expect(outcome.status == 0, "\(outcome.stderr)")
    }

    @Test func sealingBindsTheRowNameAndTellsKeysApart() throws {
        let directory = try TemporaryDirectory()
        let raw = (0..<32).map { _ in UInt8.random(in: 0...255) }
        try Data(raw).write(to: URL(fileURLWithPath: directory.file("raw.key")))
        try directory.write("text.key", Data(raw).base64EncodedString() + "\n")
        try directory.write("other.key", Data((0..<32).map { _ in UInt8.random(in: 0...255) }).base64EncodedString())
        let sealing = try TokenSealing.load(current: directory.file("text.key"), previous: [])
        let sameKeyRaw = try TokenSealing.load(current: directory.file("raw.key"), previous: [])
        #expect(sealing.current.id == sameKeyRaw.current.id, "32 raw bytes and their base64 text are one key")

        let plaintext = Data(#"{"version": 1, "refresh_token": "rt"}"#.utf8)
        let (sealed, keyID) = sealing.seal(plaintext, name: "api")
        #expect(sealed.range(of: Data("rt".utf8)) == nil || sealed.count > plaintext.count)
        #expect(try sealing.open(sealed, keyID: keyID, name: "api") == plaintext)
        #expect(throws: TokenStoreError.self) { try sealing.open(sealed, keyID: keyID, name: "other-api") }
        var damaged = sealed
        damaged[damaged.count - 1] ^= 1
        #expect(throws: TokenStoreError.self) { try sealing.open(damaged, keyID: keyID, name: "api") }

        let other = try TokenSealing.load(current: directory.file("other.key"), previous: [directory.file("text.key")])
        #expect(try other.open(sealed, keyID: keyID, name: "api") == plaintext, "a previous key still opens")
        let (resealed, newID) = other.seal(plaintext, name: "api")
        #expect(newID == other.current.id)
        do {
            _ = try sealing.open(resealed, keyID: newID, name: "api")
            Issue.record("opened with a key that is not configured")
        } catch {
            guard case .refused(let path, let reason) = error else { throw error }
            #expect(path == directory.file("text.key"))
            #expect(reason.contains("was sealed with key \(newID)"))
        }
    }
}
