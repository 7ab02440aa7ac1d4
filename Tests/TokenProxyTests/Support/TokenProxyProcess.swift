import Foundation
import Glibc
import TokenProxy

/// Runs the built `tokenproxy` binary as a separate process, as a user or a script would.
///
/// Spawned with `posix_spawn` (Foundation's `Process` is not safe to start from several tasks
/// at once); stdout and stderr go to files, so a chatty child can never block on a full pipe.
final class TokenProxyProcess: @unchecked Sendable {
    struct Outcome: Sendable {
        var status: Int32
        var stdout: String
        var stderr: String
        /// Whether the process was ended by a signal rather than by exiting.
        var signaled: Bool
    }

    /// The binary next to the test bundle (`swift test` builds it because the tests depend on it).
    static let binary: String = {
        if let path = ProcessInfo.processInfo.environment["TOKENPROXY_BINARY"] { return path }
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        return executable.deletingLastPathComponent().appendingPathComponent("tokenproxy").path
    }()

    private let arguments: [String]
    private let environment: [String: String]
    private let stdoutFile: String
    private let stderrFile: String
    private let stdinFile: String
    /// A program that runs the binary (`prlimit --nofile=64:64`), exec'ing it in its place.
    private let launcher: [String]
    /// The program run: the `tokenproxy` binary unless another was named.
    private let program: String
    private(set) var pid: pid_t = 0
    /// Whether ``wait(timeout:)`` reaped it.
    private var reaped = false

    /// `stdin` is a file whose content the process reads as standard input (default: nothing).
    init(_ arguments: [String], environment: [String: String] = [:], stdin: String = "/dev/null", launcher: [String] = [], program: String = TokenProxyProcess.binary) {
        self.arguments = arguments
        self.program = program
        self.launcher = launcher
        self.stdinFile = stdin
        var merged = ProcessInfo.processInfo.environment
        merged.removeValue(forKey: "TOKENPROXY_CONFIG")
        merged.removeValue(forKey: "NOTIFY_SOCKET")
        merged.merge(environment) { $1 }
        self.environment = merged
        let id = UUID().uuidString
        stdoutFile = NSTemporaryDirectory() + "/tokenproxy-out-\(id)"
        stderrFile = NSTemporaryDirectory() + "/tokenproxy-err-\(id)"
    }

    func start() throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, stdinFile, O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdoutFile, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, stderrFile, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        // Nothing else of this test process: a child holding a copy of an in-process listener's
        // socket would keep that address accepting after the listener closed.
        SpawnActions.closeDescriptors(from: 3, in: &actions)
        let argv = (launcher + [program] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        let result = posix_spawn(&pid, launcher.first ?? program, &actions, nil, argv, envp)
        guard result == 0 else { throw POSIXError(POSIXErrorCode(rawValue: result) ?? .EIO) }
    }

    /// A test that fails before waiting for its process (a thrown `#require`) must not leave it
    /// running beside the next tests: it is killed and reaped when the test lets go of it.
    deinit {
        guard pid != 0, !reaped else { return }
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        unlink(stdoutFile)
        unlink(stderrFile)
    }

    func signal(_ signal: Int32) {
        kill(pid, signal)
    }

    /// Waits for the process to end, killing it after `timeout`.
    func wait(timeout: Duration = .seconds(60)) async -> Outcome {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var status: Int32 = 0
        while waitpid(pid, &status, WNOHANG) == 0 {
            if ContinuousClock.now > deadline { kill(pid, SIGKILL) }
            try? await Task.sleep(for: .milliseconds(5))
        }
        reaped = true
        let signaled = (status & 0x7f) != 0
        let outcome = Outcome(
            status: signaled ? 128 + (status & 0x7f) : (status >> 8) & 0xff,
            stdout: (try? String(contentsOfFile: stdoutFile, encoding: .utf8)) ?? "",
            stderr: (try? String(contentsOfFile: stderrFile, encoding: .utf8)) ?? "",
            signaled: signaled
        )
        unlink(stdoutFile)
        unlink(stderrFile)
        return outcome
    }

    /// The port a `tokenproxy run` with `listen` port 0 bound, read from its "listening" log
    /// line (`key` is `port` or `adminPort`); `nil` if it did not start listening in time.
    func listeningPort(_ key: String = "port", timeout: Duration = .seconds(20)) async -> Int? {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while ContinuousClock.now < deadline {
            // Only whole lines: a read can see half of a write the process is making.
            let written = stderrSoFar
            let complete = written.lastIndex(of: "\n").map { written[...$0] } ?? ""
            for line in complete.split(separator: "\n") where line.contains(#""message":"listening""#) {
                guard let range = line.range(of: "\"\(key)\":\"") else { continue }
                return Int(line[range.upperBound...].prefix { $0.isNumber })
            }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid { return nil }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return nil
    }

    /// What the process has written to stdout so far.
    var stdoutSoFar: String { (try? String(contentsOfFile: stdoutFile, encoding: .utf8)) ?? "" }

    /// What the process has written to stderr so far.
    var stderrSoFar: String { (try? String(contentsOfFile: stderrFile, encoding: .utf8)) ?? "" }

    /// Runs `tokenproxy ARGUMENTS` to completion.
    static func run(_ arguments: [String], environment: [String: String] = [:], stdin: String = "/dev/null", timeout: Duration = .seconds(60)) async throws -> Outcome {
        let process = TokenProxyProcess(arguments, environment: environment, stdin: stdin)
        try process.start()
        return await process.wait(timeout: timeout)
    }
}
