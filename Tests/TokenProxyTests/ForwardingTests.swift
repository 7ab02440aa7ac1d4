import Foundation
import Glibc
import NIOHTTP1
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// Forwarding rules, the proxy's own errors and the open-proxy guard (SPEC §5).
@Suite("Forwarding")
struct ForwardingTests {
    @Test func headersAreRewrittenAndTheTokenAttached() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        options.upstreamPrefix = "/v1"
        options.topLevel = ["allowedHosts": #"["app.local:8787", "localhost"]"#]
        let harness = try await ProxyHarness(options)
        let response = try await harness.send(.GET, "/items/7?q=a%20b&x=1", headers: [
            ("Authorization", "Bearer client-supplied"), ("Connection", "X-Drop-Me"), ("X-Drop-Me", "1"),
            ("Keep-Alive", "timeout=5"), ("Proxy-Authorization", "Basic eA=="), ("X-Forwarded-For", "10.9.8.7"),
            ("X-Custom", "kept"), ("Host", "app.local:8787"),
        ])
        #expect(response.status == 200)
        let seen = try #require(harness.received.first)
        #expect(seen.uri == "/v1/items/7?q=a%20b&x=1")
        #expect(seen.header("Authorization") == "Bearer at-live")
        #expect(seen.header("Host") == "127.0.0.1:\(harness.upstream.port)")
        #expect(seen.header("X-Forwarded-For") == "10.9.8.7, 127.0.0.1")
        #expect(seen.header("X-Forwarded-Proto") == "http")
        #expect(seen.header("X-Forwarded-Host") == "app.local:8787")
        #expect(seen.header("X-Custom") == "kept")
        for dropped in ["X-Drop-Me", "Keep-Alive", "Proxy-Authorization"] {
            #expect(seen.header(dropped) == nil, "\(dropped) is hop-by-hop")
        }
        #expect(harness.issuer.callCount == 0, "the stored token was used")
        await harness.shutdown()
    }

