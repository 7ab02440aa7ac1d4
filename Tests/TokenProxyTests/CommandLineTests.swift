import Foundation
import Testing

/// The command line as a user meets it (SPEC §1).
@Suite("Command line")
struct CommandLineTests {
    @Test func checkConfigReportsEveryMistakeWithItsKeyPath() async throws {
        let directory = try TemporaryDirectory()
        let config = try directory.write("config.json", """
            {
              "upstream": { "url": "http://127.0.0.1:9000" },
              "token": { "endpoint": "http://127.0.0.1:9001/token", "grant": "client_credentials", "clientId": "c",
                         "clientSecretEnv": "SECRET", "refreshBefore": "five minutes", "lockTimout": "1s" },
              "retry": { "attempts": 0 }
            }
            """)
        let outcome = try await TokenProxyProcess.run(["check-config", "--config", config])
        #expect(outcome.status == 2)
        let lines = outcome.stderr.split(separator: "\n").filter { $0.hasPrefix("  ") }
        #expect(lines.count == 3, "\(outcome.stderr)")
        #expect(outcome.stderr.contains("token.refreshBefore: \"five minutes\" is not a duration"))
        #expect(outcome.stderr.contains("token.lockTimout: unknown key"))
        #expect(outcome.stderr.contains("retry.attempts: must be from 1 to 10, found 0"))
        #expect(!outcome.stdout.contains("ok"))
    }

    @Test func theExampleConfigurationPasses() async throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let outcome = try await TokenProxyProcess.run(["check-config", "--config", root.appendingPathComponent("config.example.json").path])
        #expect(outcome.status == 0)
        #expect(outcome.stdout == "ok\n")
    }

    @Test func configDefaultsToTheEnvironmentVariable() async throws {
        let directory = try TemporaryDirectory()
        let config = try directory.write("config.json", #"{"upstream": {"url": "http://127.0.0.1:9"}, "token": {"endpoint": "http://127.0.0.1:9/t", "clientAuth": "none"}}"#)
        let outcome = try await TokenProxyProcess.run(["check-config"], environment: ["TOKENPROXY_CONFIG": config])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let missing = try await TokenProxyProcess.run(["check-config"], environment: ["TOKENPROXY_CONFIG": directory.file("absent.json")])
        #expect(missing.status == 2)
        #expect(missing.stderr.contains("absent.json"))
    }

    @Test func versionAndUsageErrors() async throws {
        let version = try await TokenProxyProcess.run(["--version"])
        #expect(version.status == 0)
        #expect(version.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "0.1.0")
        let usage = try await TokenProxyProcess.run(["token", "--no-such-flag"])
        #expect(usage.status == 2)
    }
}
