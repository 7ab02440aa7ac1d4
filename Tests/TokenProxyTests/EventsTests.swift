import Foundation
import Glibc
import NIOCore
import NIOHTTP1
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// `GET /events` (SPEC §7): each event type arrives, as a person's page or `curl -N` reads it,
/// with no token; a reader that does not keep up is dropped, not buffered.
@Suite("Live events", .serialized)
struct EventsTests {
    /// Waits until `condition` holds, at most `timeout`.
    static func waitUntil(_ timeout: Duration = .seconds(5), _ condition: () -> Bool) async -> Bool {
        let start = ContinuousClock.now
        while !condition() {
            if start.duration(to: .now) > timeout { return false }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return true
    }

    /// The `data:` objects of an event stream's text, by type.
    static func events(in text: String) -> [(type: String, fields: [String: JSONValue])] {
        text.components(separatedBy: "\n\n").compactMap { block in
            guard let data = block.split(separator: "\n").first(where: { $0.hasPrefix("data: ") }),
                case .object(let fields)? = try? JSONValue.parse(Data(data.dropFirst(6).utf8)), case .string(let type)? = fields["type"]
            else { return nil }
            return (type, fields)
        }
    }

    @Test func everyEventTypeArrivesNamingItsIdentityOrRouteAndNoToken() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        options.token = { $0.minRefreshInterval = "0s" }
        let harness = try await ProxyHarness(options) { request, count in
            // The first attempt of the first request is refused; its replay succeeds.
            count == 1 ? EventsTests.refused : .json(200, #"{"ok": true}"#)
        }
        let admin = try await harness.startAdmin()
        let adminPort = try #require(admin.port)
        let hub = harness.application.statistics.events
        let types = ["faults", "refresh", "recovered_401", "adopted", "refresh_failed", "login_needed"]
        let stream = Task {
            try await RawHTTPClient(port: adminPort).stream(
                "GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n",
                until: { text in types.allSatisfy { text.contains("event: \($0)\n") } }, timeout: .seconds(20))
        }
        #expect(await Self.waitUntil { hub.subscriberCount == 1 })

        let faults = try await harness.admin(.PUT, "/faults", port: adminPort, body: #"{"enabled": false, "upstream401Percent": 5}"#)
        #expect(faults.status == 200)
        let refresh = try await harness.admin(.POST, "/token/refresh", port: adminPort)
        #expect(refresh.status == 200, "\(refresh.body)")
        let recovered = try await harness.send(.GET, "/x")
        #expect(recovered.status == 200)
        // Another process stores a newer token: the store watch adopts it.
        try TokenStore(path: harness.configuration.token.store).write(
            TokenSet(accessToken: "at-from-elsewhere", refreshToken: "rt-elsewhere", expiresAt: Date() + 3600, obtainedAt: Date()))
        #expect(await Self.waitUntil { harness.application.broker.publisher.latest()?.accessToken == "at-from-elsewhere" })
        // The refresh token is refused for good: a failed refresh, and a login needed.
        harness.issuer.revokeRefreshTokens()
        let refused = try await harness.admin(.POST, "/token/refresh", port: adminPort)
        #expect(refused.status == 401, "\(refused.body)")

        let text = try await stream.value.map(\.text).joined()
        let events = Self.events(in: text)
        for type in types { #expect(events.contains { $0.type == type }, "no \(type) event in:\n\(text)") }
        for event in events {
            #expect(event.fields["time"] != nil)
            if event.type == "recovered_401" {
                #expect(event.fields["route"] == .string("default"))
            } else if event.type != "faults" {
                #expect(event.fields["identity"] == .string("default"), "\(event.fields)")
            }
        }
        #expect(events.first { $0.type == "faults" }?.fields["upstream401Percent"] == .number(5))
        #expect(events.first { $0.type == "refresh" }?.fields["trigger"] == .string("forced"))
        #expect(events.first { $0.type == "adopted" }?.fields["trigger"] == .string("store"))
        for secret in harness.secrets + ["at-from-elsewhere", "rt-elsewhere"] { #expect(!text.contains(secret), "a token in /events") }

        // /status shows the same: the state, the refreshes with their reasons, the route's recovery.
        let status = try await harness.admin(.GET, "/status", port: adminPort)
        guard case .object(let fields) = try JSONValue.parse(Data(status.body.utf8)), case .object(let identities)? = fields["identities"],
            case .object(let identity)? = identities["default"], case .object(let routes)? = fields["routes"], case .object(let route)? = routes["default"]
        else {
            Issue.record("unexpected /status: \(status.body)")
            return
        }
        #expect(identity["state"] == .string("login_needed"))
        if case .array(let refreshes)? = identity["refreshes"], case .object(let newest)? = refreshes.first {
            #expect(newest["result"] == .string("refused"))
            #expect(newest["trigger"] == .string("forced"))
        } else {
            Issue.record("no refreshes: \(identity)")
        }
        #expect(route["recovered401"] == .number(1))
        if case .object(let latency)? = route["latencyMs"], case .number(let p50)? = latency["p50"], case .number(let p99)? = latency["p99"] {
            #expect(p50 > 0 && p50 <= p99)
        } else {
            Issue.record("no latency: \(route)")
        }
        #expect(fields["time"] != nil)
        // And /metrics, for alerts: a login is needed (the access token held may still last).
        let metrics = try await harness.admin(.GET, "/metrics", port: adminPort).body
        #expect(metrics.contains(#"tokenproxy_token_reauthentication_required{identity="default"} 1"#), "\(metrics)")
        await admin.stop()
        await harness.shutdown()
    }

    @Test func aReaderThatDoesNotKeepUpIsDroppedNotBuffered() async throws {
        let harness = try await ProxyHarness(ProxyHarness.Options())
        let admin = try await harness.startAdmin()
        let adminPort = try #require(admin.port)
        let hub = harness.application.statistics.events
        // A reader with a tiny receive window that never reads.
        let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(socket) }
        var small: Int32 = 4096
        setsockopt(socket, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(adminPort).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        #expect(connected == 0)
        let request = "GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        _ = request.withCString { send(socket, $0, strlen($0), 0) }
        #expect(await Self.waitUntil { hub.subscriberCount == 1 })

        let before = Self.residentBytes()
        let padding = String(repeating: "x", count: 4000)
        // 32 MB of events: buffered, they would show in the resident size.
        // Stops once the reader is dropped: the burst shares the event loops with other suites.
        for number in 0..<8000 where hub.subscriberCount > 0 {
            hub.publish(.faults, ["n": .number(Double(number)), "padding": .string(padding)])
            if number % 100 == 0 { try await Task.sleep(for: .milliseconds(2)) }
        }
        #expect(await Self.waitUntil(.seconds(10)) { hub.subscriberCount == 0 }, "the slow reader was not dropped")
        let grown = Self.residentBytes() - before
        print("/events slow reader: dropped; resident size grew by \(grown / 1024) KiB while 32 MB of events were published")
        #expect(grown < 16 * 1024 * 1024, "the backlog was buffered: \(grown) bytes")
        await admin.stop()
        await harness.shutdown()
    }

    @Test func aForeignOriginGetsNoEventsAndThePageHasItsPolicy() async throws {
        let harness = try await ProxyHarness(ProxyHarness.Options())
        let admin = try await harness.startAdmin()
        let adminPort = try #require(admin.port)
        let foreign = try await RawHTTPClient(port: adminPort).exchange(
            "GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n")
        #expect(foreign.hasPrefix("HTTP/1.1 403"), "\(foreign)")
        #expect(foreign.lowercased().contains("x-tokenproxy-error: forbidden_request"))
        #expect(harness.application.statistics.events.subscriberCount == 0)

        let page = try await harness.admin(.GET, "/", port: adminPort, headers: [("Accept", "text/html,application/xhtml+xml")])
        #expect(page.status == 200)
        #expect(page.headers.first(name: "Content-Security-Policy") == "default-src 'self'")
        #expect(page.headers.first(name: "Content-Type")?.hasPrefix("text/html") == true)
        #expect(page.body.lowercased().contains("<!doctype html"))
        let script = try await harness.admin(.GET, "/ui/app.js", port: adminPort)
        #expect(script.headers.first(name: "Content-Type")?.hasPrefix("text/javascript") == true)
        let api = try await harness.admin(.GET, "/", port: adminPort, headers: [("Accept", "application/json")])
        #expect(api.body.contains("/events"), "a script asking for / is told where the API is: \(api.body)")
        await admin.stop()
        await harness.shutdown()
    }

    @Test func withoutATokenMetricsSayNoTimeLeftAndALoginNeeded() async throws {
        var options = ProxyHarness.Options()
        options.grantInitialRefreshToken = false
        let harness = try await ProxyHarness(options)
        let admin = try await harness.startAdmin()
        let adminPort = try #require(admin.port)
        let ready = try await harness.admin(.GET, "/readyz", port: adminPort)
        #expect(ready.status == 503, "the refresh token is refused: \(ready.body)")
        let metrics = try await harness.admin(.GET, "/metrics", port: adminPort).body
        #expect(metrics.contains(#"tokenproxy_token_expires_in_seconds{identity="default"} 0"#), "\(metrics)")
        #expect(metrics.contains(#"tokenproxy_token_reauthentication_required{identity="default"} 1"#))
        await admin.stop()
        await harness.shutdown()
    }

    static let refused = MockHTTPResponse(status: 401, headers: [("WWW-Authenticate", #"Bearer error="invalid_token""#)], body: "expired")

    /// This process's resident set size.
    static func residentBytes() -> Int {
        guard let statm = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let pages = statm.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}

/// The event hub itself: recent events for a new subscriber, nothing kept per subscriber.
@Suite("Event hub")
struct EventHubTests {
    @Test func aNewSubscriberGetsTheRecentEventsThenTheNewOnes() {
        let hub = EventHub()
        for number in 0..<25 { hub.publish(.faults, ["n": .number(Double(number))]) }
        let received = NIOLockedBox()
        let id = hub.subscribe { received.append($0) }
        #expect(received.count == EventHub.recentKept, "the last \(EventHub.recentKept) events first")
        #expect(received.all.first?.contains(#""n":5"#) == true)
        hub.publish(.refresh, ["identity": .string("a")])
        #expect(received.all.last?.hasPrefix("event: refresh\ndata: {") == true)
        #expect(received.all.last?.hasSuffix("}\n\n") == true)
        hub.unsubscribe(id)
        hub.publish(.refresh, ["identity": .string("b")])
        #expect(received.count == EventHub.recentKept + 1)
        #expect(hub.subscriberCount == 0)
    }

    final class NIOLockedBox: @unchecked Sendable {
        private let lock = NSLock()
        private var items: [String] = []
        func append(_ item: String) { lock.withLock { items.append(item) } }
        var all: [String] { lock.withLock { items } }
        var count: Int { all.count }
    }
}