    @Test func redirectsAndResponseHeadersPassBackUnchanged() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        let harness = try await ProxyHarness(options) { _, _ in
            MockHTTPResponse(status: 302, headers: [("Location", "https://elsewhere.example/next"), ("Set-Cookie", "a=b"), ("Keep-Alive", "timeout=1"), ("X-Upstream", "yes")], body: "moved")
        }
        let response = try await harness.send(.GET, "/old")
        #expect(response.status == 302)
        #expect(response.headers.first(name: "Location") == "https://elsewhere.example/next")
        #expect(response.headers.first(name: "Set-Cookie") == "a=b")
        #expect(response.headers.first(name: "X-Upstream") == "yes")
        #expect(response.headers.first(name: "Keep-Alive") == nil)
        #expect(response.body == "moved")
        #expect(harness.received.count == 1, "the redirect was not followed")
        await harness.shutdown()
    }

    @Test("not an open proxy; ambiguous framing refused", arguments: [
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        "GET http://example.com/steal HTTP/1.1\r\nHost: example.com\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "GET /x HTTP/1.1\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: localhost\r\nX-Bad Header: 1\r\n\r\n",
    ])
    func refusedRequests(raw: String) async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        let harness = try await ProxyHarness(options)
        let answer = try await RawHTTPClient(port: harness.port).exchange(raw)
        #expect(answer.hasPrefix("HTTP/1.1 400"), "\(answer)")
        #expect(answer.lowercased().contains("x-tokenproxy-error: bad_request"), "\(answer)")
        #expect(answer.contains(#""error":"bad_request""#))
        #expect(harness.received.isEmpty, "nothing reached the upstream")
        await harness.shutdown()
    }

    @Test func absoluteFormNamingTheProxyItselfIsServed() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        let harness = try await ProxyHarness(options)
        let answer = try await RawHTTPClient(port: harness.port).exchange("GET http://127.0.0.1:\(harness.port)/ok HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)")
        #expect(harness.received.first?.uri == "/ok")
        await harness.shutdown()
    }

    @Test func pipelinedRequestsAreAnsweredInOrder() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        let harness = try await ProxyHarness(options) { request, _ in
            if request.uri == "/slow" { try? await Task.sleep(for: .milliseconds(200)) }
            return .json(200, "{\"uri\": \"\(request.uri)\"}")
        }
        let answer = try await RawHTTPClient(port: harness.port).exchange(
            "GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\nGET /fast HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        let slow = try #require(answer.range(of: #""uri": "/slow""#))
        let fast = try #require(answer.range(of: #""uri": "/fast""#))
        #expect(slow.lowerBound < fast.lowerBound)
        await harness.shutdown()
    }

    @Test func aClientThatDisconnectsMidBodyHarmsNothing() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        let harness = try await ProxyHarness(options)
        for _ in 0..<5 {
            // Announces 100,000 bytes, sends 10, and hangs up.
            let answer = try await RawHTTPClient(port: harness.port).exchange(
                "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n0123456789", timeout: .milliseconds(300))
            #expect(!answer.hasPrefix("HTTP/1.1 2"), "an incomplete upload is never answered as a success")
        }
        let next = try await harness.send(.GET, "/still-serving")
        #expect(next.status == 200)
        #expect(!harness.received.contains { $0.uri == "/upload" && $0.body.count == 100_000 }, "no truncated body passed as complete")
        await harness.shutdown()
    }

    @Test func aUnixSocketListenerServes() async throws {
        let socketDirectory = try TemporaryDirectory()
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        options.listen = "unix:\(socketDirectory.file("proxy.sock"))"
        let harness = try await ProxyHarness(options)
        let client = HTTPClientOverUnixSocket(path: socketDirectory.file("proxy.sock"))
        let answer = try await client.exchange("GET /via-unix HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)")
        #expect(harness.received.first?.header("Authorization") == "Bearer at-live")
        #expect(harness.received.first?.header("X-Forwarded-For") == "unix")
        await harness.shutdown()
    }

    @Test func aSilentUpstreamGets504() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        options.upstreamExtra = #", "readTimeout": "300ms""#
        let harness = try await ProxyHarness(options) { _, _ in
            try? await Task.sleep(for: .seconds(5))
            return .json(200, "{}")
        }
        let started = ContinuousClock.now
        let response = try await harness.send(.GET, "/slow")
        #expect(response.status == 504)
        #expect(response.headers.first(name: "X-TokenProxy-Error") == "upstream_timeout")
        // At the read timeouts (300 ms per try), long before the upstream's answer at 5 s; the
        // margin covers a loaded 2-core CI run (2.08 s once, against a bound of 2 s).
        #expect(started.duration(to: .now) < .seconds(3.5))
        await harness.shutdown()
    }

    @Test func anUnreachableUpstreamGets502AfterTheRetries() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        // Port 9 (discard) is below the ephemeral range: no test server of a parallel test gets it.
        options.upstreamAddress = "http://127.0.0.1:9"
        let harness = try await ProxyHarness(options)
        let response = try await harness.send(.POST, "/orders", body: "{}")
        #expect(response.status == 502)
        #expect(response.headers.first(name: "X-TokenProxy-Error") == "upstream_unavailable")
        #expect(response.body.contains("after 3 attempts"), "a request that never reached the upstream is retried whatever its method: \(response.body)")
        await harness.shutdown()
    }

    @Test func noTokenAndAFailingEndpointIsAnsweredAtOnceWith503() async throws {
        let harness = try await ProxyHarness()
        // A failing endpoint that is also slow: a request that waited on it would take 4 s.
        harness.issuer.update {
            $0.failEvery = 1
            $0.delay = .seconds(4)
        }
        _ = try await harness.send(.GET, "/warm-up")
        let calls = harness.issuer.callCount
        let started = ContinuousClock.now
        let response = try await harness.send(.GET, "/x")
        #expect(response.status == 503)
        #expect(response.headers.first(name: "X-TokenProxy-Error") == "token_unavailable")
        #expect(Int(response.headers.first(name: "Retry-After") ?? "") ?? 0 >= 1)
        #expect(harness.issuer.callCount == calls, "answered from the backoff, without a call to the dead endpoint")
        #expect(started.duration(to: .now) < .seconds(3), "without waiting on the endpoint")
        #expect(harness.received.isEmpty)
        await harness.shutdown()
    }

    @Test func aRefusedRefreshTokenIsAnswered401UntilANewOneIsHandedOver() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = TokenSet(refreshToken: "rt-revoked")
        options.grantInitialRefreshToken = false
        let harness = try await ProxyHarness(options)
        let refused = try await harness.send(.GET, "/x")
        #expect(refused.status == 401)
        #expect(refused.headers.first(name: "X-TokenProxy-Error") == "reauthentication_required")
        #expect(refused.body.contains("invalid_grant"))
        #expect(harness.received.isEmpty)
        _ = try await harness.send(.GET, "/x")
        #expect(harness.issuer.callCount == 1, "a refused refresh token is not tried again")

        harness.issuer.grantRefreshToken("rt-after-login")
        try TokenStore(path: harness.directory.file("token.json")).write(TokenSet(refreshToken: "rt-after-login"))
        let healed = try await harness.send(.GET, "/x")
        #expect(healed.status == 200, "a new refresh token in the store is picked up without a restart")
        await harness.shutdown()
    }
}

/// The raw client, over a unix-domain socket.
struct HTTPClientOverUnixSocket {
    let path: String

    func exchange(_ request: String) async throws -> String {
        let path = self.path
        return try await onOwnThread {
            let socket = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(socket) }
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                for (index, byte) in path.utf8.enumerated() where index < raw.count - 1 { raw[index] = byte }
            }
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(socket, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard result == 0 else { throw POSIXError(.ECONNREFUSED) }
            _ = request.utf8CString.withUnsafeBufferPointer { send(socket, $0.baseAddress, $0.count - 1, 0) }
            var received: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = buffer.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, 0) }
                if count <= 0 { break }
                received += buffer[0..<count]
            }
            return String(decoding: received, as: UTF8.self)
        }
    }
}
