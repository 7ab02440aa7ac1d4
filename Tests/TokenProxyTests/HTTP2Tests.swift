import Foundation
import Glibc
import NIOCore
import NIOHPACK
import NIOHTTP2
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// HTTP/2 clients on the listen port (SPEC §5): real clients (`h2` from PyPI through
/// `Fixtures/h2_probe.py`, grpcio, and curl) against the proxy and an HTTP/1.1 API. In the
/// peers' own pass (``PeerPass``), one test at a time.
@Suite(
    "HTTP/2", .serialized,
    .enabled("in the peers' pass (TOKENPROXY_PEER_TESTS=1), with Python's h2 and grpcio and curl", { PeerPass.enabled("HTTP2Tests", missing: PeerPass.http2Missing) }))
struct HTTP2Tests {
    // MARK: Real clients

    static let probeScript = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/h2_probe.py").path

    /// What `h2_probe.py` saw.
    struct Outcome: Decodable {
        struct Stream: Decodable {
            var status: Int?
            var headers: [String: String]
            var body: String
            var trailers: [String: String]
            var reset: Int?
            var ended: Bool
        }
        struct GoAway: Decodable {
            var error: Int
        }
        var streams: [Stream]
        var goaway: GoAway?
        var closed: Bool
        var settings: [String: Int]
        var sent: Int?
        var seconds: Double?
    }

    /// Runs the probe to its end.
    static func probe(_ arguments: [String]) async throws -> Outcome {
        let process = TokenProxyProcess(["python3", "-B", probeScript] + arguments, program: "/usr/bin/env")
        try process.start()
        let outcome = await process.wait(timeout: .seconds(60))
        guard let line = outcome.stdout.split(separator: "\n").last, let decoded = try? JSONDecoder().decode(Outcome.self, from: Data(line.utf8)) else {
            throw ProbeError(message: "h2_probe.py \(arguments.joined(separator: " ")) gave no result (pip install h2): \(outcome.stdout) \(outcome.stderr)")
        }
        return decoded
    }

