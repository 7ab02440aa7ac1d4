import Foundation
import Testing

@testable import TokenProxy

@Suite("Configuration (SPEC §2)")
struct ConfigurationTests {
    static let minimal = #"{"upstream": {"url": "http://127.0.0.1:9000"}, "token": {"endpoint": "http://127.0.0.1:9001/token", "grant": "client_credentials", "clientId": "c", "clientSecretEnv": "SECRET"}}"#

    private func problems(_ json: String) -> [String] {
        do {
            _ = try Configuration.parse(Data(json.utf8), path: "/etc/tokenproxy/config.json")
            return []
        } catch {
            return error.problems.map(\.description)
        }
    }

    private func parse(_ json: String) throws -> Configuration {
        try Configuration.parse(Data(json.utf8), path: "/srv/app/config.json")
    }

    @Test("durations need a unit", arguments: [
        ("250ms", Duration.milliseconds(250)), ("5s", .seconds(5)), ("5m", .seconds(300)), ("1h", .seconds(3600)), ("0s", .zero),
    ])
    func durations(text: String, expected: Duration) {
        #expect(Duration(configString: text) == expected)
    }

    @Test("malformed durations are refused", arguments: ["5", "5 s", "-5s", "1.5s", "5w", "", "s", "99999999999999h"])
    func malformedDurations(text: String) {
        #expect(Duration(configString: text) == nil)
    }

    @Test func defaultsFillEverythingOptional() throws {
        let configuration = try parse(Self.minimal)
        #expect(configuration.listen == .tcp(host: "127.0.0.1", port: 8787))
        #expect(configuration.admin?.listen == .tcp(host: "127.0.0.1", port: 8788))
        #expect(configuration.token.refreshBefore == .seconds(300))
        #expect(configuration.token.minValidity == .seconds(10))
        #expect(configuration.token.clientAuth == .basic)
        #expect(configuration.retry.attempts == 3)
        #expect(configuration.retry.replayBuffer == 1_048_576)
        #expect(configuration.faults.enabled == false)
    }

    @Test func relativePathsAreAnchoredAtTheConfigFolder() throws {
        let json = #"{"listen": "unix:run/proxy.sock", "upstream": {"url": "https://api.example.com/v1/"}, "token": {"endpoint": "https://auth.example.com/token", "clientId": "c", "clientSecretFile": "secret", "store": "state/token.json"}}"#
        let configuration = try parse(json)
        #expect(configuration.listen == .unix(path: "/srv/app/run/proxy.sock"))
        #expect(configuration.token.store == "/srv/app/state/token.json")
        #expect(configuration.token.lockFile == "/srv/app/state/token.lock")
        #expect(configuration.token.clientSecret == .file("/srv/app/secret"))
        #expect(configuration.upstream.url.pathPrefix == "/v1")
        #expect(configuration.upstream.url.hostHeader == "api.example.com")
    }

    @Test func adminNullDisablesTheAdminListener() throws {
        let json = Self.minimal.replacingOccurrences(of: #""upstream""#, with: #""admin": null, "upstream""#)
        #expect(try parse(json).admin == nil)
    }

    @Test func unknownKeysAreErrorsWithTheirPath() {
        let json = Self.minimal.replacingOccurrences(of: #""grant""#, with: #""refreshBefor": "5m", "grant""#)
        #expect(problems(json) == ["token.refreshBefor: unknown key (check the spelling; config.example.json lists every key)"])
    }

    @Test func everyProblemIsReportedInOneRun() {
        let json = #"{"listen": "0.0.0.0:8787", "upstream": {"url": "ftp://x", "readTimeout": 60}, "token": {"grant": "password", "refreshBefore": "1s", "minValidity": "10s", "extraParams": {"scope": "x"}}, "retry": {"attempts": 0}, "faults": {"upstream401Percent": 150}, "log": {"format": "xml"}}"#
        let found = problems(json)
        let paths = found.map { String($0.prefix { $0 != ":" }) }
        #expect(paths == [
            "listen", "upstream.url", "upstream.readTimeout", "token.endpoint", "token.grant", "token.extraParams.scope",
            "token.minValidity", "retry.attempts", "faults.upstream401Percent", "log.format",
        ], "\(found)")
    }

