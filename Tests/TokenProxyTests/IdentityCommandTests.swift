import Foundation
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// `--identity` of the one-identity commands (SPEC §1, §2.4), with the real binary and an issuer
/// per identity: the command acts on the identity named, else on `default`, else on the only one.
@Suite("tokenproxy --identity", .serialized)
struct IdentityCommandTests {
    /// Two issuers, each knowing only its own client, and a configuration naming them.
    struct Setup {
        let directory: TemporaryDirectory
        let issuers: [String: MockTokenIssuer]
        let config: String

        /// `identities`: the names under `identities`; `default`: whether the top-level `token`
        /// is one more identity, with an issuer of its own.
        static func start(identities names: [String], default hasDefault: Bool = false) async throws -> Setup {
            let directory = try TemporaryDirectory()
            var issuers: [String: MockTokenIssuer] = [:]
            let all = (hasDefault ? ["default"] : []) + names
            for name in all {
                var behavior = MockTokenIssuer.Behavior()
                behavior.expectedClient = (id: "client-\(name)", secret: "secret-of-\(name)")
                issuers[name] = try await MockTokenIssuer.start(behavior: behavior)
                try directory.write("secret-\(name)", "secret-of-\(name)\n")
            }
            func identity(_ name: String) -> String {
                #"""
                {"endpoint": "\#(issuers[name]!.url)", "grant": "client_credentials", "clientAuth": "basic", "clientId": "client-\#(name)",
                 "clientSecretFile": "secret-\#(name)", "store": "\#(name).json", "lockTimeout": "5s"}
                """#
            }
            var sections = [#""listen": "127.0.0.1:0""#, #""admin": null"#, #""log": {"level": "debug"}"#]
            if hasDefault { sections.append(#""token": \#(identity("default"))"#) }
            sections.append(#""identities": {"# + names.map { #""\#($0)": \#(identity($0))"# }.joined(separator: ", ") + "}")
            let routes = all.map { name in
                #"{"pathPrefix": "/\#(name)", "upstream": {"url": "http://127.0.0.1:9"}, "identity": "\#(name)"}"#
            }
            sections.append(#""routes": ["# + routes.joined(separator: ", ") + "]")
            let config = try directory.write("config.json", "{\n  " + sections.joined(separator: ",\n  ") + "\n}\n")
            return Setup(directory: directory, issuers: issuers, config: config)
        }

        func issuer(_ name: String) -> MockTokenIssuer { issuers[name]! }

        /// How many token calls each issuer received, by identity name.
        var calls: [String: Int] { issuers.mapValues(\.callCount) }

        func run(_ arguments: [String]) async throws -> TokenProxyProcess.Outcome {
            try await TokenProxyProcess.run(arguments + ["--config", config], timeout: .seconds(30))
        }

        func shutdown() async {
            for issuer in issuers.values { await issuer.shutdown() }
        }
    }

    @Test func tokenPrintWithIdentityPrintsATokenOfThatIdentitysIssuer() async throws {
        let setup = try await Setup.start(identities: ["a", "b"])
        let outcome = try await setup.run(["token", "--print", "--identity", "b"])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let token = outcome.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!token.isEmpty)
        #expect(setup.issuer("b").isValid(accessToken: token), "the token comes from issuer b: \(token)")
        #expect(!setup.issuer("a").isValid(accessToken: token))
        #expect(setup.calls == ["a": 0, "b": 1])
        #expect(setup.issuer("b").calls.first?.form["grant_type"] == "client_credentials")
        #expect(setup.issuer("b").calls.first?.authorization == "Basic " + Data("client-b:secret-of-b".utf8).base64EncodedString())
        #expect(setup.directory.read("b.json")?.contains(token) == true, "b's store holds the token")
        #expect(setup.directory.read("a.json") == nil, "a's store is not touched")
        #expect(!outcome.stderr.contains("secret-of-"))
        await setup.shutdown()
    }

    @Test func credentialCommandsWithIdentityHandOutThatIdentitysToken() async throws {
        let setup = try await Setup.start(identities: ["a", "b"])
        let json = try await setup.run(["credential", "json", "--identity", "b"])
        #expect(json.status == 0, "\(json.stderr)")
        guard case .object(let fields) = try JSONValue.parse(Data(json.stdout.utf8)), case .string(let token)? = fields["access_token"] else {
            Issue.record("not the json document: \(json.stdout)")
            return
        }
        #expect(setup.issuer("b").isValid(accessToken: token))
        let kubectl = try await setup.run(["credential", "kubectl", "--identity", "b"])
        #expect(kubectl.stdout.contains("\"token\":\"\(token)\""), "the same token, from b's store: \(kubectl.stdout)")
        #expect(setup.calls == ["a": 0, "b": 1])
        // Without --identity there is no default and two identities: which one is not guessed.
        let ambiguous = try await setup.run(["credential", "json"])
        #expect(ambiguous.status == 2 && ambiguous.stdout.isEmpty, "\(ambiguous.stderr)")
        #expect(ambiguous.stderr.contains("--identity"))
        await setup.shutdown()
    }

    @Test func refreshWithIdentityCallsOnlyThatIdentitysIssuer() async throws {
        let setup = try await Setup.start(identities: ["a", "b"])
        let outcome = try await setup.run(["refresh", "--identity", "a"])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout.contains("token refreshed"))
        #expect(setup.calls == ["a": 1, "b": 0])
        let stored = try #require(TokenStore(path: setup.directory.file("a.json")).read().tokens?.accessToken)
        #expect(setup.issuer("a").isValid(accessToken: stored))
        #expect(setup.directory.read("b.json") == nil)

        // A second forced refresh of the same identity calls its issuer again, and only it.
        let again = try await setup.run(["refresh", "--identity", "a"])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(setup.calls == ["a": 2, "b": 0])
        await setup.shutdown()
    }

    @Test("an unknown --identity exits 2 naming it", arguments: [["token", "--print"], ["token"], ["refresh"], ["logout"], ["login", "--refresh-token-file", "/dev/null"]])
    func unknownIdentity(command: [String]) async throws {
        let setup = try await Setup.start(identities: ["a", "b"])
        let outcome = try await setup.run(command + ["--identity", "nope"])
        #expect(outcome.status == 2, "\(outcome.stderr)")
        #expect(outcome.stderr.contains("\"nope\""), "\(outcome.stderr)")
        #expect(outcome.stdout.isEmpty)
        #expect(setup.calls == ["a": 0, "b": 0])
        await setup.shutdown()
    }

    @Test("two identities and no default: a command without --identity exits 2", arguments: [["token", "--print"], ["token"], ["refresh"]])
    func ambiguousIdentity(command: [String]) async throws {
        let setup = try await Setup.start(identities: ["a", "b"])
        let outcome = try await setup.run(command)
        #expect(outcome.status == 2, "\(outcome.stderr)")
        #expect(outcome.stderr.contains("--identity"), "the message says how to choose: \(outcome.stderr)")
        #expect(outcome.stdout.isEmpty)
        #expect(setup.calls == ["a": 0, "b": 0])
        await setup.shutdown()
    }

    @Test func theOnlyIdentityIsUsedWithoutIdentity() async throws {
        let setup = try await Setup.start(identities: ["x"])
        let outcome = try await setup.run(["token", "--print"])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let token = outcome.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(setup.issuer("x").isValid(accessToken: token))
        #expect(setup.calls == ["x": 1])
        #expect(setup.directory.read("x.json")?.contains(token) == true)

        let refresh = try await setup.run(["refresh"])
        #expect(refresh.status == 0, "\(refresh.stderr)")
        #expect(setup.calls == ["x": 2])
        await setup.shutdown()
    }

    @Test func withoutIdentityTheDefaultIsUsedBesideOthers() async throws {
        let setup = try await Setup.start(identities: ["b"], default: true)
        let outcome = try await setup.run(["token", "--print"])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let token = outcome.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(setup.issuer("default").isValid(accessToken: token))
        #expect(setup.calls == ["default": 1, "b": 0])

        let named = try await setup.run(["token", "--print", "--identity", "b"])
        #expect(named.status == 0, "\(named.stderr)")
        #expect(setup.issuer("b").isValid(accessToken: named.stdout.trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(setup.calls == ["default": 1, "b": 1])

        // `--identity default` names the top-level token.
        let byName = try await setup.run(["refresh", "--identity", "default"])
        #expect(byName.status == 0, "\(byName.stderr)")
        #expect(setup.calls == ["default": 2, "b": 1])
        await setup.shutdown()
    }

    @Test func tokenStatusShowsTheNamedIdentitysStore() async throws {
        let setup = try await Setup.start(identities: ["a", "b"])
        let fetched = try await setup.run(["token", "--print", "--identity", "b"])
        #expect(fetched.status == 0, "\(fetched.stderr)")
        let status = try await setup.run(["token", "--identity", "b"])
        #expect(status.status == 0, "\(status.stderr)")
        #expect(status.stdout.contains(setup.directory.file("b.json")), "\(status.stdout)")
        #expect(!status.stdout.contains(fetched.stdout.trimmingCharacters(in: .whitespacesAndNewlines)), "status never shows the token")
        await setup.shutdown()
    }
}
