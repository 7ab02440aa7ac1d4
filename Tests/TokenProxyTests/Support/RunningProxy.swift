import Foundation
import Glibc
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// A real `tokenproxy run` in a temporary folder, in front of a stand-in issuer (its store holds
/// a refresh token the issuer accepts) and an API that answers 200 to a token the issuer issued
/// and still knows, 401 to any other: what the suites that test the binary from outside share.
struct RunningProxy {
    let directory: TemporaryDirectory
    let issuer: MockTokenIssuer
    let upstream: MockHTTPServer
    let config: String
    let process: TokenProxyProcess
    let port: Int
    /// The admin listener's port, when the configuration has one.
    let adminPort: Int?

    struct Options {
        /// Of the issuer's access tokens.
        var lifetime: Duration = .seconds(3600)
        var refreshTokenLifetime: Double?
        /// Runs before the API answers a request (to see what it was sent, or to delay it).
        var onRequest: @Sendable (MockHTTPRequest) async -> Void = { _ in }
        /// The configuration, beyond the issuer, the API and the store.
        var configure: (inout ConfigFixture) -> Void = { _ in }
        /// Files written into the folder before the proxy starts (name → contents).
        var files: [String: String] = [:]
        /// More environment variables for the process.
        var environment: [String: String] = [:]
    }

    static func start(_ options: Options = Options()) async throws -> RunningProxy {
        let directory = try TemporaryDirectory()
        var behavior = MockTokenIssuer.Behavior()
        behavior.lifetime = options.lifetime
        behavior.refreshTokenLifetime = options.refreshTokenLifetime
        let issuer = try await MockTokenIssuer.start(behavior: behavior)
        let onRequest = options.onRequest
        let upstream = try await MockHTTPServer.start { request in
            await onRequest(request)
            return issuer.isValid(accessToken: String(request.header("Authorization")?.dropFirst(7) ?? "")) ? .json(200, #"{"ok": true}"#) : .json(401, "{}")
        }
        var fixture = ConfigFixture(endpoint: issuer.url)
        fixture.upstream = upstream.baseURL
        options.configure(&fixture)
        let config = try fixture.write(to: directory)
        for (name, contents) in options.files { try directory.write(name, contents) }
        try directory.write("token.json", #"{"version": 1, "refresh_token": "rt-initial"}"#)
        issuer.grantRefreshToken("rt-initial")
        let process = TokenProxyProcess(["run", "--config", config], environment: options.environment)
        try process.start()
        let port = try #require(await process.listeningPort(), "not listening: \(process.stderrSoFar)")
        let adminPort = fixture.admin == "null" ? nil : await process.listeningPort("adminPort")
        return RunningProxy(directory: directory, issuer: issuer, upstream: upstream, config: config, process: process, port: port, adminPort: adminPort)
    }

    /// Sends `method path` with `headers` (whole lines, each ending in CRLF) to the admin listener.
    func admin(_ method: String, _ path: String, headers: String = "") async throws -> String {
        let adminPort = try #require(adminPort, "the configuration has no admin listener")
        return try await RawHTTPClient(port: adminPort).exchange("\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(adminPort)\r\n\(headers)Connection: close\r\n\r\n")
    }

    /// Sends one GET through the proxy with `headers` (whole lines, each ending in CRLF); the
    /// status code, or nil.
    @discardableResult
    func request(_ path: String, headers: String = "", timeout: Duration = .seconds(10)) async -> Int? {
        let answer = try? await RawHTTPClient(port: port).exchange("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\n\(headers)Connection: close\r\n\r\n", timeout: timeout)
        return answer.flatMap { Int($0.dropFirst(9).prefix(3)) }
    }

    /// Stops the proxy with SIGTERM, expecting exit 0, and the stand-ins; returns its stderr.
    @discardableResult
    func stop(sourceLocation: SourceLocation = #_sourceLocation) async -> String {
        process.signal(SIGTERM)
        let outcome = await process.wait(timeout: .seconds(20))
        #expect(outcome.status == 0, "\(outcome.stderr.suffix(2000))", sourceLocation: sourceLocation)
        await upstream.shutdown()
        await issuer.shutdown()
        return outcome.stderr
    }
}