    struct ProbeError: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }

    @Test func anHTTP2ClientReachesAnHTTP1UpstreamWithTheToken() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-1")
        try await withProxyHarness(options, respond: { request, _ in .json(200, #"{"path": "\#(request.uri)", "got": \#(request.body.count)}"#) }) { harness in
            let outcome = try await Self.probe(["requests", "\(harness.port)", "--path", "/v1/items?page=2", "--header", "x-request-id:h2-req-1"])
            let stream = try #require(outcome.streams.first)
            #expect(stream.status == 200)
            #expect(stream.body == #"{"path": "/v1/items?page=2", "got": 0}"#)
            #expect(stream.headers["content-type"] == "application/json")
            #expect(stream.headers["connection"] == nil && stream.headers["transfer-encoding"] == nil)
            #expect(outcome.settings["3"] == 100, "SETTINGS_MAX_CONCURRENT_STREAMS announced")
            let seen = try #require(harness.received.first)
            #expect(seen.header("Authorization") == "Bearer at-1")
            #expect(seen.header("Host") == "127.0.0.1:\(harness.upstream.port)")
            #expect(seen.header("X-Request-Id") == "h2-req-1")

            // A body of unknown length goes upstream chunked and arrives whole.
            let post = try await Self.probe(["requests", "\(harness.port)", "--method", "POST", "--path", "/orders", "--body", #"{"item": "tea"}"#])
            #expect(post.streams.first?.status == 200)
            #expect(post.streams.first?.body.contains(#""got": 15"#) == true)
            #expect(harness.received.last?.bodyText == #"{"item": "tea"}"#)
        }
    }

    /// The upstream's trailers reach both kinds of client: an HTTP/2 client as the last HEADERS
    /// frame, an HTTP/1.1 client in the last chunk.
    @Test func upstreamTrailersReachTheClient() async throws {
        let upstream = try await RawUpstream { _ in
            ("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: abc\r\nContent-Length: 1\r\n\r\n", false)
        }
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-1")
        options.upstreamAddress = upstream.url
        try await withProxyHarness(options) { harness in
            let outcome = try await Self.probe(["requests", "\(harness.port)", "--path", "/t"])
            let stream = try #require(outcome.streams.first)
            #expect(stream.status == 200 && stream.body == "hello" && stream.ended)
            #expect(stream.trailers == ["x-checksum": "abc"], "framing fields never travel as trailers")
            let answer = try await RawHTTPClient(port: harness.port).exchange("GET /t HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            #expect(answer.hasSuffix("5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n"), "\(answer)")
        }
        await upstream.shutdown()
    }

    @Test func aHundredStreamsOnOneConnectionAreEachAnswered() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-1")
        try await withProxyHarness(options, respond: { request, count in
            try? await Task.sleep(for: .milliseconds(50))
            return .json(200, #"{"n": \#(count)}"#)
        }) { harness in
            let outcome = try await Self.probe(["requests", "\(harness.port)", "--count", "100", "--path", "/many"])
            #expect(outcome.streams.count == 100)
            #expect(outcome.streams.allSatisfy { $0.status == 200 && $0.ended }, "\(outcome.streams.filter { $0.status != 200 }.prefix(3))")
            #expect(harness.received.count == 100)
            #expect(harness.issuer.callCount == 0)
        }
    }

    @Test func a401OverHTTP2IsRefreshedAndReplayed() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-stale")
        try await withProxyHarness(options, respond: { request, count in
            count == 1 ? ReplayAndRetryTests.invalidToken : .json(200, #"{"got": "\#(request.bodyText)"}"#)
        }) { harness in
            let outcome = try await Self.probe(["requests", "\(harness.port)", "--method", "POST", "--path", "/orders", "--body", "coffee"])
            #expect(outcome.streams.first?.status == 200)
            #expect(outcome.streams.first?.body == #"{"got": "coffee"}"#)
            let seen = harness.received
            #expect(seen.count == 2)
            #expect(seen.map(\.bodyText) == ["coffee", "coffee"])
            #expect(seen[0].header("Authorization") == "Bearer at-stale")
            #expect(seen[1].header("Authorization") != "Bearer at-stale")
            #expect(harness.issuer.callCount == 1)
        }
    }

    @Test("a stream the rules refuse gets its answer and the upstream gets nothing", arguments: [
        (["--path", "/a/../admin"], 400),
        (["--method", "TRACE"], 405),
        (["--header", ":authority:evil.example"], 400),
        (["--header", "host:evil.example"], 400),
        (["--header", "te:gzip"], 400),
        (["--method", "CONNECT", "--path", ""], 400),
    ])
    func refusedStreams(_ arguments: [String], status: Int) async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-1")
        try await withProxyHarness(options) { harness in
            let outcome = try await Self.probe(["requests", "\(harness.port)"] + arguments)
            let stream = try #require(outcome.streams.first)
            // swift-nio-http2's own checks reset a stream whose head is malformed; the rules answer the rest.
            #expect(stream.status == status || stream.reset != nil, "\(arguments): \(stream)")
            if stream.status != nil { #expect(stream.headers["x-tokenproxy-error"] != nil) }
            #expect(harness.received.isEmpty, "\(arguments): the upstream got \(harness.received.map(\.uri))")
            // The connection serves other streams on.
            #expect(outcome.goaway == nil)
        }
    }

    @Test func aGRPCCallToAnHTTP1UpstreamGetsStatus14() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-1")
        try await withProxyHarness(options) { harness in
            let outcome = try await Self.probe([
                "requests", "\(harness.port)", "--method", "POST", "--path", "/pkg.Service/Call", "--header", "content-type:application/grpc",
                "--header", "te:trailers", "--body", "\u{0}\u{0}\u{0}\u{0}\u{0}",
            ])
            let stream = try #require(outcome.streams.first)
            #expect(stream.status == 200)
            #expect(stream.headers["grpc-status"] == "14", "\(stream)")
            #expect(stream.headers["grpc-message"]?.contains("HTTP/2 upstream") == true)
            #expect(stream.headers["x-tokenproxy-error"] == "upstream_unavailable")
            #expect(harness.received.isEmpty)
        }
    }

    /// A real gRPC client (grpcio): the call never reaches the HTTP/1.1 upstream, and the client
    /// reads UNAVAILABLE with the reason and the proxy's error code.
    @Test func grpcioSeesUnavailableWithTheReasonForAnHTTP1Upstream() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-1")
        try await withProxyHarness(options) { harness in
            let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/grpc_probe.py").path
            let process = TokenProxyProcess(["python3", "-B", script, "\(harness.port)", "/echo.Echo/Say"], program: "/usr/bin/env")
            try process.start()
            let outcome = await process.wait(timeout: .seconds(60))
            struct Call: Decodable {
                var code: Int
                var details: String
                var trailing: [String: String]
            }
            let line = try #require(outcome.stdout.split(separator: "\n").last, "grpc_probe.py gave nothing (pip install grpcio): \(outcome.stderr)")
            let call = try JSONDecoder().decode(Call.self, from: Data(line.utf8))
            #expect(call.code == 14, "UNAVAILABLE: \(line)")
            #expect(call.details.contains("HTTP/2 upstream"), "\(call.details)")
            #expect(call.trailing["x-tokenproxy-error"] == "upstream_unavailable")
            #expect(harness.received.isEmpty)
        }
    }

    @Test func rapidResetGetsEnhanceYourCalmAndTheNextClientIsServed() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-1")
        options.topLevel["limits"] = #"{"maxResetsPerSecond": 50}"#
        try await withProxyHarness(options) { harness in
            let outcome = try await Self.probe(["rapid-reset", "\(harness.port)", "--count", "500"])
            #expect(outcome.goaway?.error == 0xB, "GOAWAY(ENHANCE_YOUR_CALM): \(outcome)")
            #expect(outcome.closed)
            let next = try await Self.probe(["requests", "\(harness.port)"])
            #expect(next.streams.first?.status == 200)
        }
    }

    @Test func streamsBeyondTheLimitGetEnhanceYourCalm() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-1")
        options.topLevel["limits"] = #"{"maxConcurrentStreams": 10}"#
        try await withProxyHarness(options, respond: { _, _ in
            try? await Task.sleep(for: .milliseconds(500))
            return .json(200, "{}")
        }) { harness in
            let outcome = try await Self.probe(["too-many", "\(harness.port)", "--count", "30"])
            #expect(outcome.settings["3"] == 10)
            #expect(outcome.goaway?.error == 0xB, "GOAWAY(ENHANCE_YOUR_CALM): \(outcome)")
            #expect(outcome.closed)
            #expect(harness.received.count <= 10, "streams beyond the limit never reach the upstream")
            let next = try await Self.probe(["requests", "\(harness.port)"])
            #expect(next.streams.first?.status == 200)
        }
    }

    @Test func anOversizedHeaderListIsRefusedAndNeverForwarded() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-1")
        options.topLevel["limits"] = #"{"maxHeaderBytes": 8192}"#
        try await withProxyHarness(options) { harness in
            let outcome = try await Self.probe(["big-header", "\(harness.port)", "--bytes", "20000"])
            #expect(outcome.streams.first?.status == nil)
            #expect(outcome.goaway != nil || outcome.streams.first?.reset != nil, "\(outcome)")
            #expect(outcome.settings["6"] == 8192, "SETTINGS_MAX_HEADER_LIST_SIZE announced")
            #expect(harness.received.isEmpty)
            let next = try await Self.probe(["requests", "\(harness.port)"])
            #expect(next.streams.first?.status == 200)
        }
    }

    @Test func aConnectionThatOpensNoStreamIsClosedAtTheHeaderTimeout() async throws {
        var options = ProxyHarness.Options()
        options.topLevel["limits"] = #"{"headerTimeout": "300ms", "idleTimeout": "60s"}"#
        try await withProxyHarness(options) { harness in
            let outcome = try await Self.probe(["idle", "\(harness.port)", "--timeout", "30"])
            #expect(outcome.closed)
            // Loose: the idle timeout (60 s) would end it much later.
            #expect((outcome.seconds ?? 99) < 10, "closed after \(outcome.seconds ?? -1) s")
        }
    }

    @Test func aPingFloodGetsEnhanceYourCalm() async throws {
        try await withProxyHarness { harness in
            let outcome = try await Self.probe(["ping-flood", "\(harness.port)", "--count", "2000"])
            #expect(outcome.goaway?.error == 0xB, "GOAWAY(ENHANCE_YOUR_CALM): \(outcome)")
            #expect(outcome.closed)
        }
    }

    @Test func curlWithPriorKnowledge() async throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/curl") else {
            Issue.record("curl is not installed (.ci/run installs it)")
            return
        }
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-1")
        try await withProxyHarness(options) { harness in
            let curl = TokenProxyProcess(["-sS", "--http2-prior-knowledge", "-w", "\n%{http_version} %{http_code}", "\(harness.url)/hello"], program: "/usr/bin/curl")
            try curl.start()
            let outcome = await curl.wait(timeout: .seconds(30))
            #expect(outcome.stdout == "{\"ok\": true}\n2 200", "\(outcome.stderr)")
            #expect(harness.received.first?.header("Authorization") == "Bearer at-1")
        }
    }

    @Test func anHTTP1ClientIsServedAsBefore() async throws {
        var options = ProxyHarness.Options()
        options.initialToken = .valid("at-1")
        try await withProxyHarness(options) { harness in
            // POST, PUT and PRI-like starts are told from the preface byte by byte.
            let answer = try await RawHTTPClient(port: harness.port).exchange(
                "POST /p HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
            #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)")
            #expect(harness.received.first?.bodyText == "hi")
        }
    }

    @Test func sigtermSendsGoAwayAndStreamsInFlightFinish() async throws {
        var options = RunningProxy.Options()
        options.onRequest = { request in
            if request.uri == "/slow" { try? await Task.sleep(for: .milliseconds(1500)) }
        }
        let proxy = try await RunningProxy.start(options)
        let probe = TokenProxyProcess(["python3", "-B", Self.probeScript, "hold", "\(proxy.port)", "--count", "5", "--path", "/slow"], program: "/usr/bin/env")
        try probe.start()
        let deadline = ContinuousClock.now.advanced(by: .seconds(20))
        while !probe.stdoutSoFar.contains("sent"), ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        try await Task.sleep(for: .milliseconds(400))
        proxy.process.signal(SIGTERM)
        let probed = await probe.wait(timeout: .seconds(30))
        let line = try #require(probed.stdout.split(separator: "\n").last, "\(probed.stderr)")
        let outcome = try JSONDecoder().decode(Outcome.self, from: Data(line.utf8))
        #expect(outcome.streams.count == 5)
        #expect(outcome.streams.allSatisfy { $0.status == 200 && $0.ended }, "\(line) \(proxy.process.stderrSoFar)")
        #expect(outcome.goaway?.error == 0, "GOAWAY(NO_ERROR): \(outcome)")
        let exit = await proxy.process.wait(timeout: .seconds(15))
        #expect(exit.status == 0, "\(exit.stderr)")
        await proxy.upstream.shutdown()
        await proxy.issuer.shutdown()
    }
}
