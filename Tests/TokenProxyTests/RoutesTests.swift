import AsyncHTTPClient
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// Several APIs behind one proxy, each with its own identity (SPEC §2.4), seen from outside:
/// raw sockets, real upstreams and issuers, the requests each of them got.
@Suite("Routes and identities", .serialized)
struct RoutesTests {
    /// An upstream that answers `name` and records each request head it got.
    static func namedUpstream(_ name: String) async throws -> RawUpstream {
        try await RawUpstream { _ in ("HTTP/1.1 200 OK\r\nContent-Length: \(name.utf8.count)\r\n\r\n\(name)", false) }
    }

    /// The request line of a recorded head.
    static func requestLine(_ head: String) -> String { head.components(separatedBy: "\r\n")[0] }

    @Test func prefixHostAndStripRulesPickTheRouteAndNoRouteReachesNoUpstream() async throws {
        let (orders, status, statusOrders) = (try await Self.namedUpstream("orders"), try await Self.namedUpstream("status"), try await Self.namedUpstream("status-orders"))
        var options = ProxyHarness.Options()
        options.topLevel["routes"] = """
            [
              {"name": "orders", "listen": "127.0.0.2:0", "pathPrefix": "/orders/", "stripPrefix": true, "upstream": {"url": "\(orders.url)/api"}},
              {"name": "status", "listen": "127.0.0.2:0", "host": "status.localhost", "upstream": {"url": "\(status.url)"}},
              {"name": "status-orders", "listen": "127.0.0.2:0", "host": "status.localhost", "pathPrefix": "/orders", "upstream": {"url": "\(statusOrders.url)"}}
            ]
            """
        try await withProxyHarness(options) { harness in
            let port = try #require(harness.server.routePorts["orders"])
            #expect(harness.server.routePorts["status"] == port, "routes naming one listen share its listener")
            func get(_ path: String, host: String) async throws -> String {
                let raw = RawHTTPClient(port: port, host: "127.0.0.2")
                return try await raw.exchange("GET \(path) HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n\r\n")
            }
            // Prefix on a segment boundary, stripped, appended to the upstream's own path.
            #expect(try await get("/orders/1?x=2", host: "127.0.0.2").hasSuffix("orders"))
            #expect(try await get("/orders", host: "127.0.0.2").hasSuffix("orders"))
            #expect(orders.received.map(Self.requestLine) == ["GET /api/1?x=2 HTTP/1.1", "GET /api/ HTTP/1.1"])
            #expect(orders.received.allSatisfy { $0.contains("Authorization: Bearer ") })
            // A host's routes come first, whatever the case and port of Host; the longest prefix wins.
            #expect(try await get("/x", host: "Status.Localhost:\(port)").hasSuffix("status"))
            #expect(try await get("/orders/9", host: "status.localhost").hasSuffix("status-orders"))
            #expect(status.received.map(Self.requestLine) == ["GET /x HTTP/1.1"])
            #expect(statusOrders.received.map(Self.requestLine) == ["GET /orders/9 HTTP/1.1"], "not stripped: that route does not strip")

            // No route: 404 no_route, and not a byte to any upstream.
            let before = (orders.connections, status.connections, statusOrders.connections, harness.received.count)
            for (path, host) in [("/ordersX", "127.0.0.2"), ("/nothing", "127.0.0.2"), ("/", "localhost")] {
                let answer = try await get(path, host: host)
                #expect(answer.hasPrefix("HTTP/1.1 404"), "\(path): \(answer)")
                #expect(answer.contains("X-TokenProxy-Error: no_route"), "\(answer)")
            }
            #expect((orders.connections, status.connections, statusOrders.connections, harness.received.count) == before)
            #expect(orders.received.count == 2 && status.received.count == 1 && statusOrders.received.count == 1)

            // A Host that no route names and that is not allowed is refused first, with 403.
            let foreign = try await get("/orders/1", host: "evil.example")
            #expect(foreign.hasPrefix("HTTP/1.1 403"), "\(foreign)")
            // The top-level route keeps its own listener and upstream.
            #expect(try await harness.send(.GET, "/plain").status == 200)
            #expect(harness.received.map(\.uri) == ["/plain"])
        }
        for upstream in [orders, status, statusOrders] { await upstream.shutdown() }
    }

