import FoundationEssentials
import Glibc
import NIOConcurrencyHelpers

/// A git smart-HTTP server on 127.0.0.1, as a web server in front of `git http-backend` is: each
/// request runs the backend as a CGI program over the bare repositories under `projectRoot`.
/// With ``accepts`` set, every request must carry HTTP Basic credentials that it accepts (a
/// forge that takes an OAuth access token as the password, e.g. `issuer.isValid(accessToken:)`);
/// others get 401 with `WWW-Authenticate: Basic realm="git"`, which is what makes git ask its
/// credential helpers (`get`) and tell them of a refused password (`erase`).
public final class MockGitServer: Sendable {
    /// Whether a request's Basic credentials are accepted.
    public typealias Acceptor = @Sendable (_ username: String, _ password: String) -> Bool

    /// One request the server received.
    public struct Received: Sendable {
        public var method: String
        /// The path, without the query (`/repo.git/info/refs`).
        public var path: String
        public var query: String
        /// The Basic credentials the request carried, `nil` when it carried none.
        public var username: String?
        public var password: String?
        /// `Content-Encoding` of the request body (git gzips larger ones).
        public var contentEncoding: String?
        /// The status answered: 401 when the credentials were missing or refused, else the backend's.
        public var status: Int
    }

    public struct Counters: Sendable {
        public var requests = 0
        /// Requests answered 401 (no credentials, or refused ones).
        public var unauthorized = 0
    }

    private let server: MockHTTPServer
    private let scratch: String
    private let state: NIOLockedValueBox<[Received]>

    public var port: Int { server.port }
    public var baseURL: String { server.baseURL }
    /// The clone URL of the repository `name` under the project root (`repo.git`).
    public func url(_ name: String) -> String { baseURL + "/" + name }

    /// Every request received so far, in order.
    public var received: [Received] { state.withLockedValue { $0 } }

    public var counters: Counters {
        state.withLockedValue { received in
            Counters(requests: received.count, unauthorized: received.filter { $0.status == 401 }.count)
        }
    }

    /// The distinct passwords presented so far, in the order first seen.
    public var passwordsSeen: [String] {
        var seen: [String] = []
        for password in received.compactMap(\.password) where !seen.contains(password) { seen.append(password) }
        return seen
    }

