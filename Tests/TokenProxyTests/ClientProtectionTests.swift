import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// Who may use the proxy and what it refuses to forward (SPEC §2.2, §5, §7).
@Suite("Client protections")
struct ClientProtectionTests {
    static func configuration(_ topLevel: [String: String] = [:], listen: String = "127.0.0.1:8787") throws -> Configuration {
        var fixture = ConfigFixture(endpoint: "http://127.0.0.1:9/token")
        fixture.listen = listen
        fixture.topLevel = topLevel
        return try fixture.configuration(in: TemporaryDirectory())
    }

    /// What becomes of a request head, given as its request line and fields: the parser's
    /// refusal, the rules' refusal, or the request as prepared for the upstream.
    static func prepare(
        _ line: String, _ headers: [(String, String)], configuration: Configuration, faultsEnabled: Bool = false
    ) -> Result<ForwardingRules.PreparedRequest, ProxyError> {
        let rules = ForwardingRules(upstream: configuration.upstream.url, clientGuard: ClientGuard(configuration), limits: configuration.limits)
        var parser = ClientRequestParser(limits: rules.parserLimits)
        parser.append(ByteBuffer(string: line + "\r\n" + headers.map { "\($0.0): \($0.1)\r\n" }.joined() + "\r\n"))
        do throws(ProxyError) {
            guard case .head(let head) = try parser.next() else { return .failure(ProxyError(.badRequest, "the parser returned no head")) }
            return rules.prepare(head, clientAddress: "127.0.0.1", faultsEnabled: faultsEnabled)
        } catch {
            return .failure(error)
        }
    }

    struct GuardRow: Sendable, CustomStringConvertible {
        var description: String
        var topLevel: [String: String] = [:]
        var listen = "127.0.0.1:8787"
        var headers: [(String, String)]
        var allowed: Bool
    }

