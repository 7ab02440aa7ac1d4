import Foundation
import Glibc
import NIOConcurrencyHelpers
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// Traces (SPEC §2.6), as a collector receives them: the real binary posts OTLP/HTTP to a small
/// receiver (`Fixtures/otlp_receiver.py`, decoding with opentelemetry-proto from PyPI), and the
/// upstream shows what `traceparent` it was sent.
@Suite("Traces", .serialized)
struct TracesTests {
    static let receiverScript = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/otlp_receiver.py").path

    /// The receiver process and what it has received.
    struct Receiver {
        let process: TokenProxyProcess
        let port: Int

        /// `port` 0: any free one.
        static func start(port: Int = 0) async throws -> Receiver {
            let process = TokenProxyProcess(["python3", "-B", TracesTests.receiverScript, "\(port)"], program: "/usr/bin/env")
            try process.start()
            let deadline = ContinuousClock.now.advanced(by: .seconds(20))
            while ContinuousClock.now < deadline {
                if let line = process.stdoutSoFar.split(separator: "\n").first(where: { $0.hasPrefix("port ") }), let port = Int(line.dropFirst(5)) {
                    return Receiver(process: process, port: port)
                }
                if !process.stderrSoFar.isEmpty, process.stderrSoFar.contains("Error") { break }
                try await Task.sleep(for: .milliseconds(20))
            }
            let stderr = process.stderrSoFar
            process.signal(SIGKILL)
            _ = await process.wait(timeout: .seconds(5))
            throw ReceiverError(message: "the OTLP receiver did not start (pip install opentelemetry-proto): \(stderr)")
        }

        var endpoint: String { "http://127.0.0.1:\(port)" }

        /// Every span received so far.
        func spans() async throws -> [Span] {
            let answer = try await RawHTTPClient(port: port).exchange("GET /spans HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            let body = answer.range(of: "\r\n\r\n").map { String(answer[$0.upperBound...]) } ?? "[]"
            return try JSONDecoder().decode([Span].self, from: Data(body.utf8))
        }

        /// The request bodies as received, bytes made text.
        func raw() async throws -> String {
            try await RawHTTPClient(port: port).exchange("GET /raw HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        }

        /// Waits until `done` holds for the spans received, at most `timeout`.
        func waitForSpans(timeout: Duration = .seconds(15), until done: ([Span]) -> Bool) async throws -> [Span] {
            let deadline = ContinuousClock.now.advanced(by: timeout)
            var spans = try await spans()
            while !done(spans), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
                spans = try await self.spans()
            }
            return spans
        }

        func stop() async {
            process.signal(SIGTERM)
            _ = await process.wait(timeout: .seconds(5))
        }
    }

    struct ReceiverError: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }

    /// A span as the receiver tells it.
    struct Span: Decodable {
        var traceId: String
        var spanId: String
        var parentSpanId: String
        var traceState: String
        var name: String
        /// OTLP's SpanKind: 2 server, 3 client.
        var kind: Int
        var attributes: [String: JSONValue]
        var links: [Link]
        var status: Status
        var resource: [String: JSONValue]

        struct Link: Decodable {
            var traceId: String
            var spanId: String
        }

        struct Status: Decodable {
            /// 0 unset, 1 ok, 2 error.
            var code: Int
        }

        func string(_ key: String) -> String? {
            if case .string(let text)? = attributes[key] { return text }
            return nil
        }

        func number(_ key: String) -> Double? {
            if case .number(let value)? = attributes[key] { return value }
            return nil
        }

        func bool(_ key: String) -> Bool? {
            if case .bool(let value)? = attributes[key] { return value }
            return nil
        }
    }

    /// A running proxy (``RunningProxy``) whose API records the trace headers it gets, with
    /// `telemetry` and `environment`.
    @dynamicMemberLookup
    struct Setup {
        let proxy: RunningProxy
        let seen: NIOLockedValueBox<[(traceparent: String?, tracestate: String?)]>

        subscript<T>(dynamicMember keyPath: KeyPath<RunningProxy, T>) -> T { proxy[keyPath: keyPath] }

