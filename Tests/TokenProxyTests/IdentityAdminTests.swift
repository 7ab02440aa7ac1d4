import Foundation
import NIOConcurrencyHelpers
import NIOHTTP1
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// The admin API of a proxy with several identities and routes (SPEC §2.4, §7): `/status` per
/// identity and per route, `?identity=` on the forced refresh and expiry, `/readyz` naming the
/// identity that cannot get a token, and metrics labelled by identity and by route.
///
/// Each test runs a proxy (in process, ``ProxyHarness``) with two identities and two routes:
/// - `default`: the harness's issuer (`refresh_token` grant) and the top-level upstream (the
///   harness upstream), the route `default` on `/`;
/// - `b`: an issuer of its own (`client_credentials`, HTTP Basic with a secret file of its own)
///   and the route `b` on `/b/`, whose upstream is a second test server. (The harness upstream's
///   port is known only once the harness has loaded its configuration, so a route cannot name
///   it; a server of the route's own also shows which upstream each request reached.)
@Suite("Identities and routes in the admin API")
struct IdentityAdminTests {
    static let clientB = "b-client"
    static let secretB = "b-s3cret-value"
    static let invalidToken = MockHTTPResponse(status: 401, headers: [("WWW-Authenticate", #"Bearer error="invalid_token""#)], body: "expired")

    @Test func statusShowsEveryIdentityAndEveryRouteWithItsOwnRequestCount() async throws {
        try await withTwoIdentities { proxy in
            try await proxy.warmUp()
            for path in ["/x", "/bx", "/y?b=1"] { #expect(try await proxy.harness.send(.GET, path).status == 200, "\(path)") }
            #expect(try await proxy.harness.send(.GET, "/b/x").status == 200)
            // default: the warm-up and 3; b: the warm-up and 1.

            let ready = try await proxy.admin(.GET, "/readyz")
            #expect(ready.status == 200, "both identities hold a token: \(ready.body)")

            let response = try await proxy.admin(.GET, "/status")
            #expect(response.status == 200)
            let status = try JSONValue.parse(Data(response.body.utf8))

            // Identities: each with its own token fields and store.
            #expect(text(field(status, "identities", "default", "expiresAt")) != nil, "\(response.body)")
            #expect(text(field(status, "identities", "b", "expiresAt")) != nil, "\(response.body)")
            if case .number(let seconds)? = field(status, "identities", "b", "expiresIn") {
                #expect(seconds > 3000, "issuer b's token lives an hour")
            } else {
                Issue.record("no identities.b.expiresIn: \(response.body)")
            }
            #expect(field(status, "identities", "default", "refreshTokenHeld") == .bool(true))
            #expect(field(status, "identities", "b", "refreshTokenHeld") == .bool(false), "client_credentials holds no refresh token")
            #expect(text(field(status, "identities", "b", "store", "name"))?.hasSuffix("/b.json") == true, "\(response.body)")
            #expect(text(field(status, "identities", "default", "store", "name"))?.hasSuffix("/token.json") == true, "\(response.body)")
            #expect(field(status, "identities", "b", "failure") == nil)
            // The top-level fields still describe `default`.
            #expect(field(status, "token", "expiresAt") == field(status, "identities", "default", "expiresAt"))

            // Routes: identity, prefix, upstream and the requests each took.
            #expect(field(status, "routes", "default", "identity") == .string("default"))
            #expect(field(status, "routes", "default", "pathPrefix") == .string("/"))
            #expect(field(status, "routes", "default", "requests") == .number(4), "\(response.body)")
            #expect(text(field(status, "routes", "default", "upstream"))?.contains(":\(proxy.harness.upstream.port)") == true)
            #expect(field(status, "routes", "b", "identity") == .string("b"))
            #expect(field(status, "routes", "b", "pathPrefix") == .string("/b/"))
            #expect(field(status, "routes", "b", "stripPrefix") == .bool(false))
            #expect(field(status, "routes", "b", "requests") == .number(2), "\(response.body)")
            #expect(text(field(status, "routes", "b", "upstream"))?.contains(":\(proxy.upstreamB.port)") == true)
            #expect(field(status, "routes", "b", "listen") == field(status, "routes", "default", "listen"), "both on the top-level listen")
            #expect(field(status, "counters", "requests") == .number(6))

            // Each request reached its route's upstream with its route identity's token.
            #expect(proxy.harness.received.map(\.uri) == ["/warm", "/x", "/bx", "/y?b=1"])
            #expect(proxy.upstreamB.received.map(\.uri) == ["/b/warm", "/b/x"])
            for request in proxy.harness.received {
                let token = bearer(request)
                #expect(token.map(proxy.issuerA.isValid(accessToken:)) == true && token.map(proxy.issuerB.isValid(accessToken:)) == false, "\(request.uri)")
            }
            for request in proxy.upstreamB.received {
                let token = bearer(request)
                #expect(token.map(proxy.issuerB.isValid(accessToken:)) == true && token.map(proxy.issuerA.isValid(accessToken:)) == false, "\(request.uri)")
            }
            #expect(!response.body.contains(Self.secretB) && !response.body.contains(ConfigFixture.clientSecret), "no secret in /status")
        }
    }

    @Test func forcedRefreshAndExpiryActOnlyOnTheIdentityTheyName() async throws {
        try await withTwoIdentities { proxy in
            try await proxy.warmUp()
            let (callsA, callsB) = (proxy.issuerA.callCount, proxy.issuerB.callCount)
            let tokenA = proxy.harness.received.last.flatMap(bearer)

            let refreshed = try await proxy.admin(.POST, "/token/refresh?identity=b")
            #expect(refreshed.status == 200, "\(refreshed.body)")
            #expect(refreshed.body.contains(#""expiresAt":"#))
            #expect(proxy.issuerB.callCount == callsB + 1, "issuer b called once")
            #expect(proxy.issuerA.callCount == callsA, "issuer a not at all")

            let expired = try await proxy.admin(.POST, "/token/expire?identity=b")
            #expect(expired.status == 200, "\(expired.body)")
            #expect(try await proxy.harness.send(.GET, "/b/after-expiry").status == 200, "nothing broke")
            #expect(proxy.issuerB.callCount == callsB + 2, "the next request on route b refreshed identity b")
            #expect(try await proxy.harness.send(.GET, "/after-expiry").status == 200)
            #expect(proxy.issuerA.callCount == callsA, "route default's token stayed")
            #expect(proxy.harness.received.last.flatMap(bearer) == tokenA, "route default still sends the same token")
            let tokenB = proxy.upstreamB.received.last.flatMap(bearer)
            #expect(tokenB.map(proxy.issuerB.isValid(accessToken:)) == true)

            // Without `identity`, the identity `default`.
            let plain = try await proxy.admin(.POST, "/token/refresh")
            #expect(plain.status == 200, "\(plain.body)")
            #expect(proxy.issuerA.callCount == callsA + 1)
            #expect(proxy.issuerB.callCount == callsB + 2)

            for path in ["/token/refresh?identity=nope", "/token/expire?identity=nope"] {
                let unknown = try await proxy.admin(.POST, path)
                #expect(unknown.status == 404, "\(path)")
                #expect(unknown.headers.first(name: "X-TokenProxy-Error") == "unknown_identity", "\(path): \(unknown.headers)")
                #expect(unknown.body.contains(#""error":"unknown_identity""#), "\(unknown.body)")
                #expect(unknown.body.contains("nope"), "the message names what was asked for: \(unknown.body)")
            }
            #expect(proxy.issuerA.callCount == callsA + 1 && proxy.issuerB.callCount == callsB + 2, "an unknown identity calls no issuer")
            #expect(proxy.upstreamB.received.last.flatMap(bearer) == tokenB)
        }
    }

    @Test func readinessNamesTheIdentityWhoseIssuerCannotBeReached() async throws {
        try await withTwoIdentities(issuerBGone: true) { proxy in
            let refused = try await proxy.admin(.GET, "/readyz")
            #expect(refused.status == 503, "\(refused.body)")
            let body = try JSONValue.parse(Data(refused.body.utf8))
            #expect(field(body, "ready") == .bool(false))
            #expect(field(body, "identity") == .string("b"), "\(refused.body)")
            #expect(text(field(body, "reason")).map { names($0, "b") } == true, "\(refused.body)")
            #expect(field(body, "identities", "b") != nil, "\(refused.body)")
            #expect(field(body, "identities", "default") == nil, "default can get its token: \(refused.body)")

            // Requests on the default route go on; those on route b are refused, not forwarded.
            for path in ["/x", "/y"] { #expect(try await proxy.harness.send(.GET, path).status == 200, "\(path)") }
            let onB = try await proxy.harness.send(.GET, "/b/x")
            #expect(onB.status == 503, "\(onB.body)")
            #expect(onB.headers.first(name: "X-TokenProxy-Error") == "token_unavailable", "\(onB.headers)")
            #expect(proxy.upstreamB.received.isEmpty)
            #expect(try await proxy.admin(.GET, "/readyz").status == 503, "it agrees with what requests get")
        }
    }

    @Test func readinessNamesTheIdentityWhoseClientTheIssuerRefuses() async throws {
        try await withTwoIdentities { proxy in
            try await proxy.warmUp()
            #expect(try await proxy.admin(.GET, "/readyz").status == 200, "both healthy")

            // Issuer b no longer accepts the client (its secret rotated elsewhere): permanent.
            proxy.issuerB.update { $0.expectedClient = (IdentityAdminTests.clientB, "rotated-elsewhere") }
            #expect(try await proxy.admin(.POST, "/token/expire?identity=b").status == 200)
            let refused = try await proxy.admin(.GET, "/readyz")
            #expect(refused.status == 503, "\(refused.body)")
            let body = try JSONValue.parse(Data(refused.body.utf8))
            #expect(field(body, "identity") == .string("b"), "\(refused.body)")
            #expect(text(field(body, "reason")).map { names($0, "b") } == true, "\(refused.body)")
            #expect(text(field(body, "reason"))?.contains("invalid_client") == true, "\(refused.body)")
            #expect(field(body, "identities", "default") == nil, "\(refused.body)")
            #expect(proxy.issuerB.calls.last?.status == 401)

            let callsA = proxy.issuerA.callCount
            #expect(try await proxy.harness.send(.GET, "/still-served").status == 200, "the default route is unaffected")
            #expect(proxy.issuerA.callCount == callsA)
            let onB = try await proxy.harness.send(.GET, "/b/x")
            #expect(onB.status == 503 || onB.status == 401, "\(onB.status) \(onB.body)")
            #expect(["token_unavailable", "reauthentication_required"].contains(onB.headers.first(name: "X-TokenProxy-Error") ?? ""), "\(onB.headers)")
            #expect(proxy.upstreamB.received.map(\.uri) == ["/b/warm"], "not forwarded")

            let status = try JSONValue.parse(Data(try await proxy.admin(.GET, "/status").body.utf8))
            #expect(text(field(status, "identities", "b", "failure")) != nil, "identity b's failure shows")
            #expect(field(status, "identities", "default", "failure") == nil)
        }
    }

    @Test func metricsCountRefreshesPerIdentityAndRequestsPerRoute() async throws {
        try await withTwoIdentities { proxy in
            try await proxy.warmUp()
            #expect(try await proxy.admin(.POST, "/token/refresh?identity=b").status == 200)
            for path in ["/x", "/y"] { #expect(try await proxy.harness.send(.GET, path).status == 200) }
            for path in ["/b/1", "/b/2", "/b/3"] { #expect(try await proxy.harness.send(.GET, path).status == 200) }
            // default: 1 refresh (the first token), 3 requests; b: 2 refreshes, 4 requests.
            #expect(proxy.issuerA.callCount == 1)
            #expect(proxy.issuerB.callCount == 2)

            // Durations are counted as each answer ends: wait until all 7 are in.
            var metrics = try await proxy.admin(.GET, "/metrics")
            let deadline = ContinuousClock.now.advanced(by: .seconds(5))
            while Self.sample(metrics.body, "tokenproxy_request_duration_seconds_count", ["route": "b"]) != 4
                || Self.sample(metrics.body, "tokenproxy_request_duration_seconds_count", ["route": "default"]) != 3,
                ContinuousClock.now < deadline
            {
                try await Task.sleep(for: .milliseconds(50))
                metrics = try await proxy.admin(.GET, "/metrics")
            }
            let exposition = metrics.body
            #expect(metrics.status == 200)
            let expected: [(String, [String: String], Double)] = [
                ("tokenproxy_token_refreshes_total", ["identity": "default", "result": "success"], 1),
                ("tokenproxy_token_refreshes_total", ["identity": "b", "result": "success"], 2),
                ("tokenproxy_token_refreshes_total", ["identity": "b", "result": "transient_failure"], 0),
                ("tokenproxy_token_refreshes_total", ["identity": "default", "result": "reauthentication_required"], 0),
                ("tokenproxy_requests_total", ["route": "default"], 3),
                ("tokenproxy_requests_total", ["route": "b"], 4),
                ("tokenproxy_request_duration_seconds_count", ["route": "default"], 3),
                ("tokenproxy_request_duration_seconds_count", ["route": "b"], 4),
                ("tokenproxy_request_duration_seconds_bucket", ["route": "b", "le": "+Inf"], 4),
                ("tokenproxy_request_duration_seconds_bucket", ["route": "default", "le": "+Inf"], 3),
            ]
            for (name, labels, value) in expected {
                #expect(Self.sample(exposition, name, labels) == value, "\(name)\(labels): \(Self.lines(exposition, name))")
            }
            for identity in ["default", "b"] {
                let left = Self.sample(exposition, "tokenproxy_token_expires_in_seconds", ["identity": identity])
                #expect(left.map { $0 > 3000 } == true, "\(identity): \(Self.lines(exposition, "tokenproxy_token_expires_in_seconds"))")
            }
            #expect(Self.sample(exposition, "tokenproxy_requests_total") == nil, "request counts carry the route label")
            #expect(Self.sample(exposition, "tokenproxy_token_refreshes_total", ["result": "success"]) == nil, "refresh counts carry the identity label")
            for secret in [Self.secretB, ConfigFixture.clientSecret] + proxy.upstreamB.received.compactMap(bearer) {
                #expect(!exposition.contains(secret), "no secret in /metrics")
            }
        }
    }

    @Test func a401FromRouteBsUpstreamRefreshesOnlyIdentityBAndTheReplayIsAnswered() async throws {
        try await withTwoIdentities { proxy in
            try await proxy.warmUp()
            let (callsA, callsB) = (proxy.issuerA.callCount, proxy.issuerB.callCount)
            let tokenA = proxy.harness.received.last.flatMap(bearer)
            let rejected = NIOLockedValueBox(false)
            proxy.upstreamB.respond { request, count in
                let first = rejected.withLockedValue { done in
                    defer { done = true }
                    return !done
                }
                return first ? Self.invalidToken : .json(200, "{\"replayed\": true, \"n\": \(count)}")
            }

            let response = try await proxy.harness.send(.POST, "/b/orders", headers: [("Content-Type", "application/json")], body: #"{"item": "tea"}"#)
            #expect(response.status == 200, "\(response.body)")
            #expect(response.body == #"{"replayed": true, "n": 3}"#, "the client sees the replay's answer")
            let seen = proxy.upstreamB.received.dropFirst()
            #expect(seen.map(\.uri) == ["/b/orders", "/b/orders"])
            #expect(seen.map(\.bodyText) == [#"{"item": "tea"}"#, #"{"item": "tea"}"#])
            let tokens = seen.map(bearer)
            #expect(tokens.count == 2 && tokens[0] != tokens[1], "replayed with a new token")
            #expect(tokens.last?.map(proxy.issuerB.isValid(accessToken:)) == true, "issued by issuer b")
            #expect(proxy.issuerB.callCount == callsB + 1, "identity b refreshed once")
            #expect(proxy.issuerA.callCount == callsA, "identity default not at all")
            #expect(proxy.harness.statistics.replaysAfter401 == 1)

            #expect(try await proxy.harness.send(.GET, "/after").status == 200)
            #expect(proxy.harness.received.last.flatMap(bearer) == tokenA, "route default kept its token")
            #expect(proxy.issuerA.callCount == callsA)

            let status = try JSONValue.parse(Data(try await proxy.admin(.GET, "/status").body.utf8))
            #expect(field(status, "routes", "b", "requests") == .number(2), "the replay is the same request")
            #expect(field(status, "counters", "replaysAfter401") == .number(1))
        }
    }
}

// MARK: - The proxy with two identities and two routes

extension IdentityAdminTests {
    /// A proxy with identities `default` and `b` and routes `default` and `b`, its admin
    /// listener, issuer b and route b's upstream.
    struct TwoIdentities {
        let harness: ProxyHarness
        let issuerB: MockTokenIssuer
        let upstreamB: RouteUpstream
        let adminServer: AdminServer
        var issuerA: MockTokenIssuer { harness.issuer }
        var adminPort: Int { adminServer.port ?? 0 }

        func admin(_ method: HTTPMethod, _ path: String, body: String? = nil) async throws -> ProxyHarness.Response {
            try await harness.admin(method, path, port: adminPort, body: body)
        }

        /// One request through each route, so that each identity holds its token (the first of
        /// each issuer) before the test counts.
        func warmUp() async throws {
            let onDefault = try await harness.send(.GET, "/warm")
            #expect(onDefault.status == 200, "route default: \(onDefault.body)")
            let onB = try await harness.send(.GET, "/b/warm")
            #expect(onB.status == 200, "route b: \(onB.body)")
            try #require(onDefault.status == 200 && onB.status == 200)
        }
    }

    /// Runs `body` with ``TwoIdentities``; everything is shut down afterwards, thrown or not.
    /// `issuerBGone`: issuer b is shut down before the proxy starts, so identity b never gets
    /// a token.
    func withTwoIdentities(issuerBGone: Bool = false, _ body: (TwoIdentities) async throws -> Void) async throws {
        var behaviorB = MockTokenIssuer.Behavior()
        behaviorB.lifetime = .seconds(3600)
        behaviorB.expectedClient = (Self.clientB, Self.secretB)
        let issuerB = try await MockTokenIssuer.start(behavior: behaviorB)
        if issuerBGone { await issuerB.shutdown() }
        let upstreamB = try await RouteUpstream.start()
        let secrets = try TemporaryDirectory()
        let secretFile = try secrets.write("b-secret", Self.secretB + "\n")

        var options = ProxyHarness.Options()
        // Long-lived tokens: no proactive refresh during a test; every issuer call is the test's.
        options.behavior.lifetime = .seconds(3600)
        options.behavior.expectedClient = ("test-client", ConfigFixture.clientSecret)
        options.topLevel["identities"] = """
            { "b": { "endpoint": "\(issuerB.url)", "grant": "client_credentials", "clientId": "\(Self.clientB)", "clientAuth": "basic",
                     "clientSecretFile": "\(secretFile)", "scope": "b.read", "store": "b.json", "minRefreshInterval": "1s" } }
            """
        options.topLevel["routes"] = """
            [ { "name": "b", "pathPrefix": "/b/", "identity": "b", "upstream": { "url": "\(upstreamB.baseURL)" } } ]
            """
        let harness: ProxyHarness
        do {
            harness = try await ProxyHarness(options)
        } catch {
            await upstreamB.shutdown()
            await issuerB.shutdown()
            throw error
        }
        var admin: AdminServer?
        do {
            admin = try await harness.startAdmin()
            try await body(TwoIdentities(harness: harness, issuerB: issuerB, upstreamB: upstreamB, adminServer: admin!))
        } catch {
            await Self.shutDown(admin, harness, issuerB, upstreamB)
            withExtendedLifetime(secrets) {}
            throw error
        }
        await Self.shutDown(admin, harness, issuerB, upstreamB)
        withExtendedLifetime(secrets) {}
    }

    private static func shutDown(_ admin: AdminServer?, _ harness: ProxyHarness, _ issuerB: MockTokenIssuer, _ upstreamB: RouteUpstream) async {
        await admin?.stop()
        await harness.shutdown()
        await upstreamB.shutdown()
        await issuerB.shutdown()
    }
}

extension IdentityAdminTests {
    /// A test upstream of a route's own: records what it received and answers through a closure
    /// the test sets (`(request, its position from 1)`).
    final class RouteUpstream: Sendable {
        private let server: MockHTTPServer
        private let recorded: NIOLockedValueBox<[MockHTTPRequest]>
        private let responder: NIOLockedValueBox<@Sendable (MockHTTPRequest, Int) async -> MockHTTPResponse>

        private init(server: MockHTTPServer, recorded: NIOLockedValueBox<[MockHTTPRequest]>, responder: NIOLockedValueBox<@Sendable (MockHTTPRequest, Int) async -> MockHTTPResponse>) {
            self.server = server
            self.recorded = recorded
            self.responder = responder
        }

        static func start() async throws -> RouteUpstream {
            let recorded = NIOLockedValueBox<[MockHTTPRequest]>([])
            let responder = NIOLockedValueBox<@Sendable (MockHTTPRequest, Int) async -> MockHTTPResponse>({ _, _ in .json(200, #"{"route": "b"}"#) })
            let server = try await MockHTTPServer.start { request in
                let count = recorded.withLockedValue {
                    $0.append(request)
                    return $0.count
                }
                return await responder.withLockedValue { $0 }(request, count)
            }
            return RouteUpstream(server: server, recorded: recorded, responder: responder)
        }

        var port: Int { server.port }
        var baseURL: String { server.baseURL }
        var received: [MockHTTPRequest] { recorded.withLockedValue { $0 } }

        func respond(_ respond: @escaping @Sendable (MockHTTPRequest, Int) async -> MockHTTPResponse) {
            responder.withLockedValue { $0 = respond }
        }

        func shutdown() async { await server.shutdown() }
    }
}

// MARK: - Reading answers

/// The value at `path` in nested JSON objects.
private func field(_ json: JSONValue?, _ path: String...) -> JSONValue? {
    var current = json
    for key in path {
        guard case .object(let fields)? = current else { return nil }
        current = fields[key]
    }
    return current
}

/// The text of a JSON string.
private func text(_ json: JSONValue?) -> String? {
    if case .string(let text)? = json { return text }
    return nil
}

/// Whether `text` has `word` as a word of its own (a name, not a letter of another word).
private func names(_ text: String, _ word: String) -> Bool {
    text.split { !($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" || $0 == ".") }.contains { $0.trimmingCharacters(in: ["."]) == word }
}

/// The bearer token a request carried.
private func bearer(_ request: MockHTTPRequest) -> String? {
    guard let value = request.header("Authorization"), value.hasPrefix("Bearer ") else { return nil }
    return String(value.dropFirst(7))
}

extension IdentityAdminTests {
    /// The value of the Prometheus sample `name` whose labels are exactly `labels` (in whatever
    /// order they are rendered); `nil` when there is none.
    static func sample(_ text: String, _ name: String, _ labels: [String: String] = [:]) -> Double? {
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " ") else { continue }
            let series = line[..<space]
            var sampleName = series
            var sampleLabels: [String: String] = [:]
            if let brace = series.firstIndex(of: "{"), series.hasSuffix("}") {
                sampleName = series[..<brace]
                for pair in series[series.index(after: brace)..<series.index(before: series.endIndex)].split(separator: ",") {
                    let parts = pair.split(separator: "=", maxSplits: 1)
                    guard parts.count == 2 else { continue }
                    sampleLabels[String(parts[0])] = String(parts[1].dropFirst().dropLast())
                }
            }
            if sampleName == name, sampleLabels == labels { return Double(line[line.index(after: space)...]) }
        }
        return nil
    }

    /// The lines of `name`'s samples, for failure messages.
    static func lines(_ text: String, _ name: String) -> String {
        text.split(separator: "\n").filter { $0.hasPrefix(name) }.joined(separator: " | ")
    }
}
