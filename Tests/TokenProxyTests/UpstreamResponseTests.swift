import Foundation
import NIOCore
import Testing

@testable import TokenProxy

/// The upstream side of the data path reads responses itself and forwards their bytes (SPEC §5):
/// framing, hop-by-hop headers, and upstreams that break HTTP.
@Suite("Upstream responses")
struct UpstreamResponseTests {
    /// Feeds `text` to a parser in pieces of `step` bytes and returns the parts.
    private static func parse(_ text: String, step: Int, toHEAD: Bool = false) throws -> [UpstreamResponseParser.Part] {
        var parser = UpstreamResponseParser()
        parser.expectResponse(toHEAD: toHEAD)
        var parts = CircularBuffer<UpstreamResponseParser.Part>()
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let end = min(offset + step, bytes.count)
            try parser.feed(ByteBuffer(bytes: bytes[offset..<end]), into: &parts)
            offset = end
        }
        return Array(parts)
    }

    private static func summary(_ parts: [UpstreamResponseParser.Part]) -> (head: UpstreamResponseHead?, body: String, ends: [Bool]) {
        let (head, body, _, ends) = summaryWithTrailers(parts)
        return (head, body, ends)
    }

    private static func summaryWithTrailers(_ parts: [UpstreamResponseParser.Part]) -> (head: UpstreamResponseHead?, body: String, trailers: String?, ends: [Bool]) {
        var head: UpstreamResponseHead?
        var body = ""
        var trailers: String?
        var ends: [Bool] = []
        for part in parts {
            switch part {
            case .head(let value): head = value
            case .body(let buffer): body += String(buffer: buffer)
            case .trailers(let lines): trailers = String(buffer: lines)
            case .end(let reusable): ends.append(reusable)
            }
        }
        return (head, body, trailers, ends)
    }

    @Test("trailers come before the end, checked and without framing fields", arguments: [1, 3, 4096])
    func trailersArePassedOn(step: Int) throws {
        let response = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + "2\r\nhi\r\n0\r\ngrpc-status: 0\r\nContent-Length: 9\r\ngrpc-message: fine\r\n\r\n"
        let (_, body, trailers, ends) = Self.summaryWithTrailers(try Self.parse(response, step: step))
        #expect(body == "hi")
        #expect(trailers == "grpc-status: 0\r\ngrpc-message: fine\r\n")
        #expect(ends == [true])
        for bad in ["x-a\u{0}: 1", "x-a: 1\u{1}", ": 1", "no colon"] {
            let malformed = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\(bad)\r\n\r\n"
            #expect(throws: UpstreamResponseError.self, "\(bad)") { try Self.parse(malformed, step: 4096) }
        }
    }

    @Test("a chunked response parses the same however it is split", arguments: [1, 2, 7, 64, 4096])
    func chunkedResponseInAnySplit(step: Int) throws {
        let response = "HTTP/1.1 200 OK\r\nServer: test\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\nX-Kept: yes\r\n\r\n"
            + "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        let (head, body, ends) = Self.summary(try Self.parse(response, step: step))
        let forwarded = String(buffer: try #require(head).forwardedBytes)
        #expect(forwarded == "HTTP/1.1 200 OK\r\nServer: test\r\nX-Kept: yes\r\n", "hop-by-hop, Connection-named and framing headers are the proxy's to write")
        #expect(head?.body == .chunked)
        #expect(body == "hello world")
        #expect(ends == [true])
    }

    @Test func interimResponsesAreSkippedAndBareLineFeedsAccepted() throws {
        let response = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\nContent-Length: 2\nLocation: /x\n\nok"
        let (head, body, ends) = Self.summary(try Self.parse(response, step: 3))
        #expect(head?.status == 201)
        #expect(String(buffer: try #require(head).forwardedBytes) == "HTTP/1.1 201 Created\r\nLocation: /x\r\n")
        #expect(head?.contentLength == 2)
        #expect(body == "ok")
        #expect(ends == [true])
    }

    @Test func aResponseToHEADHasNoBodyWhateverItsLength() throws {
        let (head, body, ends) = Self.summary(try Self.parse("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", step: 100, toHEAD: true))
        #expect(head?.body == UpstreamResponseHead.Body.none)
        #expect(head?.contentLength == 1000)
        #expect(body.isEmpty)
        #expect(ends == [true])
    }

    @Test func connectionCloseAndHTTP10AreNotReused() throws {
        #expect(Self.summary(try Self.parse("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", step: 9)).ends == [false])
        #expect(Self.summary(try Self.parse("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", step: 9)).ends == [false])
        #expect(Self.summary(try Self.parse("HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n", step: 9)).ends == [true])
    }

    @Test("responses that could desynchronise the connection are errors", arguments: [
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nBad Name: 1\r\nContent-Length: 0\r\n\r\n",
        "ICY 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        // Found by fuzzing: a status line's reason phrase went to the client unchecked.
        "HTTP/1.1 200 O\u{0}K\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 O\rK\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.x 200 OK\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-Big: " + String(repeating: "a", count: 70_000) + "\r\n\r\n",
        // RFC 9112 §6.1: both framings at once is a smuggling attempt, whatever the order.
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a\u{0}b\r\nhello\r\n0\r\n\r\n",
    ])
    func malformedResponses(response: String) {
        #expect(throws: UpstreamResponseError.self) { try Self.parse(response, step: 1000) }
    }

    @Test func bytesWithoutARequestAreAnError() {
        var parser = UpstreamResponseParser()
        var parts = CircularBuffer<UpstreamResponseParser.Part>()
        #expect(throws: UpstreamResponseError.self) { try parser.feed(ByteBuffer(string: "HTTP/1.1 200 OK\r\n\r\n"), into: &parts) }
    }

    // MARK: Through the proxy, with an upstream that writes raw bytes

    /// Every exchange below ends with the connection closing; the long limit only matters when
    /// the shared event loops are starved by the rest of the suite on a 2-core machine.
    private static let closeTimeout = Duration.seconds(30)

    /// A proxy with a valid token in front of a `RawUpstream` (its answers written `pace` apart,
    /// byte by byte, when given); `configure` sets more options.
    static func harness(
        pace: TimeAmount? = nil, configure: (inout ProxyHarness.Options) -> Void = { _ in }, _ answer: @escaping RawUpstream.Answer
    ) async throws -> (ProxyHarness, RawUpstream) {
        let upstream = try await RawUpstream(pace: pace, answer: answer)
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-live")
        options.upstreamAddress = upstream.url
        configure(&options)
        return (try await ProxyHarness(options), upstream)
    }

    @Test func aBodyDelimitedByCloseReachesHTTP11ClientsChunkedAndHTTP10ClientsUntilClose() async throws {
        let (harness, upstream) = try await Self.harness { _ in ("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", true) }
        let modern = try await RawHTTPClient(port: harness.port).exchange("GET /a HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", timeout: Self.closeTimeout)
        #expect(modern.hasPrefix("HTTP/1.1 200 OK\r\n"), "\(modern)")
        #expect(modern.lowercased().contains("transfer-encoding: chunked"), "\(modern)")
        #expect(modern.hasSuffix("d\r\nuntil the end\r\n0\r\n\r\n"), "\(modern)")

        let legacy = try await RawHTTPClient(port: harness.port).exchange("GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", timeout: Self.closeTimeout)
        #expect(legacy.lowercased().contains("connection: close"), "\(legacy)")
        #expect(!legacy.lowercased().contains("transfer-encoding"), "\(legacy)")
        #expect(legacy.hasSuffix("\r\n\r\nuntil the end"), "\(legacy)")
        #expect(upstream.received.count == 2)
        await harness.shutdown()
        await upstream.shutdown()
    }

    @Test func aHEADAnswerKeepsItsLengthAndTheConnectionStaysInStep() async throws {
        let (harness, upstream) = try await Self.harness { head in
            head.hasPrefix("HEAD") ? ("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", false) : ("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody", false)
        }
        let answer = try await RawHTTPClient(port: harness.port).exchange(
            "HEAD /h HTTP/1.1\r\nHost: localhost\r\n\r\nGET /g HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", timeout: Self.closeTimeout)
        #expect(answer.hasPrefix("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody"), "\(answer)")
        #expect(upstream.received.count == 2)
        await harness.shutdown()
        await upstream.shutdown()
    }

    @Test func anHTTP10ClientKeepsItsConnectionOnlyWhenItAskedAndTheLengthIsKnown() async throws {
        let (harness, upstream) = try await Self.harness { _ in ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false) }
        let answer = try await RawHTTPClient(port: harness.port).exchange("GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n", timeout: Self.closeTimeout)
        #expect(answer == "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"
            + "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", "\(answer)")
        #expect(upstream.received.count == 2)
        await harness.shutdown()
        await upstream.shutdown()
    }

    @Test func keepAliveUpstreamConnectionsAreReused() async throws {
        let (harness, upstream) = try await Self.harness { _ in ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok", false) }
        for _ in 0..<5 {
            let response = try await harness.send(.GET, "/x")
            #expect(response.status == 200)
            #expect(response.body == "ok")
        }
        let post = try await harness.send(.POST, "/y", body: "{}")
        #expect(post.status == 200)
        #expect(upstream.received.count == 6)
        #expect(upstream.connections == 1, "one keep-alive connection carried every request")
        await harness.shutdown()
        await upstream.shutdown()
    }

    @Test func anAnswerWithBothContentLengthAndChunkedIsA502AndTheConnectionIsNotReused() async throws {
        let (harness, upstream) = try await Self.harness { _ in
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", false)
        }
        let response = try await harness.send(.GET, "/x")
        #expect(response.status == 502)
        #expect(response.headers.first(name: "X-TokenProxy-Error") == "upstream_unavailable")
        #expect(response.body.contains("both Content-Length and Transfer-Encoding"), "\(response.body)")
        #expect(upstream.connections == upstream.received.count, "each try on a connection of its own: \(upstream.connections)")
        await harness.shutdown()
        await upstream.shutdown()
    }

    /// nginx's proxy_read_timeout counts between reads; a response head that trickles in a byte
    /// at a time must still be whole within upstream.readTimeout, or the request is held forever.
    @Test func aResponseHeadTrickledSlowerThanTheReadTimeoutGets504() async throws {
        let (harness, upstream) = try await Self.harness(pace: .milliseconds(200), configure: { $0.upstreamExtra = #", "readTimeout": "1s""# }) { _ in
            ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false)
        }
        let response = try await harness.send(.GET, "/slow")
        // The head alone takes 8 s to trickle in; the answer is the proxy's own 504.
        #expect(response.status == 504, "\(response.body)")
        #expect(response.headers.first(name: "X-TokenProxy-Error") == "upstream_timeout")
        await harness.shutdown()
        await upstream.shutdown()
    }

    @Test func anUpstreamThatBreaksHTTPGets502() async throws {
        let (harness, upstream) = try await Self.harness { _ in ("SSH-2.0-OpenSSH_9.2\r\n\r\n", false) }
        let response = try await harness.send(.GET, "/x")
        #expect(response.status == 502)
        #expect(response.headers.first(name: "X-TokenProxy-Error") == "upstream_unavailable")
        #expect(response.body.contains("HTTP/1.x status line"), "\(response.body)")
        #expect(upstream.received.count == 3, "a GET is retried: retry.attempts")
        await harness.shutdown()
        await upstream.shutdown()
    }
}
