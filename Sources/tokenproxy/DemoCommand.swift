import ArgumentParser
import AsyncHTTPClient
import FoundationEssentials
import Glibc
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import TokenProxy
import TokenProxyMocks

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run an embedded token issuer (20 s tokens, rotating refresh tokens), two APIs and the proxy in front, with two routes, two identities and some client traffic.",
        discussion: "Prints each request and what the proxy did for it, your own requests through the proxy included. Ctrl-C stops it."
    )

    @Option(help: "The proxy's port on 127.0.0.1 (0 picks a free one).")
    var port = 8787

    @Option(help: "Lifetime of the issued access tokens, in seconds.")
    var tokenLifetime = 20

    @Option(help: "Stop after this many seconds (default: run until Ctrl-C).")
    var duration: Int?

    @Flag(help: "Start with an empty store and sign in first, as a user would: `tokenproxy login --device` against the embedded issuer (found by discovery), which the demo approves for you.")
    var login = false

    /// The `X-Request-Id` prefix of the demo's own traffic: the proxy logs every request it
    /// serves, and the demo shows those without it (the user's own) beside its own lines.
    static let ownRequestIDPrefix = "demo-"
    /// The second identity: the default identity's token exchanged (RFC 8693) for the reports
    /// API's audience, by a client of its own.
    static let reportsAudience = "reports-api"
    static let reportsClientID = "reports-client"
    /// The admin listener's port when it is free (SPEC §2 `admin.listen`).
    static let adminPort = 8788

    func run() async throws {
        // The proxy logs at info, so that it writes a line for every request it serves; the
        // demo's handler shows those of requests the demo did not send (SPEC §1: "prints what
        // happens", the user's curl included) and errors, and leaves the rest to the demo's lines.
        LoggingSystem.bootstrap { label in DemoLogHandler(label: label) }
        let reportsSecret = "secret-\(UInt64.random(in: 0...UInt64.max))"
        var behavior = MockTokenIssuer.Behavior()
        behavior.lifetime = .seconds(tokenLifetime)
        behavior.deviceInterval = 1
        // The reports identity authenticates as a confidential client; the default one is public.
        behavior.clients = [Self.reportsClientID: reportsSecret]
        let issuer = try await MockTokenIssuer.start(behavior: behavior)
        let api = try await MockAPI.start(issuer: issuer)
        let reportsAPI = try await MockAPI.start(issuer: issuer, audience: Self.reportsAudience, flaky401Percent: 0)
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("tokenproxy-demo-\(getpid())").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: folder) }
        guard FileManager.default.createFile(atPath: folder + "/reports-secret", contents: Data(reportsSecret.utf8), attributes: [.posixPermissions: 0o600]) else {
            printError("tokenproxy demo: cannot write \(folder)/reports-secret")
            throw ExitStatus.runtimeFailure
        }

        if !login {
            // A login done elsewhere: the issuer knows this refresh token, handed to the store
            // as `tokenproxy login --refresh-token-file` would.
            let loginToken = "demo-\(UInt64.random(in: 0...UInt64.max))"
            issuer.grantRefreshToken(loginToken)
            try TokenStore(path: folder + "/token.json").write(TokenSet(refreshToken: loginToken))
        }
        // 8788 as a deployment has it, unless something listens there (another demo, a proxy).
        let adminPort = port != Self.adminPort && Self.isFree(port: Self.adminPort) ? Self.adminPort : 0
        let configPath = folder + "/config.json"
        // With --login, only the issuer is named: its endpoints come from discovery.
        let endpoints = login ? "\"issuer\": \"\(issuer.issuerURL)\"" : "\"endpoint\": \"\(issuer.url)\""
        try """
            {
              "listen": "127.0.0.1:\(port)",
              "token": { \(endpoints), "clientAuth": "none", "clientId": "demo",
                         "refreshBefore": "5s", "minValidity": "1s", "store": "token.json" },
              "identities": {
                "reports": { \(endpoints), "grant": "token_exchange", "subjectIdentity": "default", "audience": "\(Self.reportsAudience)",
                             "clientAuth": "basic", "clientId": "\(Self.reportsClientID)", "clientSecretFile": "reports-secret",
                             "refreshBefore": "5s", "minValidity": "1s", "store": "reports.json" }
              },
              "routes": [
                { "name": "api", "pathPrefix": "/", "upstream": { "url": "\(api.baseURL)" }, "identity": "default" },
                { "name": "reports", "pathPrefix": "/reports/", "stripPrefix": true, "upstream": { "url": "\(reportsAPI.baseURL)" }, "identity": "reports" }
              ],
              "admin": { "listen": "127.0.0.1:\(adminPort)" },
              "drainTimeout": "2s",
              "log": { "level": "info", "format": "text" }
            }
            """.write(toFile: configPath, atomically: true, encoding: .utf8)
        let configuration = try Configuration.load(path: configPath)
        if login { try await Self.signIn(configuration, issuer: issuer) }

        // The demo runs the same application as `tokenproxy run`; its traffic is a companion
        // service, so Ctrl-C (or --duration) stops both the same way SIGTERM stops a deployment.
        let tokenLifetime = self.tokenLifetime
        let duration = self.duration
        do {
            try await ProxyApplication.run(configuration: configuration) { listening in
                let proxyURL = "http://127.0.0.1:\(listening.proxyPort ?? 0)"
                print("""
                    tokenproxy demo
                      token issuer  \(issuer.url)   (access tokens live \(tokenLifetime) s, refresh tokens rotate; also exchanges tokens, RFC 8693)
                      API           \(api.baseURL)   (/api/hello, /api/events (SSE), /api/flaky answers 401 30 % of the time)
                      reports API   \(reportsAPI.baseURL)   (takes only tokens for the audience \(Self.reportsAudience))
                      proxy         \(proxyURL)   ← clients talk here, without any token
                        route api      /          → API          identity default (refresh_token grant)
                        route reports  /reports/  → reports API  identity reports (token_exchange of default's token for \(Self.reportsAudience),
                                                                 as client \(Self.reportsClientID); /reports/daily arrives as /daily)
                      admin         http://127.0.0.1:\(listening.adminPort ?? 0)   (/status, /metrics)
                    Try it yourself:  curl -i \(proxyURL)/api/hello
                                      curl -i \(proxyURL)/reports/daily
                    Your own requests show up below, marked "← yours". Ctrl-C stops the demo.

                    """)
                let traffic = Task { await Self.driveTraffic(proxyURL: proxyURL, issuer: issuer, api: api, reportsAPI: reportsAPI) }
                if let duration {
                    try? await Task.sleep(for: .seconds(duration))
                } else {
                    // Until Ctrl-C, which cancels this service.
                    try? await Task.sleep(for: .seconds(365 * 86400))
                }
                traffic.cancel()
                _ = await traffic.value
            }
        } catch {
            printError("tokenproxy demo: cannot listen on 127.0.0.1:\(port) (\(error)); try --port 0")
            throw ExitStatus.runtimeFailure
        }
        await api.shutdown()
        await reportsAPI.shutdown()
        await issuer.shutdown()
        let counters = api.counters
        let reports = reportsAPI.counters
        let unauthorized = counters.unauthorized + reports.unauthorized
        let recovered = unauthorized == 1 ? "1 of them was" : "\(unauthorized) of them were"
        let calls = issuer.callCount == 1 ? "once" : "\(issuer.callCount) times"
        let exchanges = issuer.exchangeCount == 1 ? "1 token exchange" : "\(issuer.exchangeCount) token exchanges"
        print("""

            done: \(counters.requests) requests reached the API and \(reports.requests) the reports API, \(recovered) answered 401 and recovered by the proxy; \
            the token endpoint was called \(calls) (\(exchanges) among them).
            """)
    }

    private static func driveTraffic(proxyURL: String, issuer: MockTokenIssuer, api: MockAPI, reportsAPI: MockAPI) async {
        let client = HTTPClient(eventLoopGroupProvider: .shared(MultiThreadedEventLoopGroup.singleton))
        let routes: [(HTTPMethod, String)] = [
            (.GET, "/api/hello"), (.GET, "/reports/daily"), (.GET, "/api/flaky"), (.POST, "/api/orders"), (.GET, "/api/events"), (.GET, "/reports/weekly"),
            (.GET, "/api/flaky"),
        ]
        var number = 0
        var seenCalls = 0
        // Whether the default identity has had an access token (from the login, or a refresh).
        var defaultHasToken = false
        // The subject token of the last exchange: a new one means default's token was refreshed.
        var lastSubject: String?
        while !Task.isCancelled {
            number += 1
            let (method, path) = routes[(number - 1) % routes.count]
            let requestID = "\(number)"
            var request = HTTPClientRequest(url: proxyURL + path)
            request.method = method
            request.headers.add(name: "X-Demo-Request", value: requestID)
            request.headers.add(name: "X-Request-Id", value: ownRequestIDPrefix + requestID)
            if method == .POST { request.body = .bytes(ByteBuffer(string: #"{"item": "coffee"}"#)) }
            let started = ContinuousClock.now
            var line = "\(Self.clock())  \(method.rawValue) \(path)"
            do {
                let response = try await client.execute(request, timeout: .seconds(10))
                if path == "/api/events" {
                    print("\(line) → \(response.status.code), streaming:")
                    for try await chunk in response.body {
                        for event in String(buffer: chunk).split(separator: "\n\n") {
                            print("      \(Self.clock())  \(event.split(separator: "\n").joined(separator: " | "))")
                        }
                    }
                    line = "      stream ended"
                } else {
                    _ = try await response.body.collect(upTo: 1 << 20)
                    line += " → \(response.status.code) (\(started.duration(to: .now).milliseconds) ms)"
                    if path.hasPrefix("/reports/") { line += "   route reports: arrived as \(path.dropFirst("/reports".count)) with the reports token" }
                }
                if api.counters.rejectedRequestIDs.contains(requestID) || reportsAPI.counters.rejectedRequestIDs.contains(requestID) {
                    line += "   ← the API said 401; recovered by refresh + replay"
                }
            } catch {
                if Task.isCancelled { break }
                line += " → failed: \(error)"
            }
            let calls = issuer.calls
            for call in calls.dropFirst(seenCalls) {
                let grant = call.form["grant_type"] ?? "?"
                guard call.status == 200 else {
                    // A device login's pending polls are the login's own business.
                    if grant != "urn:ietf:params:oauth:grant-type:device_code" {
                        print("\(Self.clock())  ✗ the token endpoint refused a \(grant) call (\(call.status))")
                    }
                    continue
                }
                switch grant {
                case "urn:ietf:params:oauth:grant-type:device_code":
                    defaultHasToken = true  // the login's own grant, reported by the login
                case "refresh_token":
                    if !defaultHasToken {
                        print("\(Self.clock())  ↻ default: first access token, from the refresh token the demo handed to the store as `tokenproxy login --refresh-token-file` would (refresh token rotated)")
                    } else {
                        let kind = api.counters.rejectedRequestIDs.contains(requestID) ? "after a 401" : "ahead of expiry"
                        print("\(Self.clock())  ↻ default: token refreshed \(kind) (refresh token rotated)")
                    }
                    defaultHasToken = true
                case MockTokenIssuer.tokenExchangeGrant:
                    let subject = call.form["subject_token"]
                    let why =
                        lastSubject == nil ? "its first token"
                        : subject != lastSubject ? "default's token was refreshed"
                        : reportsAPI.counters.rejectedRequestIDs.contains(requestID) ? "after a 401" : "ahead of expiry"
                    print("\(Self.clock())  ↻ reports: default's access token exchanged for a token for \(call.form["audience"] ?? "any audience") (RFC 8693; \(why))")
                    lastSubject = subject
                default:
                    print("\(Self.clock())  ↻ token obtained by \(grant)")
                }
            }
            seenCalls = calls.count
            print(line)
            try? await Task.sleep(for: .milliseconds(800))
        }
        try? await client.shutdown()
    }

    /// `tokenproxy login --device`, with the demo in the user's place: it approves the code at
    /// the embedded issuer after a moment, as a person would on their phone.
    private static func signIn(_ configuration: Configuration, issuer: MockTokenIssuer) async throws {
        let broker = TokenBroker(configuration: configuration.token, endpoint: TokenEndpointClient(configuration: configuration.token), logger: Logger(label: "tokenproxy"))
        do throws(LoginError) {
            _ = try await broker.loginWithDevice { authorization in
                print("\(Self.clock())  tokenproxy login --device: open \(authorization.verificationURI) and enter the code \(authorization.userCode)")
                print("\(Self.clock())  (the demo approves it for you in 2 s)")
                Task {
                    try? await Task.sleep(for: .seconds(2))
                    issuer.approveDevice(userCode: authorization.userCode)
                }
            }
            print("\(Self.clock())  signed in: the store holds a refresh token; starting the proxy\n")
        } catch {
            await broker.shutdown()
            printError("tokenproxy demo: the login failed: \(error)")
            throw ExitStatus.runtimeFailure
        }
        await broker.shutdown()
    }

    /// Whether nothing listens on 127.0.0.1:`port` now: a socket binds there (with
    /// `SO_REUSEADDR`, as a listener binds, so that connections still in TIME_WAIT do not count)
    /// and is closed at once.
    private static func isFree(port: Int) -> Bool {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        var reuse: Int32 = 1
        _ = setsockopt(descriptor, SOL_SOCKET, SO_REUSEADDR, &reuse, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(truncatingIfNeeded: port).bigEndian)
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        return bound == 0
    }

    /// One line for a request the proxy served that the demo's traffic did not send, from the
    /// proxy's request log line.
    fileprivate static func describeOutsideRequest(_ fields: Logger.Metadata) -> String {
        func field(_ key: String) -> String? { fields[key].map { "\($0)" } }
        var line = "\(clock())  \(field("method") ?? "-") \(field("path") ?? "-")"
        if let aborted = field("aborted") {
            line += " → aborted (\(aborted)\(field("reason").map { ": \($0)" } ?? ""))"
        } else {
            line += " → \(field("status") ?? "no answer")"
            if let error = field("error") { line += " \(error)\(field("reason").map { ": \($0)" } ?? "")" }
            var notes = ["\(field("durationMs") ?? "?") ms"]
            if let attempts = field("attempts").flatMap({ Int($0) }), attempts > 1 { notes.append("\(attempts) attempts") }
            if field("refreshed") == "true" { notes.append("token refreshed on the way") }
            line += " (" + notes.joined(separator: ", ") + ")"
        }
        if let route = field("route") { line += "   route \(route)" }
        return line + "   ← yours"
    }

    fileprivate static func clock() -> String {
        String(RFC3339.format(Date()).dropFirst(11).prefix(8))
    }
}

/// The demo's log: the proxy logs at `info`, so that it writes a line for every request it
/// serves. Of those, the lines of requests the demo's own traffic did not send (a user's curl)
/// are shown as the demo's own are, on standard output; errors go to standard error as
/// `tokenproxy run` writes them. The proxy's other lines (refreshes, listening) are left out: the
/// demo tells those in its own words.
private struct DemoLogHandler: LogHandler {
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info
    private let errors: StderrLogHandler

    init(label: String) {
        errors = StderrLogHandler(label: label, level: .error, format: .text)
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        // The proxy's request lines ("request", "request aborted", "request answered by the
        // proxy") name the request's X-Request-Id.
        if event.message.description.hasPrefix("request"), let id = merged["requestId"].map({ "\($0)" }) {
            if !id.hasPrefix(DemoCommand.ownRequestIDPrefix) { print(DemoCommand.describeOutsideRequest(merged)) }
            return
        }
        guard event.level >= .error else { return }
        var event = event
        event.metadata = merged
        errors.log(event: event)
    }
}
