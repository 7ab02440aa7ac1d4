import Foundation

/// Runs the built `tokenproxy` binary as a separate process, as a user or a script would.
struct TokenProxyProcess {
    struct Outcome: Sendable {
        var status: Int32
        var stdout: String
        var stderr: String
        /// How the process ended: by exit, or by a signal.
        var signaled: Bool
    }

    /// The binary next to the test bundle (`swift test` builds it because the tests depend on it).
    static let binary: String = {
        if let path = ProcessInfo.processInfo.environment["TOKENPROXY_BINARY"] { return path }
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        return executable.deletingLastPathComponent().appendingPathComponent("tokenproxy").path
    }()

    let process = Process()
    private let stdoutFile: String
    private let stderrFile: String

    init(_ arguments: [String], environment: [String: String] = [:]) {
        let id = UUID().uuidString
        stdoutFile = NSTemporaryDirectory() + "/tokenproxy-out-\(id)"
        stderrFile = NSTemporaryDirectory() + "/tokenproxy-err-\(id)"
        _ = FileManager.default.createFile(atPath: stdoutFile, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrFile, contents: nil)
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = arguments
        var merged = ProcessInfo.processInfo.environment
        merged.removeValue(forKey: "TOKENPROXY_CONFIG")
        merged.merge(environment) { $1 }
        process.environment = merged
        process.standardOutput = FileHandle(forWritingAtPath: stdoutFile)
        process.standardError = FileHandle(forWritingAtPath: stderrFile)
        process.standardInput = FileHandle.nullDevice
    }

    func start() throws {
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }

    /// Waits for the process to end, killing it after `timeout`.
    func wait(timeout: Duration = .seconds(60)) async -> Outcome {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while process.isRunning {
            if ContinuousClock.now > deadline { kill(pid, SIGKILL) }
            try? await Task.sleep(for: .milliseconds(5))
        }
        let outcome = Outcome(
            status: process.terminationStatus,
            stdout: (try? String(contentsOfFile: stdoutFile, encoding: .utf8)) ?? "",
            stderr: (try? String(contentsOfFile: stderrFile, encoding: .utf8)) ?? "",
            signaled: process.terminationReason == .uncaughtSignal
        )
        try? FileManager.default.removeItem(atPath: stdoutFile)
        try? FileManager.default.removeItem(atPath: stderrFile)
        return outcome
    }

    /// Runs `tokenproxy ARGUMENTS` to completion.
    static func run(_ arguments: [String], environment: [String: String] = [:], timeout: Duration = .seconds(60)) async throws -> Outcome {
        let process = TokenProxyProcess(arguments, environment: environment)
        try process.start()
        return await process.wait(timeout: timeout)
    }
}
