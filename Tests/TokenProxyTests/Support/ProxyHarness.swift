import AsyncHTTPClient
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Testing
import TokenProxy
import TokenProxyMocks

/// The proxy served in this process, with a stand-in issuer and a test upstream that records
/// what it received and answers through a closure the test sets.
final class ProxyHarness: @unchecked Sendable {
    let directory: TemporaryDirectory
    let issuer: MockTokenIssuer
    let upstream: MockHTTPServer
    /// Built by the composition root that `tokenproxy run` uses, and run as its services.
    let application: ProxyApplication
    var server: ProxyServer { application.server }
    var broker: TokenBroker { application.broker }
    var faults: FaultSettings { application.faults }
    var statistics: ProxyStatistics { application.statistics }
    let configuration: Configuration
    let logs = LogCapture()
    /// One client for all tests, never shut down (a test that fails early must not crash the run).
    static let sharedClient = HTTPClient(eventLoopGroupProvider: .shared(MultiThreadedEventLoopGroup.singleton), configuration: .init(redirectConfiguration: .disallow))
    var client: HTTPClient { Self.sharedClient }
    private let running: Task<Void, Never>
    private let isShutDown = NIOLockedValueBox(false)
    private let recorded = NIOLockedValueBox<[MockHTTPRequest]>([])
    private let responder: NIOLockedValueBox<@Sendable (MockHTTPRequest, Int) async -> MockHTTPResponse>

    struct Options {
        var behavior = MockTokenIssuer.Behavior()
        /// What the store holds at start; `nil` hands over a refresh token only.
        var initialToken: TokenSet?
        /// Whether the issuer accepts the initial refresh token.
        var grantInitialRefreshToken = true
        var listen = "127.0.0.1:0"
        var retry = #"{"attempts": 3, "backoff": "10ms", "maxBackoff": "2s", "replayBuffer": 65536}"#
        var upstreamExtra = ""
        var token: (inout ConfigFixture) -> Void = { _ in }
        var faults = #"{"enabled": false}"#
        var upstreamPrefix = ""
        /// Overrides the test upstream's address, e.g. for a port where nothing listens.
        var upstreamAddress: String?
        /// More top-level keys, as raw JSON values (`allowedHosts`, `limits`).
        var topLevel: [String: String] = [:]
    }