    /// Starts serving the bare repositories under `projectRoot` (`GIT_PROJECT_ROOT`). Without
    /// `accepts`, anonymous requests are served too (and any credentials are accepted).
    public static func start(projectRoot: String, accepts: Acceptor? = nil, timeout: Duration = .seconds(30)) async throws -> MockGitServer {
        let scratch = try makeScratchDirectory()
        let backend = try await httpBackendPath(scratch: scratch)
        let state = NIOLockedValueBox<[Received]>([])
        let sequence = NIOLockedValueBox(0)
        let server = try await MockHTTPServer.start { request in
            let target = request.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
            let path = String(target[0])
            let query = target.count > 1 ? String(target[1]) : ""
            let credentials = basicCredentials(request.header("Authorization"))
            func record(_ status: Int) {
                state.withLockedValue {
                    $0.append(Received(
                        method: request.method, path: path, query: query, username: credentials?.username, password: credentials?.password,
                        contentEncoding: request.header("Content-Encoding"), status: status))
                }
            }
            if let accepts {
                guard let credentials, accepts(credentials.username, credentials.password) else {
                    record(401)
                    return MockHTTPResponse(status: 401, headers: [("WWW-Authenticate", #"Basic realm="git""#), ("Content-Type", "text/plain")], body: "authentication required\n")
                }
            }
            let number = sequence.withLockedValue {
                $0 += 1
                return $0
            }
            var environment = [
                "GIT_PROJECT_ROOT": projectRoot, "GIT_HTTP_EXPORT_ALL": "1", "GATEWAY_INTERFACE": "CGI/1.1",
                "SERVER_PROTOCOL": "HTTP/1.1", "REQUEST_METHOD": request.method, "PATH_INFO": path, "QUERY_STRING": query,
                "REMOTE_ADDR": "127.0.0.1", "CONTENT_LENGTH": "\(request.body.count)",
                // The backend runs `git upload-pack`; it must read no configuration of the user running the tests.
                "PATH": ProcessEnvironment.value("PATH") ?? "/usr/bin:/bin", "HOME": scratch, "GIT_CONFIG_NOSYSTEM": "1",
            ]
            if let contentType = request.header("Content-Type") { environment["CONTENT_TYPE"] = contentType }
            // git gzips larger request bodies; the backend inflates them itself when told.
            if let encoding = request.header("Content-Encoding") { environment["HTTP_CONTENT_ENCODING"] = encoding }
            // Protocol v2 is asked for with this header, which the backend reads from the environment.
            if let protocolVersion = request.header("Git-Protocol") { environment["GIT_PROTOCOL"] = protocolVersion }
            if let username = credentials?.username { environment["REMOTE_USER"] = username }
            let response: MockHTTPResponse
            do {
                let output = try await ChildProcess.run(
                    backend, [], environment: environment, stdin: request.body, scratch: scratch, name: "request-\(number)", timeout: timeout)
                response = cgiResponse(output)
            } catch {
                response = MockHTTPResponse(status: 500, headers: [("Content-Type", "text/plain")], body: "git http-backend failed: \(error)\n")
            }
            record(response.status)
            return response
        }
        return MockGitServer(server: server, scratch: scratch, state: state)
    }

    private init(server: MockHTTPServer, scratch: String, state: NIOLockedValueBox<[Received]>) {
        self.server = server
        self.scratch = scratch
        self.state = state
    }

    public func shutdown() async {
        await server.shutdown()
        try? FileManager.default.removeItem(atPath: scratch)
    }

    /// `git http-backend` of the `git` on `PATH` (`git --exec-path` names its folder).
    private static func httpBackendPath(scratch: String) async throws -> String {
        let output = try await ChildProcess.run("git", ["--exec-path"], environment: ["PATH": ProcessEnvironment.value("PATH") ?? "/usr/bin:/bin"], stdin: [], scratch: scratch, name: "exec-path", timeout: .seconds(10))
        let folder = trimmed(String(decoding: output.stdout, as: UTF8.self))
        let path = (output.status == 0 && !folder.isEmpty ? folder : "/usr/lib/git-core") + "/git-http-backend"
        guard access(path, X_OK) == 0 else { throw MockGitServerError.noHTTPBackend(path) }
        return path
    }

    private static func makeScratchDirectory() throws -> String {
        let base = ProcessEnvironment.value("TMPDIR") ?? "/tmp"
        var template = Array((base + "/mock-git-server-XXXXXX").utf8CString)
        guard let created = mkdtemp(&template) else { throw MockGitServerError.system("mkdtemp", errno) }
        return String(cString: created)
    }

    /// The user and password of a Basic `Authorization` header. git (through curl) sends them as
    /// they are, not form-encoded; the password is everything after the first colon.
    static func basicCredentials(_ header: String?) -> (username: String, password: String)? {
        guard let header, header.lowercased().hasPrefix("basic "),
            let decoded = Data(base64Encoded: trimmed(header.dropFirst(6)))
        else { return nil }
        let text = String(decoding: decoded, as: UTF8.self)
        guard let colon = text.firstIndex(of: ":") else { return nil }
        return (String(text[..<colon]), String(text[text.index(after: colon)...]))
    }

    /// The HTTP response a CGI program's output describes (RFC 3875 §6): header lines up to a
    /// blank line, `Status:` giving the status (200 when absent), then the body.
    static func cgiResponse(_ output: ChildProcess.Output) -> MockHTTPResponse {
        let bytes = output.stdout
        var headerEnd: Int?
        var bodyStart = 0
        var index = 0
        while index < bytes.count {
            if bytes[index] == UInt8(ascii: "\n") {
                let next = index + 1
                if next < bytes.count, bytes[next] == UInt8(ascii: "\n") {
                    headerEnd = index
                    bodyStart = next + 1
                    break
                }
                if next + 1 < bytes.count, bytes[next] == UInt8(ascii: "\r"), bytes[next + 1] == UInt8(ascii: "\n") {
                    headerEnd = index
                    bodyStart = next + 2
                    break
                }
            }
            index += 1
        }
        guard let headerEnd else {
            let message = String(decoding: output.stderr, as: UTF8.self)
            return MockHTTPResponse(status: 500, headers: [("Content-Type", "text/plain")], body: "git http-backend exited \(output.status) without a response: \(message)\n")
        }
        var status = 200
        var headers: [(name: String, value: String)] = []
        for line in String(decoding: bytes[..<headerEnd], as: UTF8.self).split(whereSeparator: \.isNewline) {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = trimmed(line[..<colon])
            let value = trimmed(line[line.index(after: colon)...])
            if name.lowercased() == "status" {
                status = Int(value.prefix { $0.isNumber }) ?? 500
            } else {
                headers.append((name, value))
            }
        }
        var response = MockHTTPResponse(status: status, headers: headers)
        response.body = Array(bytes[bodyStart...])
        return response
    }
}

public enum MockGitServerError: Error, CustomStringConvertible {
    case noHTTPBackend(String)
    case system(String, Int32)
    case timedOut(String)

    public var description: String {
        switch self {
        case .noHTTPBackend(let path): "no executable git http-backend at \(path); is git installed?"
        case .system(let call, let code): "\(call) failed: \(String(cString: strerror(code)))"
        case .timedOut(let program): "\(program) did not finish in time and was killed"
        }
    }
}

/// `text` without leading and trailing white space (and line ends).
private func trimmed(_ text: some StringProtocol) -> String {
    String(text.drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
}

enum ProcessEnvironment {
    static func value(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }
    }
}

/// A short-lived child process (the CGI program) run with `posix_spawn`, safe to start from
/// several tasks at once (Foundation's `Process` is not). Its standard input is read from a
/// file and its output written to files, so no pipe can fill up and deadlock the exchange.
enum ChildProcess {
    struct Output: Sendable {
        var status: Int32
        var stdout: [UInt8]
        var stderr: [UInt8]
    }

    /// Runs `program` (looked up on `PATH` when it has no slash) with exactly `environment`,
    /// waiting without blocking a thread of the cooperative pool; killed after `timeout`.
    static func run(
        _ program: String, _ arguments: [String], environment: [String: String], stdin: [UInt8], scratch: String, name: String, timeout: Duration
    ) async throws -> Output {
        let inputPath = scratch + "/" + name + ".in"
        let outputPath = scratch + "/" + name + ".out"
        let errorPath = scratch + "/" + name + ".err"
        defer {
            unlink(inputPath)
            unlink(outputPath)
            unlink(errorPath)
        }
        guard FileManager.default.createFile(atPath: inputPath, contents: Data(stdin)) else {
            throw MockGitServerError.system("writing \(inputPath)", errno)
        }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, inputPath, O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, errorPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        // The test process's sockets are not close-on-exec: the child must not hold copies of them.
        if let closeFrom { _ = closeFrom(&actions, 3) }
        let argv = ([program] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let spawned = program.contains("/") ? posix_spawn(&pid, program, &actions, nil, argv, envp) : posix_spawnp(&pid, program, &actions, nil, argv, envp)
        guard spawned == 0 else { throw MockGitServerError.system("posix_spawn \(program)", spawned) }

        let deadline = ContinuousClock.now.advanced(by: timeout)
        var status: Int32 = 0
        var killed = false
        while waitpid(pid, &status, WNOHANG) == 0 {
            if ContinuousClock.now > deadline, !killed {
                kill(pid, SIGKILL)
                killed = true
            }
            try? await Task.sleep(for: .milliseconds(2))
        }
        if killed { throw MockGitServerError.timedOut(program) }
        let exitStatus = (status & 0x7f) != 0 ? 128 + (status & 0x7f) : (status >> 8) & 0xff
        return Output(status: exitStatus, stdout: contents(outputPath), stderr: contents(errorPath))
    }

    private static func contents(_ path: String) -> [UInt8] {
        FileManager.default.contents(atPath: path).map { Array($0) } ?? []
    }

    /// `posix_spawn_file_actions_addclosefrom_np` (glibc 2.34 and later), looked up as
    /// `SpawnActions` in the product does (this module does not depend on the product).
    private static let closeFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
    }()
}
