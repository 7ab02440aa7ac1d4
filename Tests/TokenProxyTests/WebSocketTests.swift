import Foundation
import Testing

@testable import TokenProxy

/// WebSocket passthrough (SPEC §5): the upgrade goes upstream with the token, a 401 on it is
/// recovered by refresh and replay, after the `101` bytes pass both ways until a side closes or
/// `limits.idleTimeout` passes.
@Suite("WebSocket tunnels")
struct WebSocketTests {
    private static func options(token: String, upstream: WebSocketEchoServer, topLevel: [String: String] = [:]) -> ProxyHarness.Options {
        var options = ProxyHarness.Options()
        options.initialToken = .valid(token)
        options.upstreamAddress = upstream.url
        options.topLevel = topLevel
        return options
    }

    private static func head(_ bytes: [UInt8]) -> String? {
        let text = String(decoding: bytes, as: UTF8.self)
        return text.range(of: "\r\n\r\n").map { String(text[..<$0.lowerBound]) }
    }

    @Test func messagesPassBothWaysAndTheUpstreamSeesTheToken() async throws {
        let upstream = try await WebSocketEchoServer { $0 == "at-live" }
        try await withProxyHarness(Self.options(token: "at-live", upstream: upstream)) { harness in
            let connection = try RawConnection(port: harness.port)
            // A frame sent right behind the upgrade request, before the 101: delivered after it.
            try await connection.send(Array(WebSocketWire.upgradeRequest().utf8) + WebSocketWire.clientText("early"))
            let early = try await connection.receive(until: { WebSocketWire.serverTexts(Array($0.split(separator: Array("\r\n\r\n".utf8)).last ?? [])).contains("echo: early") })
            let head = try #require(Self.head(connection.received))
            #expect(head.hasPrefix("HTTP/1.1 101"), "\(head)")
            #expect(head.contains("Sec-WebSocket-Accept: \(WebSocketWire.expectedAccept)"), "\(head)")
            #expect(head.lowercased().contains("upgrade: websocket"))
            #expect(early, "the early frame came back")

            try await connection.send(WebSocketWire.clientText("hello"))
            let echoed = try await connection.receive(until: { String(decoding: $0, as: UTF8.self).contains("echo: hello") })
            #expect(echoed)
            #expect(upstream.authorizations == ["Bearer at-live"])
            #expect(upstream.upgrades == 1)
        }
        await upstream.shutdown()
    }

    @Test func aRejectedUpgradeIsRefreshedAndReplayed() async throws {
        let upstream = try await WebSocketEchoServer { $0 != "at-stale" }
        try await withProxyHarness(Self.options(token: "at-stale", upstream: upstream)) { harness in
            let connection = try RawConnection(port: harness.port)
            try await connection.send(WebSocketWire.upgradeRequest())
            try await connection.receive(until: { Self.head($0) != nil })
            let head = try #require(Self.head(connection.received))
            #expect(head.hasPrefix("HTTP/1.1 101"), "the client sees only the second answer: \(head)")
            try await connection.send(WebSocketWire.clientText("after replay"))
            #expect(try await connection.receive(until: { String(decoding: $0, as: UTF8.self).contains("echo: after replay") }))
            let authorizations = upstream.authorizations
            #expect(authorizations.count == 2)
            #expect(authorizations.first == "Bearer at-stale")
            #expect(authorizations.last != "Bearer at-stale")
            #expect(harness.issuer.calls.count == 1, "one refresh")
        }
        await upstream.shutdown()
    }

    @Test func anIdleTunnelIsClosedBothWays() async throws {
        let upstream = try await WebSocketEchoServer { _ in true }
        try await withProxyHarness(Self.options(token: "at-live", upstream: upstream, topLevel: ["limits": #"{"idleTimeout": "1s"}"#])) { harness in
            let connection = try RawConnection(port: harness.port)
            try await connection.send(WebSocketWire.upgradeRequest())
            // Before the last message: the idle time counts from when the echo passed the proxy,
            // which a loaded machine may report to this test well after it happened.
            let started = ContinuousClock.now
            try await connection.send(WebSocketWire.clientText("one"))
            #expect(try await connection.receive(until: { String(decoding: $0, as: UTF8.self).contains("echo: one") }))
            // Loose bound: the full suite can starve the event loops; without the timer the
            // tunnel would stay open until the test's own timeout.
            #expect(try await connection.waitForClose(timeout: .seconds(15)), "the proxy closed the idle tunnel")
            #expect(started.duration(to: .now) >= .milliseconds(900), "not before the idle timeout")
            for _ in 0..<50 where upstream.closedTunnels == 0 { try await Task.sleep(for: .milliseconds(100)) }
            #expect(upstream.closedTunnels == 1, "and the upstream side of it")
        }
        await upstream.shutdown()
    }

    @Test func bytesAfterAnUnansweredUpgradeAreHeldByNotReading() async throws {
        // An upstream that never answers: nothing the client sends may pile up in the proxy.
        let upstream = try await RawUpstream { _ in ("", false) }
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        options.upstreamAddress = upstream.url
        let harness = try await ProxyHarness(options)
        let connection = try RawConnection(port: harness.port)
        try await connection.send(WebSocketWire.upgradeRequest())
        let sent = try await connection.sendFiller(for: .seconds(2), limit: 256 << 20)
        // The kernel's socket buffers take a few MiB on loopback; the proxy holds at most one read.
        #expect(sent < 24 << 20, "the proxy stopped reading: \(sent >> 20) MiB taken")
        #expect(upstream.received.count == 1)
        await harness.shutdown()
        await upstream.shutdown()
    }
}
