import Foundation
import Testing

/// deploy/ as a deployer uses it (SPEC §8).
@Suite("deploy/", .serialized)
struct DeployTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    static func run(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: root)
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    static let hasSystemdAnalyze = FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze")

    @Test("units are hardened to an exposure of 1.5 or less", .enabled(if: hasSystemdAnalyze), arguments: ["tokenproxy.service", "tokenproxy@.service"])
    func exposure(unit: String) throws {
        let (status, output) = try Self.run(["systemd-analyze", "security", "--offline=yes", "deploy/\(unit)"])
        #expect(status == 0, "\(output)")
        let line = try #require(output.split(separator: "\n").first { $0.contains("Overall exposure level") })
        let score = try #require(Double(line.split(separator: ":").last!.split(separator: " ").first!))
        #expect(score <= 1.5, "\(line)")
    }

    static let hasPromtool = FileManager.default.isExecutableFile(atPath: "/usr/bin/promtool")

    /// deploy/observability: the alert rules pass their promtool unit tests (each alert firing
    /// and not firing), and every query of the Grafana dashboard parses and names metrics and
    /// labels that /metrics has.
    @Test(.enabled(if: hasPromtool, "promtool is not installed (Debian's prometheus package): the alert rules and dashboard are not checked"))
    func alertRulesAndDashboardPassTheirChecks() throws {
        let (status, output) = try Self.run(["env", "TOKENPROXY_REQUIRE_PROMTOOL=1", "bash", "deploy/observability/check.sh"])
        #expect(status == 0, "\(output)")
        #expect(!output.contains("SKIP"), "\(output)")
    }

    @Test func unitsRunTheBinaryAsANotifyService() throws {
        let unit = try String(contentsOfFile: Self.root + "/deploy/tokenproxy.service", encoding: .utf8)
        #expect(unit.contains("Type=notify"))
        #expect(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"))
        #expect(unit.contains("WatchdogSec="))
        let template = try String(contentsOfFile: Self.root + "/deploy/tokenproxy@.service", encoding: .utf8)
        #expect(template.contains("--config /etc/tokenproxy/%i.json"))
    }

    @Test func installDryRunShowsEveryStepAndChangesNothing() throws {
        let (status, output) = try Self.run(["bash", "deploy/install.sh", "--dry-run", "--no-build", "--instance", "billing"])
        #expect(status == 0, "\(output)")
        for step in ["install -m 0755 .build-release/release/tokenproxy /usr/local/bin/tokenproxy", "install -d -m 0700 -o tokenproxy -g tokenproxy /var/lib/tokenproxy",
                     "/etc/tokenproxy/billing.json", "systemctl enable tokenproxy@billing.service"] {
            #expect(output.contains(step), "missing step: \(step)")
        }
        #expect(!FileManager.default.fileExists(atPath: "/etc/systemd/system/tokenproxy@.service") || output.contains("+ install"))
        let (buildStatus, buildOutput) = try Self.run(["bash", "deploy/install.sh", "--dry-run"])
        #expect(buildStatus == 0)
        #expect(buildOutput.contains("+ deploy/build-release.sh"), "the production build: \(buildOutput)")
    }
}