        static func start(telemetry: String?, environment: [String: String] = [:]) async throws -> Setup {
            let seen = NIOLockedValueBox<[(traceparent: String?, tracestate: String?)]>([])
            var options = RunningProxy.Options()
            options.onRequest = { request in seen.withLockedValue { $0.append((request.header("traceparent"), request.header("tracestate"))) } }
            options.configure = { fixture in
                if let telemetry { fixture.topLevel["telemetry"] = telemetry }
            }
            // Spans are exported every 100 ms instead of every 5 s.
            options.environment = ["OTEL_BSP_SCHEDULE_DELAY": "100"].merging(environment) { $1 }
            return Setup(proxy: try await RunningProxy.start(options), seen: seen)
        }

        /// Sends a GET with `headers`; returns the status (0: no answer).
        func get(_ path: String, headers: [String] = []) async throws -> Int {
            await proxy.request(path, headers: headers.map { $0 + "\r\n" }.joined(), timeout: .seconds(20)) ?? 0
        }

        /// Stops the proxy (which flushes its spans); returns its stderr.
        func stop() async -> String { await proxy.stop() }
    }

    static let clientTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
    static let clientSpan = "00f067aa0ba902b7"

    @Test("a request replayed after a 401: server span continued from the client, a client span per attempt whose traceparent went upstream, a refresh span it links to, trace ids in its log line, and no secret anywhere")
    func spansOfAReplayedRequest() async throws {
        let receiver = try await Receiver.start()
        defer { Task { await receiver.stop() } }
        let setup = try await Setup.start(telemetry: #"{"otlp": {"endpoint": "\#(receiver.endpoint)", "sampleRatio": 1.0, "serviceName": "tokenproxy-under-test"}}"#)
        // The first token comes at startup; revoked, the next request gets a 401 and is replayed.
        #expect(try await setup.get("/warm-up") == 200)
        setup.issuer.revokeAccessTokens()
        let status = try await setup.get("/orders/7?api_key=hunter2&x=1", headers: [
            "traceparent: 00-\(Self.clientTrace)-\(Self.clientSpan)-01", "tracestate: vendor=opaque",
        ])
        #expect(status == 200)
        let stderr = await setup.stop()

        let spans = try await receiver.waitForSpans { spans in spans.contains { $0.traceId == Self.clientTrace && $0.kind == 2 } }
        let server = try #require(spans.first { $0.traceId == Self.clientTrace && $0.kind == 2 }, "no server span of the client's trace in \(spans.map(\.name))")
        #expect(server.parentSpanId == Self.clientSpan)
        #expect(server.traceState == "vendor=opaque")
        #expect(server.string("http.request.method") == "GET")
        #expect(server.string("url.path") == "/orders/7")
        #expect(server.number("http.response.status_code") == 200)
        #expect(server.string("tokenproxy.route") == "default")
        #expect(server.number("tokenproxy.attempts") == 2)
        #expect(server.bool("tokenproxy.replayed") == true)
        #expect(server.resource["service.name"] == .string("tokenproxy-under-test"))

        // A client span per upstream attempt, children of the server span.
        let attempts = spans.filter { $0.traceId == Self.clientTrace && $0.kind == 3 }.sorted { ($0.number("tokenproxy.attempt") ?? 0) < ($1.number("tokenproxy.attempt") ?? 0) }
        try #require(attempts.count == 2, "attempt spans: \(attempts.map(\.name))")
        #expect(attempts.allSatisfy { $0.parentSpanId == server.spanId })
        #expect(attempts[0].number("http.response.status_code") == 401)
        #expect(attempts[1].number("http.response.status_code") == 200)
        #expect(attempts[0].string("server.address") == "127.0.0.1")
        // The upstream was sent each attempt's own span, in the client's trace, with its tracestate.
        let sent = setup.seen.withLockedValue { $0 }.suffix(2)
        #expect(sent.map(\.traceparent) == attempts.map { "00-\(Self.clientTrace)-\($0.spanId)-01" })
        #expect(sent.allSatisfy { $0.tracestate == "vendor=opaque" })

        // The refresh the replay waited for: a span of its own, linked from the request.
        let refresh = try #require(spans.first { $0.name == "token refresh" && $0.string("tokenproxy.refresh.reason") == "401" }, "refresh spans: \(spans.filter { $0.name == "token refresh" }.map(\.attributes))")
        #expect(refresh.string("tokenproxy.identity") == "default")
        #expect(refresh.string("tokenproxy.refresh.result") == "refreshed")
        #expect(refresh.string("server.address") == "127.0.0.1")
        #expect(server.links.contains { $0.traceId == refresh.traceId && $0.spanId == refresh.spanId })
        // The startup refresh has its span too.
        #expect(spans.contains { $0.name == "token refresh" && $0.string("tokenproxy.refresh.reason") == "expiry" })

        // The request's log line names its trace and server span; the refresh's lines name theirs.
        let requestLine = try #require(stderr.split(separator: "\n").first { $0.contains(#""message":"request""#) && $0.contains("/orders/7") })
        #expect(requestLine.contains(#""trace_id":"\#(Self.clientTrace)""#))
        #expect(requestLine.contains(#""span_id":"\#(server.spanId)""#))
        #expect(stderr.split(separator: "\n").contains { $0.contains(#""message":"token refreshed""#) && $0.contains(#""trace_id":"\#(refresh.traceId)""#) })

        // No token, refresh token, client secret or query string in any span.
        let raw = try await receiver.raw()
        #expect(!raw.isEmpty)
        for secret in ["hunter2", "api_key", "rt-initial", ConfigFixture.clientSecret, "Bearer"] {
            #expect(!raw.contains(secret), "\(secret) was sent to the collector")
        }
        for call in setup.issuer.calls {
            for value in call.form.values where value.count > 8 { #expect(!raw.contains(value), "a token endpoint value was sent to the collector") }
        }
        for span in spans {
            for case .string(let value) in span.attributes.values { #expect(!value.contains("?"), "\(span.name): \(value)") }
        }
    }

    @Test("without telemetry nothing is sent, the client's traceparent passes through unchanged, and log lines carry no trace ids")
    func offByDefault() async throws {
        // Where swift-otel posts by default, were tracing on (when that port is free here).
        let receiver: Receiver
        if let onDefaultPort = try? await Receiver.start(port: 4318) { receiver = onDefaultPort } else { receiver = try await Receiver.start() }
        defer { Task { await receiver.stop() } }
        let setup = try await Setup.start(telemetry: nil)
        let traceparent = "00-\(Self.clientTrace)-\(Self.clientSpan)-01"
        #expect(try await setup.get("/orders", headers: ["traceparent: \(traceparent)", "tracestate: vendor=opaque"]) == 200)
        let stderr = await setup.stop()
        #expect(setup.seen.withLockedValue { $0.last?.traceparent } == traceparent)
        #expect(setup.seen.withLockedValue { $0.last?.tracestate } == "vendor=opaque")
        #expect(!stderr.contains("trace_id"))
        #expect(try await receiver.spans().isEmpty)
    }

    @Test("OTEL_SDK_DISABLED=true turns configured traces off")
    func sdkDisabled() async throws {
        let receiver = try await Receiver.start()
        defer { Task { await receiver.stop() } }
        let setup = try await Setup.start(
            telemetry: #"{"otlp": {"endpoint": "\#(receiver.endpoint)"}}"#, environment: ["OTEL_SDK_DISABLED": "true"])
        #expect(try await setup.get("/orders") == 200)
        _ = await setup.stop()
        try await Task.sleep(for: .milliseconds(300))
        #expect(try await receiver.spans().isEmpty)
    }

    @Test("the standard OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_SERVICE_NAME turn traces on when the key is absent")
    func standardVariables() async throws {
        let receiver = try await Receiver.start()
        defer { Task { await receiver.stop() } }
        let setup = try await Setup.start(
            telemetry: nil, environment: ["OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_SERVICE_NAME": "from-the-environment"])
        #expect(try await setup.get("/orders") == 200)
        let sent = setup.seen.withLockedValue { $0.last?.traceparent }
        _ = await setup.stop()
        let spans = try await receiver.waitForSpans { spans in spans.contains { $0.kind == 2 } }
        let server = try #require(spans.first { $0.kind == 2 })
        #expect(server.resource["service.name"] == .string("from-the-environment"))
        // A trace the proxy started: the upstream was sent its client span.
        let attempt = try #require(spans.first { $0.kind == 3 && $0.traceId == server.traceId })
        #expect(sent == "00-\(server.traceId)-\(attempt.spanId)-01")
    }
}