    @Test func upstreamProtocolIsOneOfThree() throws {
        #expect(try parse(Self.minimal).upstream.protocol == .http1)
        for value in ["http1", "http2", "auto"] {
            let json = Self.minimal.replacingOccurrences(of: #""upstream": {"#, with: #""upstream": {"protocol": "\#(value)", "#)
            #expect(try parse(json).upstream.protocol.rawValue == value)
        }
        let wrong = Self.minimal.replacingOccurrences(of: #""upstream": {"#, with: #""upstream": {"protocol": "h2c", "#)
        #expect(problems(wrong).first?.hasPrefix("upstream.protocol:") == true, "\(problems(wrong))")
    }

    @Test func nonLoopbackListenNeedsTheExplicitFlag() throws {
        let exposed = Self.minimal.replacingOccurrences(of: #""upstream""#, with: #""listen": "0.0.0.0:8787", "upstream""#)
        #expect(problems(exposed).count == 1)
        let allowed = exposed.replacingOccurrences(of: #""listen""#, with: #""allowNonLoopback": true, "listen""#)
        #expect(try parse(allowed).listen == .tcp(host: "0.0.0.0", port: 8787))
        let admin = Self.minimal.replacingOccurrences(of: #""upstream""#, with: #""allowNonLoopback": true, "admin": {"listen": "10.0.0.1:8788"}, "upstream""#)
        #expect(problems(admin).first?.hasPrefix("admin.listen:") == true)
    }

    @Test func plainHTTPTokenEndpointOnlyOnLoopback() {
        let remote = Self.minimal.replacingOccurrences(of: "http://127.0.0.1:9001/token", with: "http://auth.example.com/token")
        #expect(problems(remote).first?.hasPrefix("token.endpoint: plain http") == true)
    }

    @Test func secretSourcesAreExclusive() {
        let both = Self.minimal.replacingOccurrences(of: #""clientSecretEnv""#, with: #""clientSecretFile": "/x", "clientSecretEnv""#)
        #expect(problems(both).count == 1)
    }

    @Test func wrongTypesNameTheExpectedType() {
        let json = #"{"upstream": {"url": true}, "token": {"endpoint": "https://a/t", "clientAuth": "none"}, "retry": {"attempts": "3"}}"#
        #expect(problems(json) == [
            "upstream.url: expected a string, found a boolean",
            "retry.attempts: expected a number, found a string",
        ])
    }

    @Test func malformedJSONIsOneProblem() {
        #expect(problems("{\"listen\": ").count == 1)
        #expect(problems("[]") == ["the top level must be a JSON object"])
    }

    @Test func secretFilesLoseTheirTrailingNewline() throws {
        let directory = try TemporaryDirectory()
        let path = try directory.write("secret", "value-with-newline\n")
        #expect(try TokenCredentials.readSecret(.file(path), environment: [:]) == "value-with-newline")
        #expect(try TokenCredentials.readSecret(.environment("S"), environment: ["S": "from-env"]) == "from-env")
        #expect(throws: TokenBrokerError.self) { try TokenCredentials.readSecret(.environment("S"), environment: [:]) }
    }

    @Test func theExampleConfigurationIsValid() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let configuration = try Configuration.load(path: root.appendingPathComponent("config.example.json").path)
        #expect(configuration.token.extraParams == ["audience": "https://api.example.com"])
        #expect(configuration.upstream.url.scheme == .https)
    }

    @Test("listen addresses", arguments: [
        ("127.0.0.1:8787", ListenAddress.tcp(host: "127.0.0.1", port: 8787)),
        ("[::1]:80", .tcp(host: "::1", port: 80)),
        ("localhost:0", .tcp(host: "localhost", port: 0)),
        ("unix:/run/t.sock", .unix(path: "/run/t.sock")),
    ])
    func listenAddresses(text: String, expected: ListenAddress) throws {
        #expect(try ListenAddress.parse(text).get() == expected)
    }
}