    init(_ options: Options = Options(), respond: @escaping @Sendable (MockHTTPRequest, Int) async -> MockHTTPResponse = { _, _ in .json(200, #"{"ok": true}"#) }) async throws {
        directory = try TemporaryDirectory()
        issuer = try await MockTokenIssuer.start(behavior: options.behavior)
        let recorded = self.recorded
        let responder = NIOLockedValueBox(respond)
        self.responder = responder
        upstream = try await MockHTTPServer.start { request in
            let count = recorded.withLockedValue {
                $0.append(request)
                return $0.count
            }
            return await responder.withLockedValue { $0 }(request, count)
        }
        var fixture = ConfigFixture(endpoint: issuer.url)
        options.token(&fixture)
        fixture.listen = options.listen
        fixture.upstream = (options.upstreamAddress ?? "http://127.0.0.1:\(upstream.port)") + options.upstreamPrefix
        fixture.upstreamExtra = options.upstreamExtra
        fixture.topLevel = ["retry": options.retry, "faults": options.faults].merging(options.topLevel) { $1 }
        let path = try fixture.write(to: directory)
        configuration = try Configuration.load(path: path)
        let token = options.initialToken ?? TokenSet(refreshToken: "rt-initial")
        if options.grantInitialRefreshToken, let refreshToken = token.refreshToken { issuer.grantRefreshToken(refreshToken) }
        try TokenStore(path: configuration.token.store).write(token)

        var environment = ProcessInfo.processInfo.environment
        environment["NOTIFY_SOCKET"] = nil
        application = try await ProxyApplication.start(configuration: configuration, environment: environment, logger: logs.logger)
        let application = self.application
        running = Task { try? await application.run() }
    }

    deinit {
        Self.shutDownLeftovers(of: self)
    }

    var port: Int { server.port ?? 0 }

    /// Starts an admin listener on a free loopback port for this proxy.
    func startAdmin() async throws -> AdminServer {
        try await AdminServer.start(address: .tcp(host: "127.0.0.1", port: 0), routes: application.adminRoutes(), group: MultiThreadedEventLoopGroup.singleton)
    }

    /// A request to `port` (the admin listener) on loopback.
    func admin(_ method: HTTPMethod, _ path: String, port: Int, body: String? = nil, headers: [(String, String)] = []) async throws -> Response {
        var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)\(path)")
        request.method = method
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let body {
            request.body = .bytes(ByteBuffer(string: body))
            if !request.headers.contains(name: "Content-Type") { request.headers.add(name: "Content-Type", value: "application/json") }
        }
        let response = try await client.execute(request, timeout: .seconds(20))
        let bytes = try await response.body.collect(upTo: 1 << 20)
        return Response(status: response.status.code, headers: response.headers, body: String(buffer: bytes))
    }
    var url: String { "http://127.0.0.1:\(port)" }
    var received: [MockHTTPRequest] { recorded.withLockedValue { $0 } }

    /// Every secret this proxy handled: tokens issued and presented, the client secret.
    var secrets: [String] {
        var values: Set<String> = [ConfigFixture.clientSecret]
        for call in issuer.calls { if let token = call.form["refresh_token"] { values.insert(token) } }
        for request in received { if let value = request.header("Authorization") { values.insert(String(value.dropFirst(7))) } }
        if let stored = try? TokenStore(path: configuration.token.store).read().tokens {
            [stored.accessToken, stored.refreshToken].compactMap { $0 }.forEach { values.insert($0) }
        }
        return values.sorted()
    }

    func respond(_ respond: @escaping @Sendable (MockHTTPRequest, Int) async -> MockHTTPResponse) {
        responder.withLockedValue { $0 = respond }
    }

    struct Response {
        var status: UInt
        var headers: HTTPHeaders
        var body: String
    }

    /// `timeout` counts the wait for one of the shared client's pooled connections too.
    func send(_ method: HTTPMethod = .GET, _ path: String, headers: [(String, String)] = [], body: String? = nil, timeout: Duration = .seconds(20)) async throws -> Response {
        var request = HTTPClientRequest(url: url + path)
        request.method = method
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let body { request.body = .bytes(ByteBuffer(string: body)) }
        let response = try await client.execute(request, timeout: .seconds(Int64(timeout.components.seconds)))
        let bytes = try await response.body.collect(upTo: 64 << 20)
        return Response(status: response.status.code, headers: response.headers, body: String(buffer: bytes))
    }

    func shutdown() async {
        isShutDown.withLockedValue { $0 = true }
        await Self.shutDown(running: running, upstream: upstream, issuer: issuer)
    }

    /// Stops the application as a test ends (its services cancelled: the proxy closes what is
    /// open, the broker writes what it holds and closes its connections), then the stand-ins.
    private static func shutDown(running: Task<Void, Never>, upstream: MockHTTPServer, issuer: MockTokenIssuer) async {
        running.cancel()
        await running.value
        await upstream.shutdown()
        await issuer.shutdown()
    }
}

extension ProxyHarness {
    /// A test that fails before its `shutdown()` (a thrown `#require`, an error) must not leave
    /// servers behind, nor an HTTP client whose deinit traps: the parts are shut down from here.
    static func shutDownLeftovers(of harness: ProxyHarness) {
        guard !harness.isShutDown.withLockedValue({ $0 }) else { return }
        let (running, upstream, issuer) = (harness.running, harness.upstream, harness.issuer)
        Task { await shutDown(running: running, upstream: upstream, issuer: issuer) }
    }
}

/// Runs `body` with a proxy harness, which is shut down afterwards whether `body` returned or
/// threw: the scoped form of `ProxyHarness(…)` + `shutdown()`.
func withProxyHarness<Result>(
    _ options: ProxyHarness.Options = .init(),
    respond: @escaping @Sendable (MockHTTPRequest, Int) async -> MockHTTPResponse = { _, _ in .json(200, #"{"ok": true}"#) },
    _ body: (ProxyHarness) async throws -> Result
) async throws -> Result {
    let harness = try await ProxyHarness(options, respond: respond)
    do {
        let result = try await body(harness)
        await harness.shutdown()
        return result
    } catch {
        await harness.shutdown()
        throw error
    }
}

extension TokenSet {
    /// A token that is fresh for a long while, as if fetched a moment ago by another process.
    static func valid(_ accessToken: String, refreshToken: String = "rt-initial", lifetime: Double = 3600) -> TokenSet {
        let now = Date()
        return TokenSet(accessToken: accessToken, refreshToken: refreshToken, expiresAt: now + lifetime, obtainedAt: now)
    }
}
