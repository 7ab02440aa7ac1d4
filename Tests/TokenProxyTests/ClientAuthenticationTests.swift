import Foundation
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// `private_key_jwt` and `client_assertion` (SPEC §2.1), against a stand-in issuer that checks
/// assertions as an identity provider does.
@Suite("Client authentication with assertions", .serialized)
struct ClientAuthenticationTests {
    /// openssl arguments that make each kind of key the SPEC names.
    static let keys: [(name: String, generate: [String])] = [
        ("ec-sec1", ["ecparam", "-name", "prime256v1", "-genkey", "-noout"]),
        ("ec-pkcs8", ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        ("rsa-pkcs1", ["genrsa", "-traditional", "2048"]),
        ("rsa-pkcs8", ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
    ]

    static func openssl(_ arguments: [String]) async throws -> String {
        let process = TokenProxyProcess(arguments, program: "/usr/bin/openssl")
        try process.start()
        let outcome = await process.wait(timeout: .seconds(30))
        guard outcome.status == 0 else { throw PostgresServer.Failure("openssl \(arguments) failed: \(outcome.stderr)") }
        return outcome.stdout
    }

    @Test(arguments: keys.map(\.name))
    func privateKeyJWTSignsAFreshAssertionForEveryCall(kind: String) async throws {
        let directory = try TemporaryDirectory()
        let generate = Self.keys.first { $0.name == kind }!.generate
        let keyFile = try directory.write("client.key", try await Self.openssl(generate + (generate[0] == "ecparam" || generate[0] == "genrsa" ? [] : ["-out", "/dev/stdout"])))
        let publicKey = try await Self.openssl(["pkey", "-in", keyFile, "-pubout"])
        #expect(directory.read("client.key")?.contains(kind.hasSuffix("pkcs8") ? "BEGIN PRIVATE KEY" : kind.hasPrefix("ec") ? "BEGIN EC PRIVATE KEY" : "BEGIN RSA PRIVATE KEY") == true)

        var behavior = MockTokenIssuer.Behavior()
        behavior.expectedAssertionKey = publicKey
        let issuer = try await MockTokenIssuer.start(behavior: behavior)
        var fixture = ConfigFixture(endpoint: issuer.url)
        fixture.grant = "client_credentials"
        fixture.clientAuth = "private_key_jwt"
        fixture.secretFile = nil
        fixture.minRefreshInterval = "0s"
        fixture.extra = ["clientKeyFile": "\"client.key\"", "clientKeyId": "\"key-2026\""]
        let config = try fixture.write(to: directory)
        #expect(try await TokenProxyProcess.run(["check-config", "--config", config]).status == 0)

        for _ in 0..<2 {
            let outcome = try await TokenProxyProcess.run(["refresh", "--config", config])
            #expect(outcome.status == 0, "\(kind): \(outcome.stderr)")
        }
        #expect(issuer.calls.map(\.status) == [200, 200], "the issuer verified signature, iss, sub, aud, exp and a unique jti")
        let headers = issuer.assertionHeaders
        #expect(headers.map { $0["kid"] } == ["key-2026", "key-2026"])
        #expect(headers.map { $0["alg"] } == Array(repeating: kind.hasPrefix("ec") ? "ES256" : "RS256", count: 2))
        #expect(issuer.calls.allSatisfy { $0.authorization == nil && $0.form["client_secret"] == nil })
        await issuer.shutdown()
    }

    @Test func aKeyTheIssuerDoesNotKnowIsRefusedAsInvalidClient() async throws {
        let directory = try TemporaryDirectory()
        let keyFile = try directory.write("client.key", try await Self.openssl(["ecparam", "-name", "prime256v1", "-genkey", "-noout"]))
        let other = try await Self.openssl(["ecparam", "-name", "prime256v1", "-genkey", "-noout"])
        try directory.write("other.key", other)
        var behavior = MockTokenIssuer.Behavior()
        behavior.expectedAssertionKey = try await Self.openssl(["pkey", "-in", directory.file("other.key"), "-pubout"])
        let issuer = try await MockTokenIssuer.start(behavior: behavior)
        var fixture = ConfigFixture(endpoint: issuer.url)
        fixture.grant = "client_credentials"
        fixture.clientAuth = "private_key_jwt"
        fixture.secretFile = nil
        fixture.extra = ["clientKeyFile": "\"\(keyFile)\""]
        let outcome = try await TokenProxyProcess.run(["refresh", "--config", try fixture.write(to: directory)])
        #expect(outcome.status == 3, "\(outcome.stderr)")
        #expect(outcome.stderr.contains("invalid_client"))
        await issuer.shutdown()
    }

    @Test func aKeyFileThatCannotSignIsAConfigurationError() async throws {
        let directory = try TemporaryDirectory()
        try directory.write("client.key", try await Self.openssl(["ecparam", "-name", "secp384r1", "-genkey", "-noout"]))
        var fixture = ConfigFixture(endpoint: "http://127.0.0.1:9/token")
        fixture.clientAuth = "private_key_jwt"
        fixture.secretFile = nil
        fixture.extra = ["clientKeyFile": "\"client.key\""]
        let outcome = try await TokenProxyProcess.run(["check-config", "--config", try fixture.write(to: directory)])
        #expect(outcome.status == 2)
        #expect(outcome.stderr.contains("token.clientKeyFile") && outcome.stderr.contains("EC P-256"), "\(outcome.stderr)")
    }

    /// `client_assertion`: the file is read at every call, so a rotated projected token (a
    /// Kubernetes service-account token) is used as soon as it is there.
    @Test func clientAssertionFileIsReadAtEveryCall() async throws {
        let directory = try TemporaryDirectory()
        let issuer = try await MockTokenIssuer.start()
        var fixture = ConfigFixture(endpoint: issuer.url)
        fixture.grant = "client_credentials"
        fixture.clientAuth = "client_assertion"
        fixture.secretFile = nil
        fixture.minRefreshInterval = "0s"
        fixture.extra = ["clientAssertionFile": "\"sa-token\""]
        let config = try fixture.write(to: directory)
        try directory.write("sa-token", "eyJ.first-projected-token.sig\n")
        #expect(try await TokenProxyProcess.run(["refresh", "--config", config]).status == 0)
        try directory.write("sa-token", "eyJ.second-projected-token.sig\n")
        #expect(try await TokenProxyProcess.run(["refresh", "--config", config]).status == 0)
        #expect(issuer.calls.map { $0.form["client_assertion"] } == ["eyJ.first-projected-token.sig", "eyJ.second-projected-token.sig"])
        #expect(issuer.calls.allSatisfy { $0.form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" && $0.form["client_id"] == "test-client" })
        await issuer.shutdown()
    }
}
