import Foundation
import NIOConcurrencyHelpers
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// `tokenproxy credential kubectl` and `credential json` (SPEC §1, §2.5; issue 20) with the real
/// binary: the ExecCredential validates against client-go's types
/// (`Fixtures/exec-credential.schema.json`), kubectl itself runs the binary as its exec plugin
/// against a fake API server, and the commands share the store, the lock and the single refresh
/// of `token --print`.
@Suite("tokenproxy credential kubectl / json", .serialized)
struct KubectlCredentialTests {
    static let v1 = "client.authentication.k8s.io/v1"
    static let v1beta1 = "client.authentication.k8s.io/v1beta1"
    static let schema = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/exec-credential.schema.json").path

    /// kubectl on `PATH` (the kubectl test is skipped without it).
    static let kubectl: String? = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":")
        .map { "\($0)/kubectl" }.first { FileManager.default.isExecutableFile(atPath: $0) }

    let directory: TemporaryDirectory

    init() throws {
        directory = try TemporaryDirectory()
    }

    private var store: TokenStore { TokenStore(path: directory.file("token.json")) }

    private func stored() throws -> TokenSet? { try store.read().tokens }

    /// An issuer of hour-long tokens (no refresh between two commands of one test) and a
    /// configuration for it; returns the configuration's path.
    private func start(_ change: @Sendable (inout MockTokenIssuer.Behavior) -> Void = { _ in }) async throws -> (MockTokenIssuer, String) {
        var behavior = MockTokenIssuer.Behavior()
        behavior.lifetime = .seconds(3600)
        change(&behavior)
        let issuer = try await MockTokenIssuer.start(behavior: behavior)
        return (issuer, try ConfigFixture(endpoint: issuer.url).write(to: directory))
    }

    /// A refresh token in the store, as `tokenproxy login --refresh-token-file` leaves it.
    private func handOver(_ token: String, to issuer: MockTokenIssuer) throws {
        issuer.grantRefreshToken(token)
        try store.write(TokenSet(refreshToken: token))
    }

    /// `tokenproxy credential ARGUMENTS --config C`, with `$KUBERNETES_EXEC_INFO` set to
    /// `execInfo`, or unset (even if this test process has it) when `nil`.
    private func credential(_ arguments: [String], config: String, execInfo: String? = nil) async throws -> TokenProxyProcess.Outcome {
        let process = TokenProxyProcess(
            ["credential"] + arguments + ["--config", config],
            environment: execInfo.map { ["KUBERNETES_EXEC_INFO": $0] } ?? [:],
            launcher: execInfo == nil ? ["/usr/bin/env", "-u", "KUBERNETES_EXEC_INFO"] : []
        )
        try process.start()
        return await process.wait(timeout: .seconds(30))
    }

    // MARK: - Checks

    /// The whole of stdout as one JSON object, which must end with exactly one newline.
    private func document(_ outcome: TokenProxyProcess.Outcome, sourceLocation: SourceLocation = #_sourceLocation) throws -> [String: Any] {
        #expect(outcome.stdout.hasSuffix("\n") && !outcome.stdout.hasSuffix("\n\n"), "one newline after the document: \(outcome.stdout.debugDescription)", sourceLocation: sourceLocation)
        let object = try JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8))
        return try #require(object as? [String: Any], "stdout is one JSON object: \(outcome.stdout.debugDescription)", sourceLocation: sourceLocation)
    }

    /// Validates `json` against `Fixtures/exec-credential.schema.json` with python3's
    /// `jsonschema`, formats checked (`date-time` needs `rfc3339-validator`, which
    /// `pip install 'jsonschema[format-nongpl]'` brings; without it jsonschema would pass any
    /// string, so its absence fails the test).
    private func expectValidExecCredential(_ json: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let script = #"""
            import json, sys
            try:
                import jsonschema
            except ImportError:
                print("python3 has no jsonschema module: pip install 'jsonschema[format-nongpl]'")
                sys.exit(2)
            schema = json.load(open(sys.argv[1]))
            validator = jsonschema.validators.validator_for(schema)
            validator.check_schema(schema)
            checker = validator.FORMAT_CHECKER
            if "date-time" not in checker.checkers:
                print("jsonschema cannot check format date-time without rfc3339-validator: pip install 'jsonschema[format-nongpl]'")
                sys.exit(2)
            document = json.loads(open(sys.argv[2]).read())
            errors = sorted(validator(schema, format_checker=checker).iter_errors(document), key=lambda e: list(e.path))
            for error in errors:
                print("/".join(str(p) for p in error.path) or "(document)", ":", error.message)
            sys.exit(1 if errors else 0)
            """#
        let file = try directory.write("exec-credential-\(UUID().uuidString).json", json)
        let python = TokenProxyProcess(["python3", "-c", script, Self.schema, file], program: "/usr/bin/env")
        try python.start()
        let outcome = await python.wait(timeout: .seconds(30))
        #expect(outcome.status == 0, "ExecCredential against \(Self.schema): \(outcome.stdout)\(outcome.stderr)\n\(json)", sourceLocation: sourceLocation)
    }

    /// `text` is `YYYY-MM-DDTHH:MM:SSZ`, the whole second `instant` is in (UTC).
    private func expectWholeSecondUTC(_ text: String?, of instant: Date?, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let text = try #require(text, sourceLocation: sourceLocation)
        let instant = try #require(instant, "the store holds an expiry", sourceLocation: sourceLocation)
        #expect(text.wholeMatch(of: #/[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z/#) != nil, "whole seconds, UTC Z: \(text)", sourceLocation: sourceLocation)
        let parsed = try #require(ISO8601DateFormatter().date(from: text), "\(text)", sourceLocation: sourceLocation)
        #expect(parsed.timeIntervalSince1970 == instant.timeIntervalSince1970.rounded(.down), "\(text) is the store's expires_at \(RFC3339.format(instant)) to the second", sourceLocation: sourceLocation)
    }

    /// None of the issuer's refresh tokens, the store's tokens or the client secret is in `text`.
    private func expectNoSecrets(in text: String, _ issuer: MockTokenIssuer, also: [String] = [], sourceLocation: SourceLocation = #_sourceLocation) {
        var secrets: Set<String> = [ConfigFixture.clientSecret]
        secrets.formUnion(also)
        for call in issuer.calls { if let token = call.form["refresh_token"] { secrets.insert(token) } }
        if let tokens = try? stored() { [tokens.accessToken, tokens.refreshToken].compactMap { $0 }.forEach { secrets.insert($0) } }
        for secret in secrets where !secret.isEmpty {
            #expect(!text.contains(secret), "a secret leaked: \(text)", sourceLocation: sourceLocation)
        }
    }

    // MARK: - credential kubectl

    @Test("the ExecCredential validates against client-go's types, in the apiVersion asked for", arguments: [
        (nil, v1),
        (#"{"apiVersion":"client.authentication.k8s.io/v1beta1","kind":"ExecCredential","spec":{"interactive":false}}"#, v1beta1),
        (#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","spec":{"interactive":false}}"#, v1),
    ] as [(String?, String)])
    func execCredentialValidates(execInfo: String?, apiVersion: String) async throws {
        let (issuer, config) = try await start()
        try handOver("rt-initial", to: issuer)

        let outcome = try await credential(["kubectl"], config: config, execInfo: execInfo)
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let answer = try document(outcome)
        try await expectValidExecCredential(outcome.stdout)
        #expect(answer["apiVersion"] as? String == apiVersion)
        #expect(answer["kind"] as? String == "ExecCredential")
        let status = try #require(answer["status"] as? [String: Any])
        let token = try #require(status["token"] as? String)
        #expect(issuer.isValid(accessToken: token), "a live token of the issuer: \(token)")
        #expect(issuer.callCount == 1)
        let tokens = try #require(try stored())
        #expect(tokens.accessToken == token, "the token the store holds")
        try expectWholeSecondUTC(status["expirationTimestamp"] as? String, of: tokens.expiresAt)
        expectNoSecrets(in: outcome.stderr, issuer)

        // The next run hands out the stored token, without a token call.
        let again = try await credential(["kubectl"], config: config, execInfo: execInfo)
        #expect(again.status == 0, "\(again.stderr)")
        #expect(again.stdout == outcome.stdout)
        #expect(issuer.callCount == 1)
        await issuer.shutdown()
    }

    /// client-go refuses an answer in another apiVersion than it asked for, so a version the
    /// plugin does not speak is an error before any token call.
    @Test func anUnsupportedAPIVersionIsAConfigurationError() async throws {
        let (issuer, config) = try await start()
        try handOver("rt-initial", to: issuer)
        let outcome = try await credential(["kubectl"], config: config, execInfo: #"{"apiVersion":"client.authentication.k8s.io/v1alpha1","kind":"ExecCredential","spec":{}}"#)
        #expect(outcome.status == 2, "\(outcome.stderr)")
        #expect(outcome.stdout.isEmpty)
        #expect(outcome.stderr.contains("v1alpha1"), "names the version: \(outcome.stderr)")
        #expect(issuer.callCount == 0)
        await issuer.shutdown()
    }

    @Test func eightProcessesOnAnExpiredStoreCauseOneEndpointCall() async throws {
        let (issuer, config) = try await start { $0.delay = .milliseconds(300) }
        issuer.grantRefreshToken("rt-initial")
        let past = Date() - 3600
        try store.write(TokenSet(accessToken: "at-expired", refreshToken: "rt-initial", expiresAt: past, obtainedAt: past - 1800))

        let processes = (0..<8).map { _ in
            TokenProxyProcess(["credential", "kubectl", "--config", config], launcher: ["/usr/bin/env", "-u", "KUBERNETES_EXEC_INFO"])
        }
        for process in processes { try process.start() }
        var outcomes: [TokenProxyProcess.Outcome] = []
        for process in processes { outcomes.append(await process.wait(timeout: .seconds(30))) }

        #expect(outcomes.map(\.status) == Array(repeating: 0, count: 8), "\(outcomes.map(\.stderr))")
        #expect(issuer.callCount == 1, "one refresh for all eight processes")
        #expect(Set(outcomes.map(\.stdout)).count == 1, "the same answer from every process: \(outcomes.map(\.stdout))")
        let tokens = try outcomes.map { outcome in try #require(try document(outcome)["status"] as? [String: Any])["token"] as? String }
        #expect(Set(tokens).count == 1)
        let token = try #require(tokens.first ?? nil)
        #expect(token != "at-expired")
        #expect(issuer.isValid(accessToken: token))
        #expect(token == (try stored()?.accessToken))
        expectNoSecrets(in: outcomes.map(\.stderr).joined(), issuer, also: ["at-expired", "rt-initial"])
        await issuer.shutdown()
    }

    @Test func aRefusedRefreshTokenExitsThreeWithNothingOnStdout() async throws {
        let (issuer, config) = try await start()
        issuer.grantRefreshToken("rt-revoked")
        issuer.revokeRefreshTokens()
        let past = Date() - 3600
        try store.write(TokenSet(accessToken: "at-expired", refreshToken: "rt-revoked", expiresAt: past, obtainedAt: past - 1800))

        for command in [["kubectl"], ["json"]] {
            let outcome = try await credential(command, config: config)
            #expect(outcome.status == 3, "\(command): \(outcome.stderr)")
            #expect(outcome.stdout.isEmpty, "\(command): \(outcome.stdout)")
            #expect(outcome.stderr.contains("tokenproxy login"), "\(command): says how to log in again: \(outcome.stderr)")
            expectNoSecrets(in: outcome.stderr, issuer, also: ["at-expired", "rt-revoked"])
        }
        #expect(issuer.callCount == 1, "the refusal is recorded in the store: the second command does not ask again")
        await issuer.shutdown()
    }

    // MARK: - kubectl itself

    /// A fake Kubernetes API server over TLS (client-go sends no credentials, exec plugins
    /// included, to a plain-http server: `tools/clientcmd/client_config.go` reads the user's
    /// auth only when `restclient.IsConfigTransportTLS`): 200 and a JSON body for a live token of
    /// `issuer`, else 401. Records every request's path and bearer token.
    struct FakeAPIServer {
        let server: MockHTTPServer
        let certificates: TestCertificates
        let seen: NIOLockedValueBox<[(path: String, token: String?)]>

        static func start(issuer: MockTokenIssuer, in directory: TemporaryDirectory) async throws -> FakeAPIServer {
            let certificates = try await TestCertificates.make(in: directory, name: "apiserver")
            let seen = NIOLockedValueBox<[(path: String, token: String?)]>([])
            let server = try await MockHTTPServer.start(tls: try certificates.serverContext()) { request in
                let token = request.header("Authorization").flatMap { $0.hasPrefix("Bearer ") ? String($0.dropFirst(7)) : nil }
                let path = String(request.uri.prefix { $0 != "?" })
                seen.withLockedValue { $0.append((path, token)) }
                guard let token, issuer.isValid(accessToken: token) else {
                    return .json(401, #"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#)
                }
                return .json(200, #"{"kind":"APITest","path":"\#(path)"}"#)
            }
            return FakeAPIServer(server: server, certificates: certificates, seen: seen)
        }

        /// A kubeconfig whose only user runs `tokenproxy credential kubectl` as its exec plugin.
        func kubeconfig(config: String, apiVersion: String, in directory: TemporaryDirectory) throws -> String {
            try directory.write("kubeconfig", """
                apiVersion: v1
                kind: Config
                clusters:
                - name: fake
                  cluster:
                    server: https://127.0.0.1:\(server.port)
                    certificate-authority: \(certificates.caFile)
                users:
                - name: tokenproxy
                  user:
                    exec:
                      apiVersion: \(apiVersion)
                      command: \(TokenProxyProcess.binary)
                      args: [credential, kubectl, --config, \(config)]
                      interactiveMode: Never
                contexts:
                - name: fake
                  context:
                    cluster: fake
                    user: tokenproxy
                current-context: fake

                """)
        }
    }

    /// `kubectl get --raw PATH` with `HOME` and `KUBECONFIG` in the test's folder, so nothing of
    /// the user's is read and kubectl's cache (`~/.kube/cache`) is the test's.
    private func runKubectl(_ kubectl: String, kubeconfig: String, path: String) async throws -> TokenProxyProcess.Outcome {
        let home = directory.file("home")
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
        let process = TokenProxyProcess(
            ["--kubeconfig", kubeconfig, "--request-timeout=20s", "get", "--raw", path],
            environment: ["HOME": home, "KUBECONFIG": kubeconfig, "KUBECACHEDIR": home + "/.kube/cache"],
            program: kubectl
        )
        try process.start()
        return await process.wait(timeout: .seconds(60))
    }

    /// Every file under `folder` whose content contains `token`.
    private func files(under folder: String, containing token: String) -> [String] {
        guard let walker = FileManager.default.enumerator(atPath: folder) else { return [] }
        return walker.compactMap { $0 as? String }.filter { name in
            FileManager.default.contents(atPath: folder + "/" + name).map { String(decoding: $0, as: UTF8.self).contains(token) } ?? false
        }
    }

    @Test("kubectl runs credential kubectl as its exec plugin", .enabled(if: kubectl != nil, "kubectl is not on PATH: kubectl's own run of the exec plugin is not tested"), arguments: [v1, v1beta1])
    func kubectlUsesTheToken(apiVersion: String) async throws {
        let kubectl = try #require(Self.kubectl)
        let (issuer, config) = try await start()
        try handOver("rt-initial", to: issuer)
        let api = try await FakeAPIServer.start(issuer: issuer, in: directory)
        let kubeconfig = try api.kubeconfig(config: config, apiVersion: apiVersion, in: directory)

        let outcome = try await runKubectl(kubectl, kubeconfig: kubeconfig, path: "/api-test-path")
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == #"{"kind":"APITest","path":"/api-test-path"}"#)
        let token = try #require(try stored()?.accessToken)
        #expect(issuer.isValid(accessToken: token))
        #expect(issuer.callCount == 1)
        let seen = api.seen.withLockedValue { $0 }
        #expect(seen.contains { $0.path == "/api-test-path" && $0.token == token }, "the API server saw the token: \(seen.map(\.path))")
        #expect(seen.allSatisfy { $0.token == token }, "every request of kubectl carried it: \(seen.map { ($0.path, $0.token == nil ? "no token" : $0.token == token ? "token" : "another token") })")
        // client-go keeps exec credentials in memory only.
        #expect(files(under: directory.file("home"), containing: token).isEmpty, "kubectl wrote the token to disk")
        expectNoSecrets(in: outcome.stdout + outcome.stderr, issuer)

        // A second kubectl process runs the plugin again, which hands out the stored token.
        let again = try await runKubectl(kubectl, kubeconfig: kubeconfig, path: "/api-test-path")
        #expect(again.status == 0, "\(again.stderr)")
        #expect(issuer.callCount == 1)
        await api.server.shutdown()
        await issuer.shutdown()
    }

    @Test("kubectl shows the plugin's advice when a login is needed", .enabled(if: kubectl != nil, "kubectl is not on PATH: kubectl's own run of the exec plugin is not tested"))
    func kubectlShowsTheReLoginAdvice() async throws {
        let kubectl = try #require(Self.kubectl)
        let (issuer, config) = try await start()
        try store.write(TokenSet(refreshToken: "rt-revoked"))
        let api = try await FakeAPIServer.start(issuer: issuer, in: directory)
        let kubeconfig = try api.kubeconfig(config: config, apiVersion: Self.v1, in: directory)

        let outcome = try await runKubectl(kubectl, kubeconfig: kubeconfig, path: "/api-test-path")
        #expect(outcome.status != 0)
        #expect(outcome.stdout.isEmpty, "\(outcome.stdout)")
        #expect(outcome.stderr.contains("tokenproxy login"), "client-go passes the plugin's stderr on: \(outcome.stderr)")
        #expect(outcome.stderr.contains("exit code 3"), "\(outcome.stderr)")
        #expect(api.seen.withLockedValue { $0 }.allSatisfy { $0.token == nil }, "no request carried a token")
        expectNoSecrets(in: outcome.stderr, issuer, also: ["rt-revoked"])
        await api.server.shutdown()
        await issuer.shutdown()
    }

    // MARK: - credential json

    /// `store`: what the store holds before the command — a refresh token only, a token with an
    /// hour left (handed out as is), or one with 5 s left, inside `minValidity` (10 s: refreshed
    /// first).
    @Test("credential json matches the store", arguments: ["refresh token only", "valid token", "inside minValidity"])
    func credentialJSON(store state: String) async throws {
        let (issuer, config) = try await start()
        issuer.grantRefreshToken("rt-initial")
        let now = Date()
        switch state {
        case "valid token": try store.write(TokenSet(accessToken: "at-valid-for-an-hour", refreshToken: "rt-initial", expiresAt: now + 3600, obtainedAt: now, scope: "api.read"))
        case "inside minValidity": try store.write(TokenSet(accessToken: "at-almost-expired", refreshToken: "rt-initial", expiresAt: now + 5, obtainedAt: now - 3595, scope: "api.read"))
        default: try store.write(TokenSet(refreshToken: "rt-initial"))
        }

        let before = Date()
        let outcome = try await credential(["json"], config: config)
        let after = Date()
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let json = try document(outcome)
        #expect(Set(json.keys) == ["access_token", "token_type", "expires_at", "expires_in"], "\(json.keys.sorted())")
        let tokens = try #require(try stored())
        let token = try #require(json["access_token"] as? String)
        #expect(token == tokens.accessToken, "the store's token")
        if state == "valid token" {
            #expect(token == "at-valid-for-an-hour")
            #expect(issuer.callCount == 0)
        } else {
            #expect(issuer.isValid(accessToken: token), "a live token of the issuer")
            #expect(issuer.callCount == 1)
        }
        #expect(json["token_type"] as? String == tokens.tokenType)
        #expect(json["token_type"] as? String == "Bearer")
        try expectWholeSecondUTC(json["expires_at"] as? String, of: tokens.expiresAt)

        // A whole number of seconds: what was left of the token when the process looked.
        let expiresAt = try #require(tokens.expiresAt)
        let expiresIn = try #require(json["expires_in"] as? NSNumber, "expires_in is a number: \(outcome.stdout)")
        #expect(outcome.stdout.firstMatch(of: #/"expires_in" *: *[0-9]+ *[,}]/#) != nil, "a whole number: \(outcome.stdout)")
        let left = expiresIn.doubleValue
        #expect(left >= expiresAt.timeIntervalSince(after).rounded(.down) - 1 && left <= expiresAt.timeIntervalSince(before).rounded(.up), "expires_in \(left) for a token expiring \(RFC3339.format(expiresAt))")
        #expect(left > 3000, "an hour-long token: \(left)")
        expectNoSecrets(in: outcome.stderr, issuer, also: ["at-almost-expired"])
        await issuer.shutdown()
    }
}
