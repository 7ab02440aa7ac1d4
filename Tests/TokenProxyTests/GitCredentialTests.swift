import Foundation
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// `tokenproxy credential git` as git's credential helper (SPEC §2.5), with the real `git`
/// against a smart-HTTP server that takes a live access token of the mock issuer as the Basic
/// password: git asks the helper (`get`) after the server's 401, and tells it of a refused
/// password (`erase`), after which the next `get` refreshes — once.
@Suite("git credential helper", .serialized)
struct GitCredentialTests {
    struct Setup {
        let directory: TemporaryDirectory
        let issuer: MockTokenIssuer
        let server: MockGitServer
        let config: String
        let git: GitProcess

        /// The bare repository the server serves, and a working repository that pushes to it.
        var bare: String { directory.file("served/repo.git") }
        var work: String { directory.file("work") }
        var clone: String { directory.file("clone") }
        var remoteURL: String { server.url("repo.git") }
        var store: TokenStore { TokenStore(path: directory.file("token.json")) }

        /// An issuer of hour-long tokens, a store holding only a refresh token it accepts (unless
        /// `refreshToken` is nil), and a served repository with one commit.
        static func start(refreshToken: String? = "rt-initial", fixture change: (inout ConfigFixture) -> Void = { _ in }) async throws -> Setup {
            let directory = try TemporaryDirectory()
            var behavior = MockTokenIssuer.Behavior()
            behavior.lifetime = .seconds(3600)
            let issuer = try await MockTokenIssuer.start(behavior: behavior)
            var fixture = ConfigFixture(endpoint: issuer.url)
            change(&fixture)
            let config = try fixture.write(to: directory)
            if let refreshToken {
                issuer.grantRefreshToken(refreshToken)
                try TokenStore(path: directory.file("token.json")).write(TokenSet(refreshToken: refreshToken))
            }
            try FileManager.default.createDirectory(atPath: directory.file("home"), withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: directory.file("served"), withIntermediateDirectories: true)
            let git = GitProcess(home: directory.file("home"))
            let server = try await MockGitServer.start(projectRoot: directory.file("served")) { _, password in
                issuer.isValid(accessToken: password)
            }
            let setup = Setup(directory: directory, issuer: issuer, server: server, config: config, git: git)
            try await setup.expectGit(["init", "--quiet", "--bare", "--initial-branch=main", setup.bare])
            try await setup.expectGit(["init", "--quiet", "--initial-branch=main", setup.work])
            try await setup.expectGit(["-C", setup.work, "remote", "add", "origin", setup.bare])
            _ = try await setup.commit("first")
            return setup
        }

        /// Commits in the working repository and pushes to the served one (over the file
        /// system, not HTTP); returns the commit.
        func commit(_ message: String) async throws -> String {
            try directory.write("work/\(message).txt", message + "\n")
            try await expectGit(["-C", work, "add", "."])
            try await expectGit(["-C", work, "commit", "--quiet", "-m", message])
            try await expectGit(["-C", work, "push", "--quiet", "origin", "main"])
            return try await expectGit(["-C", work, "rev-parse", "HEAD"]).trimmingCharacters(in: .whitespacesAndNewlines)
        }

        /// Runs git for the setup; a failure fails the test.
        @discardableResult
        func expectGit(_ arguments: [String], sourceLocation: SourceLocation = #_sourceLocation) async throws -> String {
            let outcome = try await git.run(arguments)
            try #require(outcome.status == 0, "git \(arguments.joined(separator: " ")): \(outcome.stderr)", sourceLocation: sourceLocation)
            return outcome.stdout
        }

        /// The helper as a user configures it for this server only, after clearing any other.
        var helperOptions: [String] {
            ["-c", "credential.helper=", "-c", "credential.\(server.baseURL).helper=\(TokenProxyProcess.binary) credential git --config \(config)"]
        }

