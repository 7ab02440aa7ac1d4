import Foundation

/// Runs the real `git`, as a user would, but isolated from the user running the tests: no
/// system or global configuration (HOME is `home`), no prompt (a missing credential fails
/// instead), no proxy for loopback addresses, English messages.
struct GitProcess: Sendable {
    /// `git` on `PATH`.
    static let executable: String? = {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        return path.split(separator: ":").map { $0 + "/git" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    /// The folder git takes as HOME.
    let home: String

    /// What git's environment must not inherit from the test process: a repository of its own
    /// (when the tests run from a git hook) or the user's prompts.
    private static let unset = ["GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR", "GIT_CONFIG", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM", "XDG_CONFIG_HOME"]

    var environment: [String: String] {
        [
            "HOME": home, "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": "",
            "LANG": "C", "LC_ALL": "C",
            "http_proxy": "", "HTTP_PROXY": "", "https_proxy": "", "HTTPS_PROXY": "", "all_proxy": "", "ALL_PROXY": "", "no_proxy": "*", "NO_PROXY": "*",
            "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.com", "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.com",
        ]
    }

    /// Runs `git ARGUMENTS` to completion (killed after `timeout`); `stdin` is a file.
    func run(_ arguments: [String], stdin: String = "/dev/null", timeout: Duration = .seconds(60)) async throws -> TokenProxyProcess.Outcome {
        guard let git = Self.executable else { throw POSIXError(.ENOENT) }
        let launcher = ["/usr/bin/env"] + Self.unset.flatMap { ["-u", $0] }
        let process = TokenProxyProcess(arguments, environment: environment, stdin: stdin, launcher: launcher, program: git)
        try process.start()
        return await process.wait(timeout: timeout)
    }
}