    static let guardRows: [GuardRow] = [
        GuardRow(description: "curl on the same host", headers: [("Host", "127.0.0.1:8787")], allowed: true),
        GuardRow(description: "localhost, any port", headers: [("Host", "localhost:9999")], allowed: true),
        GuardRow(description: "IPv6 loopback", headers: [("Host", "[::1]:8787")], allowed: true),
        GuardRow(description: "a rebinding name", headers: [("Host", "evil.example:8787")], allowed: false),
        GuardRow(description: "a look-alike loopback name", headers: [("Host", "127.0.0.1.evil.example")], allowed: false),
        GuardRow(description: "a unix socket takes any Host", listen: "unix:/tmp/tp.sock", headers: [("Host", "evil.example")], allowed: true),
        GuardRow(description: "a configured list replaces the default", topLevel: ["allowedHosts": #"["api.internal"]"#], headers: [("Host", "localhost")], allowed: false),
        GuardRow(description: "a configured name, any port", topLevel: ["allowedHosts": #"["api.internal"]"#], headers: [("Host", "API.internal:80")], allowed: true),
        GuardRow(description: "a configured host:port, another port", topLevel: ["allowedHosts": #"["api.internal:80"]"#], headers: [("Host", "api.internal:81")], allowed: false),
        GuardRow(description: "a cross-site page", headers: [("Host", "localhost"), ("Origin", "https://evil.example"), ("Sec-Fetch-Site", "cross-site")], allowed: false),
        GuardRow(description: "a page's Origin alone", headers: [("Host", "localhost"), ("Origin", "https://evil.example")], allowed: false),
        GuardRow(description: "Sec-Fetch-Site alone", headers: [("Host", "localhost"), ("Sec-Fetch-Site", "same-site")], allowed: false),
        GuardRow(description: "a typed-in address in a browser", headers: [("Host", "localhost"), ("Sec-Fetch-Site", "none")], allowed: true),
        GuardRow(description: "an allowed origin", topLevel: ["allowedOrigins": #"["https://app.example"]"#], headers: [("Host", "localhost"), ("Origin", "https://app.example"), ("Sec-Fetch-Site", "same-origin")], allowed: true),
        GuardRow(description: "browsers allowed", topLevel: ["browserRequests": #""allow""#], headers: [("Host", "localhost"), ("Origin", "https://evil.example"), ("Sec-Fetch-Site", "cross-site")], allowed: true),
        GuardRow(description: "required header missing", topLevel: ["requireHeader": #""X-TokenProxy-Request""#], headers: [("Host", "localhost")], allowed: false),
        GuardRow(description: "a Host in capitals", headers: [("Host", "LOCALHOST:8787")], allowed: true),
        GuardRow(description: "a listed name with more after it", headers: [("Host", "localhostx:8787")], allowed: false),
        GuardRow(description: "a configured name in capitals", topLevel: ["allowedHosts": #"["API.Internal"]"#], headers: [("Host", "api.internal")], allowed: true),
        GuardRow(description: "a configured host:port in capitals", topLevel: ["allowedHosts": #"["API.internal:80"]"#], headers: [("Host", "api.INTERNAL:80")], allowed: true),
        GuardRow(description: "required header present", topLevel: ["requireHeader": #""X-TokenProxy-Request""#], headers: [("Host", "localhost"), ("x-tokenproxy-request", "1")], allowed: true),
    ]

    @Test("the client guard", arguments: guardRows)
    func clientGuard(row: GuardRow) throws {
        let configuration = try Self.configuration(row.topLevel, listen: row.listen)
        let headers = HTTPHeaders(row.headers)
        let refusal = ClientGuard(configuration).refusal(
            host: headers.first(name: "Host"), origin: headers.first(name: "Origin"), fetchSite: headers.first(name: "Sec-Fetch-Site"),
            carries: { headers.contains(name: $0) }
        )
        #expect((refusal == nil) == row.allowed, "\(refusal?.message ?? "allowed")")
        if let refusal { #expect(refusal.code == .forbiddenRequest) }
    }

    /// The same rows as the forwarding rules see them: the `Host` compared in the bytes it came in.
    @Test("the client guard, through the forwarding rules", arguments: guardRows)
    func clientGuardThroughTheRules(row: GuardRow) throws {
        let configuration = try Self.configuration(row.topLevel, listen: row.listen)
        switch Self.prepare("GET /x HTTP/1.1", row.headers, configuration: configuration) {
        case .success:
            #expect(row.allowed)
        case .failure(let error):
            #expect(!row.allowed, "\(error.message)")
            #expect(error.code == .forbiddenRequest)
        }
    }

    @Test("what the parser and the forwarding rules refuse", arguments: [
        ("TRACE /x HTTP/1.1", [("Host", "localhost")], ProxyError.Code.methodNotAllowed),
        ("POST /a HTTP/1.1", [("Host", "localhost"), ("Transfer-Encoding", "identity")], .badRequest),
        ("POST /a HTTP/1.1", [("Host", "localhost"), ("Transfer-Encoding", "xchunked")], .badRequest),
        ("POST /a HTTP/1.1", [("Host", "localhost"), ("Transfer-Encoding", "chunked0")], .badRequest),
        ("POST /a HTTP/1.1", [("Host", "localhost"), ("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")], .badRequest),
        ("POST /a HTTP/1.1", [("Host", "localhost"), ("Transfer-Encoding", "gzip, chunked")], .badRequest),
        ("GET /a HTTP/1.1", [("Host", "localhost"), ("Host", "localhost")], .badRequest),
        ("GET /../admin HTTP/1.1", [("Host", "localhost")], .badRequest),
        ("GET /v1/../admin HTTP/1.1", [("Host", "localhost")], .badRequest),
        ("GET /./x HTTP/1.1", [("Host", "localhost")], .badRequest),
        ("GET /%2e%2e/admin HTTP/1.1", [("Host", "localhost")], .badRequest),
        ("GET /%2E/x HTTP/1.1", [("Host", "localhost")], .badRequest),
        ("GET /.%2e HTTP/1.1", [("Host", "localhost")], .badRequest),
        ("GET http://127.0.0.1@evil.example/x HTTP/1.1", [("Host", "localhost")], .badRequest),
        ("GET http://127.evil.example/x HTTP/1.1", [("Host", "localhost")], .badRequest),
        ("GET /a HTTP/1.1", [("Host", "localhost"), ("X-A", "a\u{0}b")], .badRequest),
        ("GET /a HTTP/1.1", [("Host", "localhost"), ("X-A", "a\rb")], .badRequest),
        ("GET /a HTTP/1.1", [("Host", "localhost"), ("X A", "b")], .badRequest),
        ("GET /" + String(repeating: "a", count: 9000) + " HTTP/1.1", [("Host", "localhost")], .uriTooLong),
        ("GET /a HTTP/1.1", [("Host", "localhost"), ("X-Big", String(repeating: "b", count: 70_000))], .requestHeaderTooLarge),
        ("GET /a HTTP/1.1", [("Host", "evil.example")], .forbiddenRequest),
    ])
    func refusals(line: String, headers: [(String, String)], expected: ProxyError.Code) throws {
        switch Self.prepare(line, headers, configuration: try Self.configuration()) {
        case .success: Issue.record("\(line.prefix(60)) was accepted")
        case .failure(let error): #expect(error.code == expected, "\(error.message)")
        }
    }

    @Test("what the forwarding rules accept", arguments: ["/a/b", "/a..b/c", "/.well-known/x", "/a/...", "/a?x=/../", "/%2e%2ex"])
    func acceptedPaths(path: String) throws {
        guard case .success = Self.prepare("GET \(path) HTTP/1.1", [("Host", "localhost")], configuration: try Self.configuration()) else {
            Issue.record("\(path) was refused")
            return
        }
    }

    @Test("the request line the upstream gets", arguments: [
        ("GET /a?b=1 HTTP/1.1", "GET /a?b=1 HTTP/1.1"),
        ("PATCH /items/7 HTTP/1.0", "PATCH /items/7 HTTP/1.1"),
        ("GET http://127.0.0.1:8787/ok?x HTTP/1.1", "GET /ok?x HTTP/1.1"),
        ("GET http://localhost:8787?x=1 HTTP/1.1", "GET /?x=1 HTTP/1.1"),
        ("OPTIONS http://LOCALHOST HTTP/1.1", "OPTIONS / HTTP/1.1"),
    ])
    func upstreamRequestLine(line: String, expected: String) throws {
        let prepared = try Self.prepare(line, [("Host", "localhost"), ("X-Forwarded-For", "10.0.0.1")], configuration: try Self.configuration()).get()
        let head = String(buffer: prepared.head)
        #expect(head.hasPrefix(expected + "\r\n"), "\(head)")
        #expect(head.contains("\r\nX-Forwarded-For: 10.0.0.1, 127.0.0.1\r\nX-Forwarded-Host: localhost\r\n"), "\(head)")
        #expect(head.hasSuffix("\r\n") && !head.hasSuffix("\r\n\r\n"), "the blank line comes after the token")
    }

    @Test func requestIDsAreForwardedOrGeneratedAndUnique() throws {
        let configuration = try Self.configuration()
        let prepared = try Self.prepare("GET / HTTP/1.1", [("Host", "localhost"), ("X-Request-Id", "client-7")], configuration: configuration).get()
        #expect(prepared.requestID.description == "client-7")
        #expect(String(buffer: prepared.head).components(separatedBy: "X-Request-Id").count == 2, "forwarded once")
        var seen: Set<String> = []
        for _ in 0..<1000 {
            let generated = try Self.prepare("GET / HTTP/1.1", [("Host", "localhost")], configuration: configuration).get()
            #expect(String(buffer: generated.head).contains("X-Request-Id: \(generated.requestID)\r\n"))
            seen.insert(generated.requestID.description)
        }
        #expect(seen.count == 1000)
    }

    // MARK: Through the proxy, on raw sockets

    @Test("a refused request sends no byte upstream, nor does anything after it", arguments: [
        "POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: identity\r\n\r\nhello",
        "POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "GET http://other.example/x HTTP/1.1\r\nHost: localhost\r\n\r\nGET /SMUGGLED HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "TRACE / HTTP/1.1\r\nHost: localhost\r\n\r\nGET /SMUGGLED HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: evil.example\r\n\r\nGET /SMUGGLED HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: localhost\r\nOrigin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\n\r\n",
        "GET /v1/../admin HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5, 6\r\n\r\nhello!",
        // The start of a TLS ClientHello (record type 22, TLS 1.0, then a handshake header).
        "\u{16}\u{03}\u{01}\u{00}\u{c8}\u{01}\u{00}\u{00}\u{c4}\u{03}\u{03}",
    ])
    func refusedRequestsStayHere(raw: String) async throws {
        let upstream = try await RawUpstream { _ in ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false) }
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        options.upstreamAddress = upstream.url
        let harness = try await ProxyHarness(options)
        let answer = try await RawHTTPClient(port: harness.port).exchange(raw, timeout: .seconds(5))
        #expect(answer.hasPrefix("HTTP/1.1 4"), "\(answer)")
        #expect(answer.contains("\"requestId\":"), "\(answer)")
        #expect(answer.components(separatedBy: "HTTP/1.1 ").count == 2, "one answer, then the connection closed: \(answer)")
        try await Task.sleep(for: .milliseconds(100))
        #expect(upstream.connections == 0, "the upstream received no byte")
        await harness.shutdown()
        await upstream.shutdown()
    }

    @Test("a chunk extension holding a NUL or a bare CR is refused", arguments: ["5;a\u{0}b\r\nhello\r\n0\r\n\r\n", "5;a\rb\r\nhello\r\n0\r\n\r\n"])
    func chunkExtensionsWithControlCharactersAreRefused(body: String) async throws {
        let (harness, upstream) = try await UpstreamResponseTests.harness { _ in ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false) }
        let answer = try await RawHTTPClient(port: harness.port).exchange(
            "POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n" + body, timeout: .seconds(20))
        #expect(answer.hasPrefix("HTTP/1.1 400"), "\(answer)")
        #expect(answer.contains("chunk extension"), "\(answer)")
        #expect(answer.contains("\"requestId\":"), "\(answer)")
        #expect(upstream.received.isEmpty, "nothing of it went upstream")
        await harness.shutdown()
        await upstream.shutdown()
    }

    @Test("a head refused by the parser is named by the client's own X-Request-Id", arguments: [
        "POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\nX-Request-Id: client-42\r\n\r\nhello!",
        "POST /a HTTP/1.1\r\nx-request-id: client-42\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello",
    ])
    func aRefusedHeadKeepsTheClientsRequestID(raw: String) async throws {
        try await withProxyHarness { harness in
            let answer = try await RawHTTPClient(port: harness.port).exchange(raw, timeout: .seconds(20))
            #expect(answer.hasPrefix("HTTP/1.1 400"), "\(answer)")
            #expect(answer.contains(#""requestId":"client-42""#), "\(answer)")
        }
    }

    @Test func aTLSHandshakeOnThePlainPortIsAnswered400AtOnce() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        options.topLevel = ["limits": #"{"headerTimeout": "60s"}"#]
        try await withProxyHarness(options) { harness in
            let started = ContinuousClock.now
            let answer = try await RawHTTPClient(port: harness.port).exchange("\u{16}\u{03}\u{01}\u{00}\u{c8}\u{01}\u{00}\u{00}\u{c4}\u{03}\u{03}", timeout: .seconds(50))
            #expect(answer.hasPrefix("HTTP/1.1 400"), "\(answer)")
            #expect(answer.contains("TLS handshake"), "\(answer)")
            #expect(started.duration(to: .now) < .seconds(30), "at once, not at the header timeout")
        }
    }

    @Test func aRequestReadWholeBeforeMalformedBytesGetsItsAnswer() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        let harness = try await ProxyHarness(options) { _, _ in .json(200, #"{"created": true}"#) }
        let answer = try await RawHTTPClient(port: harness.port).exchange(
            "POST /orders HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}GARBAGE \u{1}\r\n\r\n", timeout: .seconds(5))
        #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)")
        #expect(answer.contains(#"{"created": true}"#))
        #expect(answer.contains("HTTP/1.1 400"), "then the 400: \(answer)")
        #expect(harness.received.count == 1)
        await harness.shutdown()
    }

    @Test func anUpstreamHeaderWithABareCRIsA502() async throws {
        let upstream = try await RawUpstream { _ in ("HTTP/1.1 200 OK\r\nX-Split: a\rSet-Cookie: evil=1\r\nContent-Length: 2\r\n\r\nok", false) }
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        options.upstreamAddress = upstream.url
        let harness = try await ProxyHarness(options)
        let response = try await harness.send(.GET, "/x")
        #expect(response.status == 502)
        #expect(response.headers.first(name: "Set-Cookie") == nil)
        await harness.shutdown()
        await upstream.shutdown()
    }

    @Test("connections over the limit are closed without an answer, in the order they came", arguments: [2, 4])
    func connectionsOverTheLimitAreClosedWithoutAnAnswer(limit: Int) async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        options.topLevel = ["limits": #"{"maxConnections": \#(limit)}"#]
        let harness = try await ProxyHarness(options) { _, _ in .json(200, "{}") }
        // Opened back to back: the proxy's two event loops set them up in parallel, and the
        // limit must still count them in the order they were accepted.
        let held = try (0..<limit).map { _ in try RawHTTPClient.connect(port: harness.port) }
        let over = try await RawHTTPClient(port: harness.port).exchange("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", timeout: .seconds(5))
        #expect(over.isEmpty, "connection \(limit + 1) is closed without an answer: \(over)")
        for socket in held {
            #expect(RawHTTPClient.isOpen(socket), "the connections within the limit stay")
        }
        held.forEach { close($0) }
        // Once the proxy has seen those two close, a new connection is served again.
        // (Bounds generous: under a full suite beside the fleet soak, the machine is saturated.)
        let served = await TokenFailureTests.waitUntil(timeout: .seconds(30)) {
            (try? await RawHTTPClient(port: harness.port).exchange("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", timeout: .seconds(3)))?.hasPrefix("HTTP/1.1 200") == true
        }
        #expect(served)
        await harness.shutdown()
    }

    @Test func anUpgradeToAnotherProtocolIsDroppedAndWhatFollowsNeverRead() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        let harness = try await ProxyHarness(options) { _, _ in .json(200, #"{"plain": true}"#) }
        // Small enough to sit in the socket buffers: the proxy closes without reading it, and a
        // larger write would meet a closed socket (EPIPE) on the client side.
        let junk = String(repeating: "x", count: 100_000)
        let answer = try await RawHTTPClient(port: harness.port).exchange(
            "GET /h2 HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n" + junk,
            timeout: .seconds(20))
        #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer.prefix(200))")
        #expect(answer.lowercased().contains("connection: close"))
        let seen = try #require(harness.received.first)
        #expect(seen.header("Upgrade") == nil, "only WebSocket upgrades are passed on")
        #expect(seen.header("HTTP2-Settings") == nil, "named in Connection: a header of this hop")
        #expect(seen.header("Authorization") == "Bearer at-live")
        #expect(harness.received.count == 1)
        await harness.shutdown()
    }

    @Test func aPartialHeadPipelinedBehindARequestGetsItsHeaderTimeout() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        // A second: on a loaded machine the client thread may write well after it connected.
        options.topLevel = ["limits": #"{"headerTimeout": "1s", "idleTimeout": "60s"}"#]
        try await withProxyHarness(options, respond: { _, _ in .json(200, "{}") }) { harness in
            let started = ContinuousClock.now
            let answer = try await RawHTTPClient(port: harness.port).exchange(
                "GET /a HTTP/1.1\r\nHost: localhost\r\n\r\nGET /b HTTP/1.1\r\nHost: loc", timeout: .seconds(30))
            #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)")
            #expect(answer.contains("HTTP/1.1 408"), "the partial head behind it timed out: \(answer)")
            // Loose: the idle timeout (60 s) would end it much later.
            #expect(started.duration(to: .now) < .seconds(20))
            #expect(harness.received.count == 1)
        }
    }

    @Test func aSlowHeadGets408AndAnIdleConnectionIsClosed() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        // A second, not less: the header timeout counts from the accept, and on a loaded machine
        // this test's client thread may connect well before it gets to write its request.
        options.topLevel = ["limits": #"{"headerTimeout": "1s", "idleTimeout": "2s"}"#]
        let harness = try await ProxyHarness(options) { _, _ in .json(200, "{}") }
        let client = RawHTTPClient(port: harness.port)

        var started = ContinuousClock.now
        // Time bounds are loose: the full suite can starve the event loops for seconds. Without
        // the timer there would be no 408 at all, and the exchange would end at its own timeout.
        let slow = try await client.exchange("GET / HTTP/1.1\r\nHost: loc", timeout: .seconds(20))
        #expect(slow.hasPrefix("HTTP/1.1 408"), "\(slow)")
        #expect(slow.contains("request_timeout"))
        #expect(started.duration(to: .now) < .seconds(15), "closed after the header timeout, not the test's")

        started = ContinuousClock.now
        let silent = try await client.exchange("", timeout: .seconds(20))
        #expect(silent.hasPrefix("HTTP/1.1 408"), "a connection that sends nothing has no head by headerTimeout either: \(silent)")
        #expect(started.duration(to: .now) < .seconds(15))

        started = ContinuousClock.now
        let kept = try await client.exchange("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", timeout: .seconds(20))
        #expect(kept.hasPrefix("HTTP/1.1 200"))
        #expect(started.duration(to: .now) >= .milliseconds(1900), "a keep-alive connection stays open for the idle timeout")
        #expect(harness.received.count == 1)
        await harness.shutdown()
    }

    /// nginx's client_header_timeout: the header timeout counts from the connection's start, so
    /// connections that send no byte at all are not kept until the (much longer) idle timeout.
    @Test func connectionsThatSendNothingAreClosedAtTheHeaderTimeoutNotTheIdleTimeout() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        options.topLevel = ["limits": #"{"headerTimeout": "500ms", "idleTimeout": "120s"}"#]
        try await withProxyHarness(options, respond: { _, _ in .json(200, "{}") }) { harness in
            let started = ContinuousClock.now
            let answers = try await withThrowingTaskGroup(of: String.self) { group in
                for _ in 0..<20 {
                    group.addTask { try await RawHTTPClient(port: harness.port).exchange("", timeout: .seconds(60)) }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(answers.allSatisfy { $0.hasPrefix("HTTP/1.1 408") && $0.contains("request_timeout") }, "\(answers.first ?? "")")
            // Loose for a saturated machine; the idle timeout (120 s) is far beyond it.
            #expect(started.duration(to: .now) < .seconds(30))
            #expect(harness.received.isEmpty)
        }
    }

    @Test func runningOutOfFileDescriptorsDoesNotSpin() async throws {
        let directory = try TemporaryDirectory()
        let issuer = try await MockTokenIssuer.start()
        let upstream = try await MockHTTPServer.start { _ in .json(200, "{}") }
        var fixture = ConfigFixture(endpoint: issuer.url)
        fixture.grant = "client_credentials"
        fixture.upstream = upstream.baseURL
        let config = try fixture.write(to: directory)
        // The child inherits no descriptor but its standard streams; 128 leave it about 100 of its own.
        let limit = 128
        let process = TokenProxyProcess(["run", "--config", config], launcher: ["/usr/bin/prlimit", "--nofile=\(limit):\(limit)"])
        try process.start()
        let port = try #require(await process.listeningPort(), "\(process.stderrSoFar)")
        #expect(try await RawHTTPClient(port: port).exchange("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").hasPrefix("HTTP/1.1 200"))

        // Far more connections than descriptors: the accept loop hits EMFILE.
        var sockets: [Int32] = []
        for _ in 0..<250 { if let socket = try? RawHTTPClient.connect(port: port) { sockets.append(socket) } }
        let before = Self.cpuSeconds(of: process.pid)
        try await Task.sleep(for: .seconds(2))
        let spent = Self.cpuSeconds(of: process.pid) - before
        #expect(spent < 0.5, "CPU while out of descriptors: \(spent) s in 2 s")
        sockets.forEach { close($0) }
        let served = await TokenFailureTests.waitUntil(timeout: .seconds(10)) {
            (try? await RawHTTPClient(port: port).exchange("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"))?.hasPrefix("HTTP/1.1 200") == true
        }
        #expect(served, "serves again once descriptors are free")
        process.signal(SIGTERM)
        _ = await process.wait(timeout: .seconds(15))
        await upstream.shutdown()
        await issuer.shutdown()
    }

    /// User and system CPU time of a process, from /proc.
    static func cpuSeconds(of pid: pid_t) -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let end = stat.lastIndex(of: ")") else { return 0 }
        let fields = stat[stat.index(after: end)...].split(separator: " ")
        // After the command: state is field 3; utime and stime are fields 14 and 15.
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    // MARK: The admin listener

    @Test func theAdminListenerServesOnlyLoopbackNamesAndNoBrowser() async throws {
        let harness = try await ProxyHarness { _, _ in .json(200, "{}") }
        let admin = try await harness.startAdmin()
        let port = try #require(admin.port)
        let client = RawHTTPClient(port: port)
        func send(_ head: String) async throws -> String {
            try await client.exchange(head + "Connection: close\r\n\r\n", timeout: .seconds(5))
        }
        #expect(try await send("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\n").hasPrefix("HTTP/1.1 200"))
        #expect(try await send("GET /healthz HTTP/1.1\r\nHost: localhost\r\n").hasPrefix("HTTP/1.1 200"))
        #expect(try await send("GET /status HTTP/1.1\r\nHost: evil.example\r\n").hasPrefix("HTTP/1.1 403"))
        #expect(try await send("POST /token/refresh HTTP/1.1\r\nHost: localhost\r\nOrigin: https://evil.example\r\nContent-Length: 0\r\n").hasPrefix("HTTP/1.1 403"))
        #expect(try await send("POST /token/expire HTTP/1.1\r\nHost: localhost\r\nSec-Fetch-Site: cross-site\r\nContent-Length: 0\r\n").hasPrefix("HTTP/1.1 403"))
        let form = try await client.exchange(
            "PUT /faults HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 17\r\nConnection: close\r\n\r\n{\"enabled\": true}",
            timeout: .seconds(5))
        #expect(form.hasPrefix("HTTP/1.1 415"), "\(form)")
        #expect(harness.faults.enabled == false, "nothing was switched on")
        #expect(try await send("POST /token/refresh HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n").hasPrefix("HTTP/1.1 200"), "a bodyless POST is fine")
        await admin.stop()
        await harness.shutdown()
    }

    @Test func anAdminTokenFileGuardsChanges() async throws {
        let harness = try await ProxyHarness { _, _ in .json(200, "{}") }
        let tokenFile = try harness.directory.write("admin-token", "s3cret-admin\n")
        let routes = harness.application.adminRoutes(tokenFile: tokenFile)
        let admin = try await AdminServer.start(address: .tcp(host: "127.0.0.1", port: 0), routes: routes, group: MultiThreadedEventLoopGroup.singleton)
        let port = try #require(admin.port)
        let without = try await harness.admin(.PUT, "/faults", port: port, body: #"{"enabled": true}"#)
        #expect(without.status == 401)
        #expect(without.headers.first(name: "WWW-Authenticate")?.hasPrefix("Bearer") == true)
        let wrong = try await harness.admin(.PUT, "/faults", port: port, body: #"{"enabled": true}"#, headers: [("Authorization", "Bearer guess")])
        #expect(wrong.status == 401)
        #expect(harness.faults.enabled == false)
        let right = try await harness.admin(.PUT, "/faults", port: port, body: #"{"enabled": true}"#, headers: [("Authorization", "Bearer s3cret-admin")])
        #expect(right.status == 200)
        #expect(harness.faults.enabled)
        #expect(try await harness.admin(.GET, "/status", port: port).status == 200, "reading needs no token")
        await admin.stop()
        await harness.shutdown()
    }
}

/// How requests end when a side goes away (SPEC §5: every request is answered or the
/// connection closed; each ending is logged and counted).
@Suite("Request endings")
struct RequestEndingTests {
    @Test func aClientThatHalfClosesAfterItsRequestGetsTheAnswer() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        try await withProxyHarness(options, respond: { _, _ in .json(200, #"{"half": "closed"}"#) }) { harness in
            let answer = try await RawHTTPClient(port: harness.port).exchange(
                "GET /a HTTP/1.1\r\nHost: localhost\r\n\r\n", timeout: .seconds(10), halfClose: true)
            #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)")
            #expect(answer.contains(#"{"half": "closed"}"#))
            #expect(harness.received.count == 1)
        }
    }

    @Test func anAnswerCutShortByTheUpstreamIsLoggedAndCounted() async throws {
        let upstream = try await RawUpstream { _ in ("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", true) }
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        options.upstreamAddress = upstream.url
        try await withProxyHarness(options) { harness in
            let answer = try await RawHTTPClient(port: harness.port).exchange("GET /cut HTTP/1.1\r\nHost: localhost\r\n\r\n", timeout: .seconds(10))
            #expect(answer.hasPrefix("HTTP/1.1 200"), "the head was already on its way")
            #expect(answer.hasSuffix("partial"), "and the connection closed after what came")
            // The ending is logged as the connection closes; a saturated machine may take a moment.
            _ = await TokenFailureTests.waitUntil(timeout: .seconds(10)) { harness.logs.text.contains("request aborted") }
            #expect(harness.logs.text.contains("request aborted"), "\(harness.logs.text.suffix(500))")
            #expect(harness.logs.text.contains("upstream_closed"))
            #expect(harness.statistics.render().contains(#"tokenproxy_requests_aborted_total{reason="upstream_closed"} 1"#), "\(harness.statistics.render())")
        }
        await upstream.shutdown()
    }
}