        /// git with the helper configured (`git -c … ARGUMENTS`).
        func gitWithHelper(_ arguments: [String], stdin: String = "/dev/null") async throws -> TokenProxyProcess.Outcome {
            try await git.run(helperOptions + arguments, stdin: stdin)
        }

        /// `tokenproxy credential git --config CONFIG ACTION` with `input` on its standard input,
        /// as git runs it.
        func helper(_ action: String, input: String? = nil) async throws -> TokenProxyProcess.Outcome {
            let stdin = try directory.write("helper-input-\(UUID().uuidString)", input ?? "protocol=http\nhost=127.0.0.1:\(server.port)\n\n")
            return try await TokenProxyProcess.run(["credential", "git", "--config", config, action], stdin: stdin, timeout: .seconds(30))
        }

        /// The commit `origin/main` names in the clone.
        func clonedHead() async throws -> String {
            try await expectGit(["-C", clone, "rev-parse", "origin/main"]).trimmingCharacters(in: .whitespacesAndNewlines)
        }

        /// The server's 401 answers so far.
        var unauthorized: Int { server.counters.unauthorized }

        /// Every access and refresh token this test could have exposed.
        var secrets: [String] {
            var values = Set(server.passwordsSeen)
            for call in issuer.calls { if let token = call.form["refresh_token"] { values.insert(token) } }
            if let tokens = try? store.read().tokens { [tokens.accessToken, tokens.refreshToken].compactMap { $0 }.forEach { values.insert($0) } }
            values.insert("rt-initial")
            return values.filter { !$0.isEmpty }.sorted()
        }

        func expectNoSecrets(in outcomes: TokenProxyProcess.Outcome..., sourceLocation: SourceLocation = #_sourceLocation) {
            let secrets = self.secrets
            for outcome in outcomes {
                for secret in secrets {
                    #expect(!outcome.stderr.contains(secret), "a token leaked into stderr: \(outcome.stderr)", sourceLocation: sourceLocation)
                }
            }
        }

        func shutdown() async {
            await server.shutdown()
            await issuer.shutdown()
        }
    }

