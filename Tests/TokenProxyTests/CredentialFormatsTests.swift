import Foundation
import Testing

@testable import TokenProxy

/// The token in other tools' formats (SPEC §2.5), as pure functions.
@Suite("Credential formats (SPEC §2.5)")
struct CredentialFormatsTests {
    static let expiry = Date(timeIntervalSince1970: 1_800_000_000.75)  // 2027-01-15T08:00:00.75Z

    static func object(_ text: String) throws -> [String: JSONValue] {
        guard case .object(let fields) = try JSONValue.parse(Data(text.utf8)) else { throw CocoaError(.coderInvalidValue) }
        return fields
    }

    struct ExecRow: CustomTestStringConvertible, Sendable {
        var execInfo: String?
        var apiVersion: String
        var testDescription: String { "KUBERNETES_EXEC_INFO \(execInfo ?? "unset") → \(apiVersion)" }
    }

    static let execRows: [ExecRow] = [
        ExecRow(execInfo: nil, apiVersion: "client.authentication.k8s.io/v1"),
        ExecRow(execInfo: #"{"apiVersion":"client.authentication.k8s.io/v1beta1","kind":"ExecCredential","spec":{"interactive":false}}"#, apiVersion: "client.authentication.k8s.io/v1beta1"),
        ExecRow(execInfo: #"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","spec":{"interactive":true}}"#, apiVersion: "client.authentication.k8s.io/v1"),
        // Not an ExecCredential document at all: the current version.
        ExecRow(execInfo: "not json", apiVersion: "client.authentication.k8s.io/v1"),
        ExecRow(execInfo: #"{"kind":"ExecCredential"}"#, apiVersion: "client.authentication.k8s.io/v1"),
    ]

    @Test("an ExecCredential in the version kubectl asked for", arguments: execRows)
    func execCredential(row: ExecRow) throws {
        let version = try CredentialFormats.execCredentialVersion(execInfo: row.execInfo)
        let fields = try Self.object(CredentialFormats.execCredential(token: "at-\"1\"", expiresAt: Self.expiry, apiVersion: version))
        #expect(fields["apiVersion"] == .string(row.apiVersion))
        #expect(fields["kind"] == .string("ExecCredential"))
        // client-go's schema: status.token and status.expirationTimestamp (RFC 3339, UTC).
        #expect(fields["status"] == .object(["token": .string("at-\"1\""), "expirationTimestamp": .string("2027-01-15T08:00:00Z")]))
        #expect(Set(fields.keys) == ["apiVersion", "kind", "status"])
    }

    @Test func aVersionClientGoAsksForButThisPluginDoesNotSpeakIsAnErrorNamingTheFix() {
        #expect(throws: CredentialFormatError.unsupportedExecCredentialVersion("client.authentication.k8s.io/v1alpha1", supported: ["client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1"])) {
            try CredentialFormats.execCredentialVersion(execInfo: #"{"apiVersion":"client.authentication.k8s.io/v1alpha1","kind":"ExecCredential"}"#)
        }
        let message = CredentialFormatError.unsupportedExecCredentialVersion("x/v9", supported: ["a/v1"]).description
        #expect(message.contains("x/v9") && message.contains("users[].user.exec.apiVersion"))
    }

    @Test func withoutAKnownExpiryTheTimesAreLeftOut() throws {
        let exec = try Self.object(CredentialFormats.execCredential(token: "at-1", expiresAt: nil, apiVersion: "client.authentication.k8s.io/v1"))
        #expect(exec["status"] == .object(["token": .string("at-1")]))
        let json = try Self.object(CredentialFormats.json(token: "at-1", tokenType: "Bearer", expiresAt: nil, now: Self.expiry))
        #expect(json == ["access_token": .string("at-1"), "token_type": .string("Bearer")])
        #expect(CredentialFormats.gitAnswer(username: "u", token: "at-1", expiresAt: nil) == "username=u\npassword=at-1\n")
    }

    @Test func jsonHasTheFourFieldsWithWholeSecondsNeverNegative() throws {
        let now = Self.expiry - 90.5
        let fields = try Self.object(CredentialFormats.json(token: "at-1", tokenType: "Bearer", expiresAt: Self.expiry, now: now))
        #expect(fields == [
            "access_token": .string("at-1"), "token_type": .string("Bearer"), "expires_at": .string("2027-01-15T08:00:00Z"), "expires_in": .number(90),
        ])
        let late = try Self.object(CredentialFormats.json(token: "at-1", tokenType: "Bearer", expiresAt: Self.expiry, now: Self.expiry + 5))
        #expect(late["expires_in"] == .number(0))
    }

    struct GitRow: CustomTestStringConvertible, Sendable {
        var input: String
        var fields: [String: String]
        var testDescription: String { input.debugDescription }
    }

    static let gitRows: [GitRow] = [
        GitRow(input: "protocol=https\nhost=git.example.com\n\n", fields: ["protocol": "https", "host": "git.example.com"]),
        // CRLF, a value holding '=', a line without '=', and nothing read after the blank line.
        GitRow(input: "protocol=https\r\npassword=a=b\r\nnonsense\r\n\r\nhost=after", fields: ["protocol": "https", "password": "a=b"]),
        // The end of input ends it as well; the first of a repeated key wins.
        GitRow(input: "host=a\nhost=b", fields: ["host": "a"]),
        GitRow(input: "", fields: [:]),
    ]

    @Test("git's key=value lines", arguments: gitRows)
    func gitRequest(row: GitRow) {
        #expect(CredentialFormats.GitRequest(parsing: row.input).fields == row.fields)
    }

    @Test func gitGetAnswersUserPasswordAndExpiryInUnixSeconds() {
        #expect(CredentialFormats.gitAnswer(username: "oauth2", token: "at-1", expiresAt: Self.expiry) == "username=oauth2\npassword=at-1\npassword_expiry_utc=1800000000\n")
    }
}