    /// Two identities, two issuers, two upstreams; each upstream only takes its own issuer's
    /// tokens, and notes any token of the other that reaches it. Identity `default` is the
    /// harness's issuer (known once the harness runs), `b` a second one.
    final class Pair: Sendable {
        let issuerB: MockTokenIssuer
        let issuerA = NIOLockedValueBox<MockTokenIssuer?>(nil)
        let upstreamA: MockHTTPServer
        let upstreamB: MockHTTPServer
        /// Tokens of the other identity that reached an upstream.
        let foreign = NIOLockedValueBox<[String]>([])
        /// 401s each upstream answered (to tokens its issuer revoked).
        let rejected = NIOLockedValueBox<(a: Int, b: Int)>((0, 0))

        init(behaviorB: MockTokenIssuer.Behavior = .init()) async throws {
            issuerB = try await MockTokenIssuer.start(behavior: behaviorB)
            let (issuerA, issuerB, foreign, rejected) = (issuerA, issuerB, foreign, rejected)
            func upstream(isA: Bool) async throws -> MockHTTPServer {
                try await MockHTTPServer.start { request in
                    let token = String(request.header("Authorization")?.dropFirst("Bearer ".count) ?? "")
                    guard let a = issuerA.withLockedValue({ $0 }) else { return .json(500, "{}") }
                    let (own, other) = isA ? (a, issuerB) : (issuerB, a)
                    if other.isValid(accessToken: token) { foreign.withLockedValue { $0.append(token) } }
                    guard own.isValid(accessToken: token) else {
                        rejected.withLockedValue { if isA { $0.a += 1 } else { $0.b += 1 } }
                        return MockHTTPResponse(status: 401, headers: [("WWW-Authenticate", #"Bearer error="invalid_token""#)])
                    }
                    return .json(200, isA ? #"{"api": "a"}"# : #"{"api": "b"}"#)
                }
            }
            upstreamA = try await upstream(isA: true)
            upstreamB = try await upstream(isA: false)
        }

        func options() -> ProxyHarness.Options {
            var options = ProxyHarness.Options()
            options.topLevel["identities"] = """
                {"b": {"endpoint": "\(issuerB.url)", "grant": "client_credentials", "clientId": "b-client", "clientSecretFile": "client-secret", "store": "b.json"}}
                """
            // Long-lived tokens: a refresh happens only when a test causes one.
            options.behavior.lifetime = .seconds(3600)
            options.topLevel["routes"] = """
                [{"name": "a", "pathPrefix": "/a/", "stripPrefix": true, "upstream": {"url": "http://127.0.0.1:\(upstreamA.port)"}},
                 {"name": "b", "pathPrefix": "/b/", "stripPrefix": true, "upstream": {"url": "http://127.0.0.1:\(upstreamB.port)"}, "identity": "b"}]
                """
            return options
        }

        func shutdown() async {
            await upstreamA.shutdown()
            await upstreamB.shutdown()
            await issuerB.shutdown()
        }
    }

    @Test func eachUpstreamOnlyEverSeesItsOwnIdentitysTokenUnderLoadRefreshesAndReplays() async throws {
        let pair = try await Pair()
        try await withProxyHarness(pair.options()) { harness in
            pair.issuerA.withLockedValue { $0 = harness.issuer }
            let client = harness.client
            let url = harness.url
            // Eight clients, both routes interleaved, for a bounded number of rounds; once in a
            // while, both issuers revoke what they issued, so that both upstreams answer 401 and
            // both identities refresh and replay while the other's requests go on.
            let statuses = NIOLockedValueBox<[UInt]>([])
            try await withThrowingTaskGroup(of: Void.self) { group in
                for worker in 0..<8 {
                    group.addTask {
                        for round in 0..<25 {
                            let path = (worker + round).isMultiple(of: 2) ? "/a/item/\(round)" : "/b/item/\(round)"
                            let response = try await client.execute(HTTPClientRequest(url: url + path), timeout: .seconds(20))
                            _ = try await response.body.collect(upTo: 1 << 16)
                            let answered = statuses.withLockedValue {
                                $0.append(response.status.code)
                                return $0.count
                            }
                            // Once, mid-load, by whoever got the 60th answer (twice could reject a
                            // request's replayed token too, and a request is replayed once only, SPEC §5).
                            if answered == 60 {
                                harness.issuer.revokeAccessTokens()
                                pair.issuerB.revokeAccessTokens()
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            let seen = statuses.withLockedValue { $0 }
            #expect(seen.count == 200)
            #expect(seen.allSatisfy { $0 == 200 }, "clients saw \(Dictionary(grouping: seen, by: { $0 }).mapValues(\.count))")
            #expect(pair.foreign.withLockedValue { $0 }.isEmpty, "an upstream got the other identity's token")
            let rejected = pair.rejected.withLockedValue { $0 }
            #expect(rejected.a > 0 && rejected.b > 0, "both identities went through 401 replays: \(rejected)")
            #expect(harness.statistics.replaysAfter401 > 0)
            // Each identity's calls went to its own issuer only.
            #expect(harness.issuer.calls.allSatisfy { $0.form["grant_type"] == "refresh_token" })
            #expect(pair.issuerB.calls.allSatisfy { $0.form["grant_type"] == "client_credentials" })
            #expect(pair.issuerB.callCount >= 2)
        }
        await pair.shutdown()
    }

    @Test func aFourOhOneFromOneRouteRefreshesOnlyItsIdentityAndADeadIssuerDoesNotSlowTheOther() async throws {
        var behaviorB = MockTokenIssuer.Behavior()
        behaviorB.lifetime = .seconds(3600)
        let pair = try await Pair(behaviorB: behaviorB)
        try await withProxyHarness(pair.options()) { harness in
            pair.issuerA.withLockedValue { $0 = harness.issuer }
            #expect(try await harness.send(.GET, "/a/x").status == 200)
            #expect(try await harness.send(.GET, "/b/x").status == 200)
            let (callsA, callsB) = (harness.issuer.callCount, pair.issuerB.callCount)
            pair.issuerB.revokeAccessTokens()
            #expect(try await harness.send(.GET, "/b/x").status == 200, "replayed with b's new token")
            #expect(pair.issuerB.callCount == callsB + 1)
            #expect(harness.issuer.callCount == callsA, "a 401 on route b never refreshes identity default")

            // b's issuer hangs: b's request waits for its refresh, a's are served meanwhile.
            pair.issuerB.update { $0.delay = .seconds(3) }
            // Expired by hand (a second 401 this soon would be held back by minRefreshInterval).
            try await #require(harness.application.identities["b"]).expireCurrentToken()
            let received = pair.issuerB.receivedCount
            let bDone = NIOLockedValueBox(false)
            let slow = Task {
                let status = try? await harness.send(.GET, "/b/x").status
                bDone.withLockedValue { $0 = true }
                return status
            }
            let deadline = ContinuousClock.now.advanced(by: .seconds(10))
            while pair.issuerB.receivedCount == received, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
            #expect(pair.issuerB.receivedCount > received, "b's refresh never reached its issuer")
            for _ in 0..<20 { #expect(try await harness.send(.GET, "/a/x").status == 200) }
            #expect(!bDone.withLockedValue { $0 }, "identity default's requests were served while b's refresh hung")
            #expect(await slow.value == 200)
            #expect(harness.issuer.callCount == callsA)
        }
        await pair.shutdown()
    }
}

/// RFC 8693 token exchange (SPEC §2.4) against the mock issuer, which checks `subject_token`
/// and `subject_token_type`.
@Suite("Token exchange", .serialized)
struct TokenExchangeTests {
    static let jwtType = "urn:ietf:params:oauth:token-type:jwt"
    static let accessTokenType = "urn:ietf:params:oauth:token-type:access_token"

    @Test func aSubjectTokenFileIsReadAtEveryExchange() async throws {
        var options = ProxyHarness.Options()
        options.behavior.acceptedSubjectTokenType = Self.jwtType
        options.topLevel["identities"] = """
            {"x": {"endpoint": "ENDPOINT", "grant": "token_exchange", "subjectTokenFile": "subject.jwt", "audience": "api-x", "resource": "https://x.example", "store": "x.json"}}
            """
        options.topLevel["routes"] = #"[{"name": "x", "pathPrefix": "/x/", "upstream": {"url": "UPSTREAM"}, "identity": "x"}]"#
        try await withExchangeHarness(options, prepare: { harness in
            harness.issuer.acceptSubjectToken("projected-sa-token-1")
            harness.issuer.acceptSubjectToken("projected-sa-token-2")
            // Written as operators and kubelets write it: a trailing newline is not part of it.
            try harness.directory.write("subject.jwt", "projected-sa-token-1\n")
        }) { harness in
            #expect(try await harness.send(.GET, "/x/orders").status == 200)
            let first = try #require(harness.issuer.exchanges.last)
            #expect(first.subjectToken == "projected-sa-token-1")
            #expect(first.subjectTokenType == Self.jwtType)
            #expect(first.audience == "api-x" && first.resource == "https://x.example")
            #expect(first.status == 200)
            let sent = try #require(harness.received.last?.header("Authorization"))
            #expect(sent == "Bearer \(first.issuedToken ?? "-")", "the upstream got the exchanged token")

            // The file changes (a rotated projected token); the next exchange sends the new one.
            try harness.directory.write("subject.jwt", "projected-sa-token-2\n")
            let admin = try await harness.startAdmin()
            let forced = try await harness.admin(.POST, "/token/refresh?identity=x", port: admin.port ?? 0)
            #expect(forced.status == 200, "\(forced.body)")
            #expect(harness.issuer.exchanges.last?.subjectToken == "projected-sa-token-2")
            #expect(harness.issuer.exchanges.count == 2)
            #expect(harness.issuer.exchanges.allSatisfy { $0.subjectToken?.hasPrefix("projected-sa-token") == true })
            await admin.stop()
        }
    }

    @Test func aSubjectIdentitysTokenIsExchangedAndAChangedSubjectIsExchangedAgainAtTheNextNeed() async throws {
        var options = ProxyHarness.Options()
        // The subject is refreshed by hand twice in a row here.
        options.token = { $0.minRefreshInterval = "0s" }
        options.topLevel["identities"] = """
            {"y": {"endpoint": "ENDPOINT", "grant": "token_exchange", "subjectIdentity": "default", "audience": "api-y", "store": "y.json"}}
            """
        options.topLevel["routes"] = #"[{"name": "y", "pathPrefix": "/y/", "stripPrefix": true, "upstream": {"url": "UPSTREAM"}, "identity": "y"}]"#
        try await withExchangeHarness(options) { harness in
            #expect(try await harness.send(.GET, "/y/a").status == 200)
            // The subject had no token: it was refreshed first, then exchanged.
            let subject = try #require(harness.broker.publisher.latest()?.accessToken)
            let first = try #require(harness.issuer.exchanges.last)
            #expect(first.subjectToken == subject)
            #expect(first.subjectTokenType == Self.accessTokenType)
            #expect(first.audience == "api-y")
            #expect(try await harness.send(.GET, "/y/b").status == 200)
            #expect(harness.issuer.exchanges.count == 1, "a fresh exchanged token is used again")

            // The subject is refreshed: nothing happens until the exchanged token is next needed…
            let admin = try await harness.startAdmin()
            #expect(try await harness.admin(.POST, "/token/refresh", port: admin.port ?? 0).status == 200)
            let newSubject = try #require(harness.broker.publisher.latest()?.accessToken)
            #expect(newSubject != subject)
            #expect(harness.issuer.exchanges.count == 1)
            // …then it is exchanged again, from the new subject token, once.
            #expect(try await harness.send(.GET, "/y/c").status == 200)
            #expect(try await harness.send(.GET, "/y/d").status == 200)
            #expect(harness.issuer.exchanges.count == 2)
            #expect(harness.issuer.exchanges.last?.subjectToken == newSubject)
            let sent = harness.received.suffix(2).compactMap { $0.header("Authorization") }
            #expect(Set(sent) == ["Bearer \(harness.issuer.exchanges.last?.issuedToken ?? "-")"])

            // The subject changes again and the issuer fails the exchange: requests go on with
            // the exchanged token still held, which is valid, rather than failing.
            let held = try #require(harness.issuer.exchanges.last?.issuedToken)
            #expect(try await harness.admin(.POST, "/token/refresh", port: admin.port ?? 0).status == 200)
            harness.issuer.script([MockHTTPResponse(status: 503, body: "down")])
            let during = try await harness.send(.GET, "/y/e")
            #expect(during.status == 200, "\(during.body)")
            #expect(harness.received.last?.header("Authorization") == "Bearer \(held)")
            await admin.stop()
        }
    }

    @Test func aRefusedSubjectIsReported() async throws {
        var options = ProxyHarness.Options()
        options.behavior.acceptedSubjectTokenType = nil
        options.topLevel["identities"] = """
            {"x": {"endpoint": "ENDPOINT", "grant": "token_exchange", "subjectTokenFile": "subject.jwt", "store": "x.json"}}
            """
        options.topLevel["routes"] = #"[{"name": "x", "pathPrefix": "/x/", "upstream": {"url": "UPSTREAM"}, "identity": "x"}]"#
        try await withExchangeHarness(options, prepare: { harness in
            try harness.directory.write("subject.jwt", "not-a-token-the-issuer-knows\n")
        }) { harness in
            let refused = try await harness.send(.GET, "/x/a")
            #expect(refused.status == 401, "\(refused.body)")
            #expect(refused.body.contains("reauthentication_required"))
            #expect(refused.body.contains("subjectTokenFile"), "the remedy names the key: \(refused.body)")
            #expect(!refused.body.contains("not-a-token-the-issuer-knows"))
            #expect(harness.received.isEmpty)
            // The default route does not suffer for it.
            #expect(try await harness.send(.GET, "/other").status == 200)
        }
    }

    /// A harness whose JSON may say ENDPOINT and UPSTREAM for the harness's issuer and upstream,
    /// which are known only once it runs: the configuration is rewritten and reloaded then.
    private func withExchangeHarness(
        _ options: ProxyHarness.Options, prepare: (ProxyHarness) throws -> Void = { _ in }, _ body: (ProxyHarness) async throws -> Void
    ) async throws {
        var initial = options
        let (identities, routes) = (options.topLevel["identities"] ?? "{}", options.topLevel["routes"] ?? "[]")
        initial.topLevel["identities"] = nil
        initial.topLevel["routes"] = nil
        try await withProxyHarness(initial) { harness in
            let path = harness.configuration.sourcePath
            var text = try String(contentsOfFile: path, encoding: .utf8)
            let endpoint = harness.issuer.url
            let upstream = "http://127.0.0.1:\(harness.upstream.port)"
            text = text.replacingOccurrences(of: "\n}\n", with: ",\n  \"identities\": \(identities),\n  \"routes\": \(routes)\n}\n")
                .replacingOccurrences(of: "ENDPOINT", with: endpoint).replacingOccurrences(of: "UPSTREAM", with: upstream)
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            try prepare(harness)
            await harness.application.reloader.reload()
            #expect(harness.server.routes.count == 2, "the exchange configuration did not load: \(harness.logs.text)")
            try await body(harness)
        }
    }
}

/// SIGHUP with routes and identities (SPEC §2.4, §8), and processes sharing each identity's store.
@Suite("Routes and identities: reload and processes", .serialized)
struct RoutesLifecycleTests {
    @Test func aReloadOpensNewListenersDrainsRemovedOnesAndKeepsUnchangedIdentitiesTokens() async throws {
        let pair = try await RoutesTests.Pair()
        var options = pair.options()
        options.topLevel["routes"] = """
            [{"name": "b", "listen": "127.0.0.2:0", "upstream": {"url": "http://127.0.0.1:\(pair.upstreamB.port)"}, "identity": "b"}]
            """
        try await withProxyHarness(options) { harness in
            pair.issuerA.withLockedValue { $0 = harness.issuer }
            let portB = try #require(harness.server.routePorts["b"])
            let viaB = RawHTTPClient(port: portB, host: "127.0.0.2")
            #expect(try await harness.send(.GET, "/x").status == 200)
            #expect(try await viaB.exchange("GET /y HTTP/1.1\r\nHost: 127.0.0.2\r\nConnection: close\r\n\r\n").hasPrefix("HTTP/1.1 200"))
            let callsA = harness.issuer.callCount
            let issuerC = try await MockTokenIssuer.start()

            // b (its listener and identity) goes; c comes on a listener of its own, with a new
            // identity; the top-level route gains a sibling on its listener.
            let path = harness.configuration.sourcePath
            var text = try String(contentsOfFile: path, encoding: .utf8)
            let routes = """
                [{"name": "c", "listen": "127.0.0.3:0", "upstream": {"url": "http://127.0.0.1:\(harness.upstream.port)/c"}, "identity": "c"},
                 {"name": "a2", "pathPrefix": "/v2", "stripPrefix": true, "upstream": {"url": "http://127.0.0.1:\(harness.upstream.port)/two"}}]
                """
            let identities = """
                {"c": {"endpoint": "\(issuerC.url)", "grant": "client_credentials", "clientId": "c-client", "clientSecretFile": "client-secret", "store": "c.json"}}
                """
            let start = try #require(text.range(of: "\"identities\":"))
            text = String(text[..<start.lowerBound]) + "\"identities\": \(identities),\n  \"routes\": \(routes),\n  \"retry\"" + String(text[text.range(of: "\"retry\"", range: start.upperBound..<text.endIndex)!.upperBound...])
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            await harness.application.reloader.reload()

            #expect(Set(harness.server.routes.map(\.name)) == ["default", "c", "a2"], "\(harness.logs.text.suffix(2000))")
            #expect(harness.application.identities.names == ["default", "c"])
            let portC = try #require(harness.server.routePorts["c"])
            let viaC = RawHTTPClient(port: portC, host: "127.0.0.3")
            #expect(try await viaC.exchange("GET /z HTTP/1.1\r\nHost: 127.0.0.3\r\nConnection: close\r\n\r\n").hasPrefix("HTTP/1.1 200"))
            #expect(issuerC.callCount == 1)
            #expect(harness.received.last?.uri == "/c/z")
            #expect(try await harness.send(.GET, "/v2/q").status == 200)
            #expect(harness.received.last?.uri == "/two/q")
            #expect(try await harness.send(.GET, "/x").status == 200)
            #expect(harness.received.last?.uri == "/x")
            #expect(harness.issuer.callCount == callsA, "identity default did not change: it kept its token")
            // The removed listener no longer accepts, once the reload is done.
            let refused = (try? RawHTTPClient.connect(port: portB, host: "127.0.0.2")).map { close($0); return false } ?? true
            #expect(refused, "the listener of the removed route still accepts")

            // c's settings change (another scope): its token is dropped, the next request
            // refreshes it; default's still stands.
            let changed = try String(contentsOfFile: path, encoding: .utf8)
                .replacingOccurrences(of: #""store": "c.json""#, with: #""store": "c.json", "scope": "orders.read""#)
            try changed.write(toFile: path, atomically: true, encoding: .utf8)
            await harness.application.reloader.reload()
            #expect(try await viaC.exchange("GET /z HTTP/1.1\r\nHost: 127.0.0.3\r\nConnection: close\r\n\r\n").hasPrefix("HTTP/1.1 200"))
            #expect(issuerC.callCount == 2)
            #expect(issuerC.calls.last?.form["scope"] == "orders.read")
            #expect(harness.issuer.callCount == callsA)
            await issuerC.shutdown()
        }
        await pair.shutdown()
    }

    @Test func aReloadWhoseNewListenerCannotBeBoundChangesNothing() async throws {
        let pair = try await RoutesTests.Pair()
        try await withProxyHarness(pair.options()) { harness in
            pair.issuerA.withLockedValue { $0 = harness.issuer }
            #expect(try await harness.send(.GET, "/b/x").status == 200)
            let callsB = pair.issuerB.callCount
            // A port someone else holds.
            let taken = try await RawUpstream { _ in ("", true) }
            let issuerC = try await MockTokenIssuer.start()
            let path = harness.configuration.sourcePath
            let before = try String(contentsOfFile: path, encoding: .utf8)
            let text = before
                .replacingOccurrences(of: #"{"b": {"#, with: #"{"c": {"endpoint": "\#(issuerC.url)", "grant": "client_credentials", "clientId": "c", "clientSecretFile": "client-secret", "store": "c.json"}, "b": {"#)
                .replacingOccurrences(of: #"[{"name": "a","#, with: #"[{"name": "c", "listen": "127.0.0.1:\#(taken.port)", "upstream": {"url": "http://127.0.0.1:9"}, "identity": "c"}, {"name": "a","#)
                .replacingOccurrences(of: #""scope": "api.read""#, with: #""scope": "api.write""#)
            #expect(text != before)
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            await harness.application.reloader.reload()
            #expect(harness.logs.text.contains("reload could not be applied"), "\(harness.logs.text.suffix(1500))")
            #expect(harness.application.identities.names == ["default", "b"], "the identity the refused reload added is gone")
            #expect(Set(harness.server.routes.map(\.name)) == ["a", "b", "default"])
            // Nothing of it took: b keeps its token, default its scope.
            #expect(try await harness.send(.GET, "/b/x").status == 200)
            #expect(pair.issuerB.callCount == callsB)
            #expect(try await harness.send(.GET, "/a/x").status == 200)
            #expect(harness.issuer.calls.allSatisfy { $0.form["scope"] == "api.read" })
            #expect(issuerC.callCount == 0)
            await taken.shutdown()
            await issuerC.shutdown()
        }
        await pair.shutdown()
    }

    @Test func aRemovedListenersLongStreamIsClosedOnceDrainTimeoutHasPassed() async throws {
        let events = try await MockHTTPServer.start { _ in
            .streaming(headers: [("Content-Type", "text/event-stream")]) { writer in
                try? await writer.write("data: 1\n\n")
                try? await Task.sleep(for: .seconds(20))
            }
        }
        let routes = #"[{"name": "events", "listen": "127.0.0.2:0", "upstream": {"url": "http://127.0.0.1:\#(events.port)"}}]"#
        var options = ProxyHarness.Options()
        options.topLevel["drainTimeout"] = #""300ms""#
        options.topLevel["routes"] = routes
        try await withProxyHarness(options) { harness in
            let port = try #require(harness.server.routePorts["events"])
            let stream = try RawConnection(port: port, host: "127.0.0.2")
            try await stream.send("GET /events HTTP/1.1\r\nHost: 127.0.0.2\r\n\r\n")
            #expect(try await stream.receive(until: { String(decoding: $0, as: UTF8.self).contains("data: 1") }))
            let path = harness.configuration.sourcePath
            let text = try String(contentsOfFile: path, encoding: .utf8).replacingOccurrences(of: ",\n  \"routes\": \(routes)", with: "")
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            await harness.application.reloader.reload()
            #expect(harness.server.routes.map(\.name) == ["default"], "\(harness.logs.text.suffix(1500))")
            // Quiesced, the stream would stay open for as long as the upstream streams.
            #expect(try await stream.waitForClose(timeout: .seconds(5)), "the removed listener's stream is still open")
        }
        await events.shutdown()
    }

    @Test func processesSharingEachIdentitysStoreCallEachIssuerOncePerExpiry() async throws {
        let directory = try TemporaryDirectory()
        var behavior = MockTokenIssuer.Behavior()
        behavior.delay = .milliseconds(300)
        let (issuerA, issuerB) = (try await MockTokenIssuer.start(behavior: behavior), try await MockTokenIssuer.start(behavior: behavior))
        var fixture = ConfigFixture(endpoint: issuerA.url)
        fixture.topLevel["identities"] = """
            {"b": {"endpoint": "\(issuerB.url)", "grant": "client_credentials", "clientId": "b-client", "clientSecretFile": "client-secret", "store": "b.json"}}
            """
        let config = try fixture.write(to: directory)
        issuerA.grantRefreshToken("rt-initial")
        let past = Date() - 3600
        try TokenStore(path: directory.file("token.json")).write(TokenSet(accessToken: "at-expired", refreshToken: "rt-initial", expiresAt: past, obtainedAt: past - 1800))
        try TokenStore(path: directory.file("b.json")).write(TokenSet(accessToken: "at-expired-b", expiresAt: past, obtainedAt: past - 1800))

        let processes = (0..<10).map { index in
            TokenProxyProcess(["token", "--config", config, "--print"] + (index.isMultiple(of: 2) ? [] : ["--identity", "b"]))
        }
        for process in processes { try process.start() }
        var outcomes: [TokenProxyProcess.Outcome] = []
        for process in processes { outcomes.append(await process.wait()) }
        #expect(outcomes.allSatisfy { $0.status == 0 }, "\(outcomes.map(\.stderr))")
        #expect(issuerA.callCount == 1)
        #expect(issuerB.callCount == 1)
        let printed = outcomes.map { $0.stdout.trimmingCharacters(in: .whitespacesAndNewlines) }
        let a = Set(printed.enumerated().filter { $0.offset.isMultiple(of: 2) }.map(\.element))
        let b = Set(printed.enumerated().filter { !$0.offset.isMultiple(of: 2) }.map(\.element))
        #expect(a.count == 1 && b.count == 1 && a != b)
        #expect(a.first == (try TokenStore(path: directory.file("token.json")).read().tokens?.accessToken))
        #expect(b.first == (try TokenStore(path: directory.file("b.json")).read().tokens?.accessToken))
        #expect(issuerB.isValid(accessToken: b.first ?? "") && issuerA.isValid(accessToken: a.first ?? ""))
        await issuerA.shutdown()
        await issuerB.shutdown()
    }

    @Test func aSubjectIdentityLoopIsAConfigurationErrorNamingItsKey() async throws {
        let directory = try TemporaryDirectory()
        var fixture = ConfigFixture(endpoint: "http://127.0.0.1:9/token")
        fixture.topLevel["identities"] = """
            {"a": {"endpoint": "http://127.0.0.1:9/token", "grant": "token_exchange", "subjectIdentity": "b", "store": "a.json"},
             "b": {"endpoint": "http://127.0.0.1:9/token", "grant": "token_exchange", "subjectIdentity": "a", "store": "b.json"}}
            """
        fixture.topLevel["routes"] = #"[{"pathPrefix": "/a", "upstream": {"url": "http://127.0.0.1:9"}, "identity": "nobody"}]"#
        let config = try fixture.write(to: directory)
        let checked = try await TokenProxyProcess.run(["check-config", "--config", config])
        #expect(checked.status == 2)
        for key in ["identities.a.subjectIdentity", "identities.b.subjectIdentity", "routes[0].identity"] {
            #expect(checked.stderr.contains(key) || checked.stdout.contains(key), "\(key) not named: \(checked.stderr)")
        }
        let run = try await TokenProxyProcess.run(["run", "--config", config], timeout: .seconds(20))
        #expect(run.status == 2)
    }
}