    /// The `key=value` lines of a credential answer.
    static func fields(_ text: String) -> [String: String] {
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            if parts.count == 2 { fields[String(parts[0])] = String(parts[1]) }
        }
        return fields
    }

    // MARK: - The helper's answers

    @Test func getPrintsTheUsernameTheAccessTokenAndItsExpiry() async throws {
        let setup = try await Setup.start()
        let before = Int(Date().timeIntervalSince1970)
        let outcome = try await setup.helper("get")
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let lines = outcome.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines.count == 4 && lines.last == "", "three lines, each ended by a newline: \(outcome.stdout)")
        #expect(lines.first == "username=oauth2")
        let fields = Self.fields(outcome.stdout)
        let token = try #require(fields["password"])
        #expect(setup.issuer.isValid(accessToken: token))
        #expect(outcome.stdout.hasPrefix("username=oauth2\npassword=\(token)\npassword_expiry_utc="))
        let expiry = try #require(fields["password_expiry_utc"].flatMap { Int($0) })
        #expect(expiry >= before + 3600 - 5 && expiry <= Int(Date().timeIntervalSince1970) + 3600 + 5, "expiry \(expiry), asked at \(before)")
        #expect(setup.issuer.callCount == 1)

        // The token is shared through the store: the next `get` hands out the same one, without a call.
        let again = try await setup.helper("get")
        #expect(again.status == 0, "\(again.stderr)")
        #expect(Self.fields(again.stdout)["password"] == token)
        #expect(setup.issuer.callCount == 1)
        setup.expectNoSecrets(in: outcome, again)
        await setup.shutdown()
    }

    @Test func getAnswersTheConfiguredGitUsername() async throws {
        let setup = try await Setup.start { $0.extra = ["gitUsername": #""x-access-token""#] }
        let outcome = try await setup.helper("get")
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout.hasPrefix("username=x-access-token\npassword="), "\(outcome.stdout)")
        await setup.shutdown()
    }

    @Test func gitCredentialFillReturnsTheToken() async throws {
        let setup = try await Setup.start()
        let request = try setup.directory.write("fill", "protocol=http\nhost=127.0.0.1:\(setup.server.port)\n\n")
        let outcome = try await setup.gitWithHelper(["credential", "fill"], stdin: request)
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let fields = Self.fields(outcome.stdout)
        #expect(fields["protocol"] == "http")
        #expect(fields["host"] == "127.0.0.1:\(setup.server.port)")
        #expect(fields["username"] == "oauth2")
        let token = try #require(fields["password"])
        #expect(setup.issuer.isValid(accessToken: token))
        #expect(setup.issuer.callCount == 1)

        // Another host is not given the token: the helper is configured for this server only.
        let elsewhere = try setup.directory.write("fill-elsewhere", "protocol=http\nhost=127.0.0.1:9\n\n")
        let other = try await setup.gitWithHelper(["credential", "fill"], stdin: elsewhere)
        #expect(other.status != 0, "git found no credential and could not prompt")
        #expect(!other.stdout.contains(token))
        #expect(setup.issuer.callCount == 1)
        setup.expectNoSecrets(in: outcome, other)
        await setup.shutdown()
    }

    @Test("store and unknown actions print nothing, change nothing and exit 0", arguments: ["store", "frobnicate"])
    func otherActionsDoNothing(action: String) async throws {
        let setup = try await Setup.start()
        let token = try #require(Self.fields(try await setup.helper("get").stdout)["password"])
        let storeBefore = setup.directory.read("token.json")
        let outcome = try await setup.helper(action, input: "protocol=http\nhost=127.0.0.1:\(setup.server.port)\nusername=oauth2\npassword=\(token)\n\n")
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout.isEmpty)
        #expect(setup.directory.read("token.json") == storeBefore)
        #expect(setup.issuer.callCount == 1)
        setup.expectNoSecrets(in: outcome)
        await setup.shutdown()
    }

    // MARK: - erase

    @Test func eraseOfTheStoredTokenMakesTheNextGetRefreshOnce() async throws {
        let setup = try await Setup.start { $0.minRefreshInterval = "0s" }
        let first = try await setup.helper("get")
        let token = try #require(Self.fields(first.stdout)["password"])
        let erase = try await setup.helper("erase", input: "protocol=http\nhost=127.0.0.1:\(setup.server.port)\nusername=oauth2\npassword=\(token)\n\n")
        #expect(erase.status == 0, "\(erase.stderr)")
        #expect(erase.stdout.isEmpty)
        #expect(setup.issuer.callCount == 1, "erase itself calls no endpoint")
        #expect(try setup.store.read().tokens?.refreshToken != nil, "the refresh token is kept")

        let next = try await setup.helper("get")
        #expect(next.status == 0, "\(next.stderr)")
        let fresh = try #require(Self.fields(next.stdout)["password"])
        #expect(fresh != token)
        #expect(setup.issuer.isValid(accessToken: fresh))
        #expect(setup.issuer.callCount == 2)

        // The erased token is gone: erasing it again changes nothing.
        let stale = try await setup.helper("erase", input: "protocol=http\nhost=127.0.0.1:\(setup.server.port)\nusername=oauth2\npassword=\(token)\n\n")
        #expect(stale.status == 0 && stale.stdout.isEmpty)
        #expect(Self.fields(try await setup.helper("get").stdout)["password"] == fresh)
        #expect(setup.issuer.callCount == 2)
        setup.expectNoSecrets(in: first, erase, next, stale)
        await setup.shutdown()
    }

    @Test("erase of another password, or of none, changes nothing", arguments: ["password=at-someone-else\n", "", "password=\n"])
    func eraseOfAnotherPasswordChangesNothing(password: String) async throws {
        let setup = try await Setup.start { $0.minRefreshInterval = "0s" }
        let token = try #require(Self.fields(try await setup.helper("get").stdout)["password"])
        let erase = try await setup.helper("erase", input: "protocol=http\nhost=127.0.0.1:\(setup.server.port)\nusername=oauth2\n\(password)\n")
        #expect(erase.status == 0, "\(erase.stderr)")
        #expect(erase.stdout.isEmpty)
        let next = try await setup.helper("get")
        #expect(Self.fields(next.stdout)["password"] == token)
        #expect(setup.issuer.callCount == 1)
        await setup.shutdown()
    }

    /// `minRefreshInterval` bounds erase-caused refreshes as it bounds 401-caused ones (SPEC §2.5):
    /// after one erase dropped a token, another erase within the interval keeps the new one.
    @Test func aSecondEraseWithinMinRefreshIntervalChangesNothing() async throws {
        let setup = try await Setup.start { $0.minRefreshInterval = "1h" }
        let first = try #require(Self.fields(try await setup.helper("get").stdout)["password"])
        let dropped = try await setup.helper("erase", input: "protocol=http\nhost=127.0.0.1:\(setup.server.port)\nusername=oauth2\npassword=\(first)\n\n")
        #expect(dropped.status == 0, "\(dropped.stderr)")
        #expect(dropped.stdout.isEmpty)
        let second = try #require(Self.fields(try await setup.helper("get").stdout)["password"])
        #expect(second != first)
        #expect(setup.issuer.callCount == 2)

        let kept = try await setup.helper("erase", input: "protocol=http\nhost=127.0.0.1:\(setup.server.port)\nusername=oauth2\npassword=\(second)\n\n")
        #expect(kept.status == 0, "\(kept.stderr)")
        #expect(kept.stdout.isEmpty)
        #expect(Self.fields(try await setup.helper("get").stdout)["password"] == second)
        #expect(setup.issuer.callCount == 2)
        setup.expectNoSecrets(in: dropped, kept)
        await setup.shutdown()
    }

    // MARK: - Failures

    @Test("a refused refresh token: get exits 3 with nothing on stdout", arguments: ["revoked", "unknown", "empty store"])
    func aRefusedLoginExits3(store: String) async throws {
        let setup = try await Setup.start(refreshToken: store == "empty store" ? nil : "rt-initial")
        switch store {
        case "revoked": setup.issuer.revokeRefreshTokens()
        case "unknown": try setup.store.write(TokenSet(refreshToken: "rt-never-issued"))
        default: break
        }
        let outcome = try await setup.helper("get")
        #expect(outcome.status == 3, "\(outcome.stderr)")
        #expect(outcome.stdout.isEmpty, "git must not take anything from a failed get: \(outcome.stdout)")
        #expect(!outcome.stderr.isEmpty, "says why")
        #expect(setup.issuer.callCount == (store == "empty store" ? 0 : 1))
        setup.expectNoSecrets(in: outcome)
        await setup.shutdown()
    }

    @Test func anUnreachableIssuerExits1WithNothingOnStdout() async throws {
        let port = try LoopbackPort.unused()
        let setup = try await Setup.start { $0.endpoint = "http://127.0.0.1:\(port)/oauth/token" }
        let outcome = try await setup.helper("get")
        #expect(outcome.status == 1, "\(outcome.stderr)")
        #expect(outcome.stdout.isEmpty)
        #expect(!outcome.stderr.isEmpty)
        setup.expectNoSecrets(in: outcome)
        await setup.shutdown()
    }

    @Test func aMissingConfigurationExits2WithNothingOnStdout() async throws {
        let setup = try await Setup.start()
        let stdin = try setup.directory.write("input", "protocol=http\nhost=127.0.0.1\n\n")
        let outcome = try await TokenProxyProcess.run(["credential", "git", "--config", setup.directory.file("absent.json"), "get"], stdin: stdin)
        #expect(outcome.status == 2, "\(outcome.stderr)")
        #expect(outcome.stdout.isEmpty)
        #expect(setup.issuer.callCount == 0)
        await setup.shutdown()
    }

    // MARK: - git over HTTP

    /// The test server itself, without credentials: git's protocol v0 and v2 both clone, and a
    /// gzipped request body (many wants) is inflated by the backend.
    @Test("the git server serves clones without credentials", arguments: ["0", "2"])
    func theGitServerServesAnonymousClones(protocolVersion: String) async throws {
        let directory = try TemporaryDirectory()
        let git = GitProcess(home: directory.file("home"))
        try FileManager.default.createDirectory(atPath: directory.file("home"), withIntermediateDirectories: true)
        let bare = directory.file("served/repo.git")
        #expect(try await git.run(["init", "--quiet", "--bare", "--initial-branch=main", bare]).status == 0)
        // Forty commits, each tagged: forty wants, a request body larger than git sends plain.
        var stream = ""
        for number in 1...40 {
            stream += "commit refs/heads/main\nmark :\(number)\ncommitter Test <test@example.com> \(1_700_000_000 + number) +0000\ndata 3\nc\(number % 10)\n"
            stream += "M 644 inline file.txt\ndata \(String(number).utf8.count + 1)\n\(number)\n\n"
        }
        for number in 1...40 { stream += "reset refs/tags/t\(number)\nfrom :\(number)\n\n" }
        let input = try directory.write("fast-import", stream)
        let imported = try await git.run(["-C", bare, "fast-import", "--quiet"], stdin: input)
        try #require(imported.status == 0, "\(imported.stderr)")

        let server = try await MockGitServer.start(projectRoot: directory.file("served"))
        let clone = try await git.run(["-c", "protocol.version=\(protocolVersion)", "clone", "--quiet", server.url("repo.git"), directory.file("clone")])
        #expect(clone.status == 0, "\(clone.stderr)")
        let tags = try await git.run(["-C", directory.file("clone"), "tag"])
        #expect(tags.stdout.split(separator: "\n").count == 40)
        let file = directory.read("clone/file.txt")
        #expect(file == "40\n")
        #expect(server.counters.unauthorized == 0)
        #expect(server.received.allSatisfy { $0.status == 200 }, "\(server.received.map { "\($0.method) \($0.path) \($0.status)" })")
        #expect(server.received.contains { $0.method == "POST" && $0.contentEncoding == "gzip" }, "a gzipped body was served")
        await server.shutdown()
    }

    @Test func cloneAndFetchUseTheHelpersToken() async throws {
        let setup = try await Setup.start()
        let first = try await setup.expectGit(["-C", setup.work, "rev-parse", "HEAD"]).trimmingCharacters(in: .whitespacesAndNewlines)
        let clone = try await setup.gitWithHelper(["clone", "--quiet", setup.remoteURL, setup.clone])
        #expect(clone.status == 0, "\(clone.stderr)")
        #expect(try await setup.clonedHead() == first)
        #expect(setup.issuer.callCount == 1)
        #expect(setup.unauthorized == 1, "git asks the helper after the first 401, and keeps its answer for the command")
        let token = try #require(setup.server.passwordsSeen.first)
        #expect(setup.server.passwordsSeen == [token])
        #expect(setup.issuer.isValid(accessToken: token))
        #expect(setup.server.received.allSatisfy { $0.username == nil || $0.username == "oauth2" })

        let second = try await setup.commit("second")
        let fetch = try await setup.gitWithHelper(["-C", setup.clone, "fetch", "--quiet", "origin"])
        #expect(fetch.status == 0, "\(fetch.stderr)")
        #expect(try await setup.clonedHead() == second)
        #expect(setup.issuer.callCount == 1, "the stored token is used again")
        #expect(setup.unauthorized == 2)
        #expect(setup.server.passwordsSeen == [token])
        setup.expectNoSecrets(in: clone, fetch)
        await setup.shutdown()
    }

    /// Issue 20: the issuer revokes the access token; the next fetch fails with 401 and git
    /// erases the password; the fetch after that gets a refreshed token (one endpoint call)
    /// and succeeds.
    @Test func aFetchAfterTheIssuerRevokedTheTokenRecoversWithOneRefresh() async throws {
        let setup = try await Setup.start { $0.minRefreshInterval = "0s" }
        let clone = try await setup.gitWithHelper(["clone", "--quiet", setup.remoteURL, setup.clone])
        #expect(clone.status == 0, "\(clone.stderr)")
        let revoked = try #require(setup.server.passwordsSeen.first)
        #expect(setup.issuer.callCount == 1)

        setup.issuer.revokeAccessTokens()
        let second = try await setup.commit("second")
        let refused = try await setup.gitWithHelper(["-C", setup.clone, "fetch", "--quiet", "origin"])
        #expect(refused.status != 0, "the stored token is refused")
        #expect(refused.stderr.contains("Authentication failed"), "\(refused.stderr)")
        #expect(setup.unauthorized == 3, "the challenge, then the revoked token")
        #expect(setup.issuer.callCount == 1, "neither get nor erase calls the endpoint")
        #expect(try setup.store.read().tokens?.accessToken != revoked, "erase dropped the refused token")

        let recovered = try await setup.gitWithHelper(["-C", setup.clone, "fetch", "--quiet", "origin"])
        #expect(recovered.status == 0, "\(recovered.stderr)")
        #expect(try await setup.clonedHead() == second)
        #expect(setup.issuer.callCount == 2, "exactly one refresh")
        #expect(setup.unauthorized == 4, "only the challenge")
        let passwords = setup.server.passwordsSeen
        #expect(passwords.count == 2 && passwords.first == revoked)
        if let fresh = passwords.last { #expect(setup.issuer.isValid(accessToken: fresh)) }

        // And the fetch after that uses the new token without another call.
        let again = try await setup.gitWithHelper(["-C", setup.clone, "fetch", "--quiet", "origin"])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(setup.issuer.callCount == 2)
        setup.expectNoSecrets(in: clone, refused, recovered, again)
        await setup.shutdown()
    }

    /// What the design relies on, from the real git: `get` only after the server's challenge,
    /// once per command; after a refused password, `erase` with that password and no second
    /// `get` in the same command (so recovery takes the next command); `store` after a success.
    @Test func gitAsksAfterTheChallengeAndErasesTheRefusedPassword() async throws {
        let setup = try await Setup.start { $0.minRefreshInterval = "0s" }
        let log = setup.directory.file("helper.log")
        // The helper, behind a shell function that logs each action and git's request.
        let logging = "!f() { echo \"action=$1\" >> \(log); tee -a \(log) | \(TokenProxyProcess.binary) credential git --config \(setup.config) \"$@\"; }; f"
        let options = ["-c", "credential.helper=", "-c", "credential.\(setup.server.baseURL).helper=\(logging)"]
        func actions() -> [(action: String, fields: [String: String])] {
            let text = setup.directory.read("helper.log") ?? ""
            return text.components(separatedBy: "action=").dropFirst().map { entry in
                let lines = entry.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false)
                return (String(lines[0]), Self.fields(lines.count > 1 ? String(lines[1]) : ""))
            }
        }

        let clone = try await setup.git.run(options + ["clone", "--quiet", setup.remoteURL, setup.clone])
        #expect(clone.status == 0, "\(clone.stderr)")
        #expect(actions().map(\.action) == ["get", "store"])
        let token = try #require(setup.server.passwordsSeen.first)
        #expect(actions().last?.fields["password"] == token, "git reports the password that worked")

        setup.issuer.revokeAccessTokens()
        let refused = try await setup.git.run(options + ["-C", setup.clone, "fetch", "--quiet", "origin"])
        #expect(refused.status != 0)
        #expect(actions().map(\.action) == ["get", "store", "get", "erase"], "no second get after the erase")
        let erase = try #require(actions().last?.fields)
        #expect(erase["password"] == token)
        #expect(erase["username"] == "oauth2")
        #expect(erase["protocol"] == "http")
        #expect(erase["host"] == "127.0.0.1:\(setup.server.port)")

        let recovered = try await setup.git.run(options + ["-C", setup.clone, "fetch", "--quiet", "origin"])
        #expect(recovered.status == 0, "\(recovered.stderr)")
        #expect(actions().map(\.action) == ["get", "store", "get", "erase", "get", "store"])
        #expect(setup.issuer.callCount == 2)
        setup.expectNoSecrets(in: clone, refused, recovered)
        await setup.shutdown()
    }

    /// The guard against refresh storms: once an erase has dropped a token, a token refused
    /// within `minRefreshInterval` after that is not dropped on git's word, so fetches keep
    /// failing (without endpoint calls) until the interval has passed.
    @Test func aSecondRefusalWithinMinRefreshIntervalIsNotRefreshed() async throws {
        let setup = try await Setup.start { $0.minRefreshInterval = "1h" }
        let clone = try await setup.gitWithHelper(["clone", "--quiet", setup.remoteURL, setup.clone])
        #expect(clone.status == 0, "\(clone.stderr)")
        setup.issuer.revokeAccessTokens()
        let refused = try await setup.gitWithHelper(["-C", setup.clone, "fetch", "--quiet", "origin"])
        #expect(refused.status != 0)
        let recovered = try await setup.gitWithHelper(["-C", setup.clone, "fetch", "--quiet", "origin"])
        #expect(recovered.status == 0, "the first refusal is believed: \(recovered.stderr)")
        #expect(setup.issuer.callCount == 2)

        setup.issuer.revokeAccessTokens()
        for _ in 0..<2 {
            let fetch = try await setup.gitWithHelper(["-C", setup.clone, "fetch", "--quiet", "origin"])
            #expect(fetch.status != 0)
            #expect(fetch.stderr.contains("Authentication failed"), "\(fetch.stderr)")
        }
        #expect(setup.issuer.callCount == 2)
        #expect(setup.server.passwordsSeen.count == 2)
        await setup.shutdown()
    }

    /// A revoked login: the fetch fails, the helper exits 3 and git, which may not prompt, gives
    /// up; tokenproxy's message reaches the user through git's stderr.
    @Test func aFetchAfterTheLoginWasRevokedFailsWithoutPrompting() async throws {
        let setup = try await Setup.start { $0.minRefreshInterval = "0s" }
        let clone = try await setup.gitWithHelper(["clone", "--quiet", setup.remoteURL, setup.clone])
        #expect(clone.status == 0, "\(clone.stderr)")
        setup.issuer.revokeAccessTokens()
        setup.issuer.revokeRefreshTokens()

        let refused = try await setup.gitWithHelper(["-C", setup.clone, "fetch", "--quiet", "origin"])
        #expect(refused.status != 0)
        let failed = try await setup.gitWithHelper(["-C", setup.clone, "fetch", "--quiet", "origin"])
        #expect(failed.status != 0)
        #expect(failed.stderr.contains("tokenproxy"), "the helper's message: \(failed.stderr)")
        #expect(failed.stderr.contains("terminal prompts disabled"), "git found no password: \(failed.stderr)")
        #expect(setup.issuer.callCount == 2, "one refused refresh")

        // Another fetch does not call the endpoint again: the refusal is recorded in the store.
        let again = try await setup.gitWithHelper(["-C", setup.clone, "fetch", "--quiet", "origin"])
        #expect(again.status != 0)
        #expect(setup.issuer.callCount == 2)
        setup.expectNoSecrets(in: clone, refused, failed, again)
        await setup.shutdown()
    }
}
