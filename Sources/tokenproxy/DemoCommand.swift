import ArgumentParser
import AsyncHTTPClient
import FoundationEssentials
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import TokenProxy
import TokenProxyMocks

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run an embedded token issuer (20 s tokens, rotating refresh tokens), an API and the proxy in front, with some client traffic.",
        discussion: "Prints each request and what the proxy did for it. Ctrl-C stops it."
    )

    @Option(help: "The proxy's port on 127.0.0.1 (0 picks a free one).")
    var port = 8787

    @Option(help: "Lifetime of the issued access tokens, in seconds.")
    var tokenLifetime = 20

    @Option(help: "Stop after this many seconds (default: run until Ctrl-C).")
    var duration: Int?

    @Flag(help: "Start with an empty store and sign in first, as a user would: `tokenproxy login --device` against the embedded issuer (found by discovery), which the demo approves for you.")
    var login = false

    func run() async throws {
        StderrLogHandler.bootstrap(level: "error", format: .text)
        var behavior = MockTokenIssuer.Behavior()
        behavior.lifetime = .seconds(tokenLifetime)
        behavior.deviceInterval = 1
        let issuer = try await MockTokenIssuer.start(behavior: behavior)
        let api = try await MockAPI.start(issuer: issuer)
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("tokenproxy-demo-\(getpid())").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: folder) }

        if !login {
            // A login done elsewhere: the issuer knows this refresh token, handed to the store.
            let loginToken = "demo-\(UInt64.random(in: 0...UInt64.max))"
            issuer.grantRefreshToken(loginToken)
            try TokenStore(path: folder + "/token.json").write(TokenSet(refreshToken: loginToken))
        }
        let configPath = folder + "/config.json"
        // With --login, only the issuer is named: its endpoints come from discovery.
        let endpoints = login ? "\"issuer\": \"\(issuer.issuerURL)\"" : "\"endpoint\": \"\(issuer.url)\""
        try """
            {
              "listen": "127.0.0.1:\(port)",
              "upstream": { "url": "\(api.baseURL)" },
              "token": { \(endpoints), "clientAuth": "none", "clientId": "demo",
                         "refreshBefore": "5s", "minValidity": "1s", "store": "token.json" },
              "admin": { "listen": "127.0.0.1:0" },
              "drainTimeout": "2s",
              "log": { "level": "error", "format": "text" }
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
                      token issuer  \(issuer.url)   (access tokens live \(tokenLifetime) s, refresh tokens rotate)
                      API           \(api.baseURL)   (/api/hello, /api/events (SSE), /api/flaky answers 401 30 % of the time)
                      proxy         \(proxyURL)   ← clients talk here, without any token
                      admin         http://127.0.0.1:\(listening.adminPort ?? 0)   (/status, /metrics)
                    Try it yourself:  curl -i \(proxyURL)/api/hello
                    Ctrl-C stops the demo.

                    """)
                let traffic = Task { await Self.driveTraffic(proxyURL: proxyURL, issuer: issuer, api: api) }
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
        await issuer.shutdown()
        let counters = api.counters
        let recovered = counters.unauthorized == 1 ? "1 of them was" : "\(counters.unauthorized) of them were"
        let calls = issuer.callCount == 1 ? "once" : "\(issuer.callCount) times"
        print("\ndone: \(counters.requests) requests reached the API, \(recovered) answered 401 and recovered by the proxy; the token endpoint was called \(calls).")
    }

    private static func driveTraffic(proxyURL: String, issuer: MockTokenIssuer, api: MockAPI) async {
        let client = HTTPClient(eventLoopGroupProvider: .shared(MultiThreadedEventLoopGroup.singleton))
        let routes: [(HTTPMethod, String)] = [(.GET, "/api/hello"), (.GET, "/api/flaky"), (.POST, "/api/orders"), (.GET, "/api/events"), (.GET, "/api/flaky")]
        var number = 0
        var seenCalls = 0
        while !Task.isCancelled {
            number += 1
            let (method, path) = routes[number % routes.count]
            var request = HTTPClientRequest(url: proxyURL + path)
            request.method = method
            request.headers.add(name: "X-Demo-Request", value: "\(number)")
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
                }
                if api.counters.rejectedRequestIDs.contains("\(number)") {
                    line += "   ← the API said 401; recovered by refresh + replay"
                }
            } catch {
                if Task.isCancelled { break }
                line += " → failed: \(error)"
            }
            let calls = issuer.calls
            if calls.count > seenCalls {
                for (index, call) in calls.enumerated().dropFirst(seenCalls) where call.status == 200 {
                    if call.form["grant_type"] == "urn:ietf:params:oauth:grant-type:device_code" {
                        continue  // the login's own exchange, reported by the login
                    } else if index == 0 {
                        print("\(Self.clock())  ↻ first access token obtained with the login's refresh token (refresh token rotated)")
                    } else {
                        let kind = api.counters.rejectedRequestIDs.contains("\(number)") ? "after a 401" : "ahead of expiry"
                        print("\(Self.clock())  ↻ token refreshed \(kind) (refresh token rotated)")
                    }
                }
                seenCalls = calls.count
            }
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

    private static func clock() -> String {
        String(RFC3339.format(Date()).dropFirst(11).prefix(8))
    }
}
