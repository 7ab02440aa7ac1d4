import Foundation
import Glibc
import TokenProxy

/// The suites that start heavy real peers (Chromium; Python HTTP/2 and gRPC clients and servers)
/// run in a pass of their own, one test at a time: README's test command runs it after the rest
/// with `TOKENPROXY_PEER_TESTS=1`. Beside the timing tests of the other suites on two cores they
/// made those late.
enum PeerPass {
    static var isThisPass: Bool { ProcessInfo.processInfo.environment["TOKENPROXY_PEER_TESTS"] == "1" }

    /// Whether `suite` runs: only in this pass, when nothing it needs is `missing`, and always
    /// under CI (which installs them), where a missing piece fails the tests instead of
    /// skipping them.
    static func enabled(_ suite: String, missing: String?) -> Bool {
        guard isThisPass else { return false }
        guard let missing else { return true }
        if ProcessInfo.processInfo.environment["CI"] != nil {
            print("\(suite): missing \(missing) under CI; the tests run and fail")
            return true
        }
        print("\(suite) skipped: missing \(missing) (bash .ci/run installs them)")
        return false
    }

    /// What the HTTP/2 suites need beside the binary: Python's h2 and grpcio, and curl.
    static let http2Missing: String? = {
        var missing: [String] = []
        if !succeeds(["/usr/bin/env", "python3", "-c", "import h2, grpc"]) { missing.append("python3's h2 and grpcio (pip install h2 grpcio)") }
        if !FileManager.default.isExecutableFile(atPath: "/usr/bin/curl") { missing.append("/usr/bin/curl") }
        return missing.isEmpty ? nil : missing.joined(separator: ", ")
    }()

    /// Whether `argv` runs and exits 0 (nothing on the standard streams), within a few seconds.
    static func succeeds(_ argv: [String]) -> Bool {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for descriptor: Int32 in 0...2 { posix_spawn_file_actions_addopen(&actions, descriptor, "/dev/null", descriptor == 0 ? O_RDONLY : O_WRONLY, 0) }
        SpawnActions.closeDescriptors(from: 3, in: &actions)
        let arguments = argv.map { strdup($0) } + [nil]
        defer { arguments.forEach { free($0) } }
        var pid: pid_t = 0
        guard posix_spawn(&pid, argv[0], &actions, nil, arguments, environ) == 0 else { return false }
        var status: Int32 = 0
        let deadline = Date().addingTimeInterval(20)
        while waitpid(pid, &status, WNOHANG) == 0 {
            if Date() > deadline { kill(pid, SIGKILL) }
            usleep(10_000)
        }
        return (status & 0x7f) == 0 && (status >> 8) & 0xff == 0
    }
}
