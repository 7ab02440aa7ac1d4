import Foundation
import Glibc
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// Upstreams that speak HTTP/2 (`upstream.protocol: http2`, SPEC §5), real ones started by the
/// tests: `Fixtures/h2_upstream.py` (the h2 library) and `Fixtures/grpc_upstream.py` (grpcio,
/// with an interceptor that refuses a stale token as UNAUTHENTICATED). Clients: HTTP/1.1,
/// `h2_probe.py` and grpcio. Part of ``HTTP2Tests``: in the peers' own pass, one test at a time.
extension HTTP2Tests {
    @Suite("HTTP/2 upstreams")
    struct Upstreams {
        static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

        /// A Python server from `Fixtures`, its port, and what it printed.
        struct PythonServer {
            let process: TokenProxyProcess
            let port: Int

            static func start(_ script: String, environment: [String: String] = [:]) async throws -> PythonServer {
                let process = TokenProxyProcess(
                    ["python3", "-B", Upstreams.fixtures.appendingPathComponent(script).path], environment: environment, program: "/usr/bin/env")
                try process.start()
                let deadline = ContinuousClock.now.advanced(by: .seconds(30))
                while ContinuousClock.now < deadline {
                    if let line = process.stdoutSoFar.split(separator: "\n").first(where: { $0.hasPrefix("port ") }), let port = Int(line.dropFirst(5)) {
                        return PythonServer(process: process, port: port)
                    }
                    try await Task.sleep(for: .milliseconds(20))
                }
                process.signal(SIGKILL)
                let outcome = await process.wait(timeout: .seconds(5))
                throw HTTP2Tests.ProbeError(message: "\(script) did not start (pip install h2 grpcio): \(outcome.stderr)")
            }

            /// The last "stats CONNECTIONS MAX_OPEN" line of h2_upstream.py.
            var stats: (connections: Int, maxOpen: Int)? {
                guard let line = process.stdoutSoFar.split(separator: "\n").last(where: { $0.hasPrefix("stats ") }) else { return nil }
                let numbers = line.split(separator: " ").dropFirst().compactMap { Int($0) }
                return numbers.count == 2 ? (numbers[0], numbers[1]) : nil
            }

            func stop() async {
                process.signal(SIGKILL)
                _ = await process.wait(timeout: .seconds(5))
            }
        }

        static func options(upstream port: Int, token: String = "at-1") -> ProxyHarness.Options {
            var options = ProxyHarness.Options()
            options.initialToken = .valid(token)
            options.upstreamAddress = "http://127.0.0.1:\(port)"
            options.upstreamExtra = #", "protocol": "http2""#
            return options
        }

        struct Seen: Decodable {
            var method: String?
            var path: String?
            var authority: String?
            var authorization: String?
            var te: String?
            var body: String?
            var host: String?
            var connection: String?
        }

        @Test func anHTTP1ClientReachesAnHTTP2Upstream() async throws {
            let upstream = try await PythonServer.start("h2_upstream.py")
            try await withProxyHarness(Self.options(upstream: upstream.port)) { harness in
                let answer = try await RawHTTPClient(port: harness.port).exchange(
                    "POST /v1/orders?x=1 HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: close\r\n\r\ncoffee")
                #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)")
                let body = try #require(answer.range(of: "\r\n\r\n").map { String(answer[$0.upperBound...]) })
                let seen = try JSONDecoder().decode(Seen.self, from: Data(body.utf8))
                #expect(seen.method == "POST" && seen.path == "/v1/orders?x=1" && seen.body == "coffee")
                #expect(seen.authorization == "Bearer at-1")
                #expect(seen.authority == "127.0.0.1:\(upstream.port)", "the upstream's authority, as Host over HTTP/1.1")
                #expect(seen.host == nil && seen.connection == nil, "no connection-specific field goes over HTTP/2")
                #expect(answer.lowercased().contains("content-length: \(body.utf8.count)"))
            }
            await upstream.stop()
        }

        @Test func aHundredStreamsShareAFewUpstreamConnections() async throws {
            let upstream = try await PythonServer.start("h2_upstream.py")
            try await withProxyHarness(Self.options(upstream: upstream.port)) { harness in
                let outcome = try await HTTP2Tests.probe(["requests", "\(harness.port)", "--count", "100", "--path", "/slow"])
                #expect(outcome.streams.count == 100)
                #expect(outcome.streams.allSatisfy { $0.status == 200 && $0.ended }, "\(outcome.streams.filter { $0.status != 200 }.prefix(2))")
                let stats = try #require(upstream.stats)
                // One connection per event loop at most, each carrying many streams at once.
                #expect(stats.connections <= 2, "\(stats.connections) upstream connections for 100 streams")
                #expect(stats.maxOpen > 10, "streams multiplexed: at most \(stats.maxOpen) open at once")
            }
            await upstream.stop()
        }

        @Test func a401FromAnHTTP2UpstreamIsRefreshedAndReplayed() async throws {
            let upstream = try await PythonServer.start("h2_upstream.py")
            try await withProxyHarness(Self.options(upstream: upstream.port, token: "at-stale")) { harness in
                let answer = try await RawHTTPClient(port: harness.port).exchange(
                    "POST /orders HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nConnection: close\r\n\r\ntea")
                #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)")
                #expect(answer.contains(#""body": "tea""#))
                #expect(harness.issuer.callCount == 1)
            }
            await upstream.stop()
        }

        @Test func trailersAndStreamingPassEndToEnd() async throws {
            let upstream = try await PythonServer.start("h2_upstream.py")
            try await withProxyHarness(Self.options(upstream: upstream.port)) { harness in
                let outcome = try await HTTP2Tests.probe(["requests", "\(harness.port)", "--path", "/stream"])
                let stream = try #require(outcome.streams.first)
                #expect(stream.status == 200 && stream.body == "part 0\npart 1\npart 2\n")
                #expect(stream.trailers == ["x-done": "yes"])
            }
            await upstream.stop()
        }

        /// Over TLS: `http2` needs the server to choose h2 by ALPN; `auto` takes whatever it
        /// chooses (the h2 fixture, or an HTTP/1.1 server that offers no ALPN at all).
        @Test func overTLSALPNDecides() async throws {
            let directory = try TemporaryDirectory()
            let certificates = try await TestCertificates.make(in: directory, name: "h2")
            let tls = #""tls": {"caFile": "\#(certificates.caFile)"}"#
            let environment = ["H2_UPSTREAM_CERT": certificates.certificateFile, "H2_UPSTREAM_KEY": certificates.keyFile]
            let get = "GET /who HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            // A server that offers no h2 refuses the handshake (OpenSSL's no_application_protocol
            // alert) or completes it without ALPN: the client's error names either.
            for (alpn, setting, expected) in [("h2", "http2", "HTTP/1.1 200"), ("h2,http/1.1", "auto", "HTTP/1.1 200"), ("http/1.1", "http2", "application protocol")] {
                let upstream = try await PythonServer.start("h2_upstream.py", environment: environment.merging(["H2_UPSTREAM_ALPN": alpn]) { $1 })
                var options = Self.options(upstream: upstream.port)
                options.upstreamAddress = "https://localhost:\(upstream.port)"
                options.upstreamExtra = #", "protocol": "\#(setting)", \#(tls)"#
                try await withProxyHarness(options) { harness in
                    let answer = try await RawHTTPClient(port: harness.port).exchange(get)
                    #expect(answer.contains(expected) || (expected == "application protocol" && answer.contains("did not agree to HTTP/2")), "ALPN \(alpn), protocol \(setting): \(answer)")
                    if expected.hasPrefix("HTTP") { #expect(answer.contains(#""authorization": "Bearer at-1""#)) }
                }
                await upstream.stop()
            }
            // `auto` to an HTTP/1.1-only TLS server (no ALPN): HTTP/1.1.
            let issuer = try await MockTokenIssuer.start()
            let api = try await MockAPI.start(issuer: issuer, flaky401Percent: 0, tls: try certificates.serverContext())
            var fixture = ConfigFixture(endpoint: issuer.url)
            fixture.grant = "client_credentials"
            fixture.upstream = api.baseURL.replacingOccurrences(of: "127.0.0.1", with: "localhost")
            fixture.upstreamExtra = #", "protocol": "auto", \#(tls)"#
            let proxy = TokenProxyProcess(["run", "--config", try fixture.write(to: directory)])
            try proxy.start()
            let port = try #require(await proxy.listeningPort(), "\(proxy.stderrSoFar)")
            let answer = try await RawHTTPClient(port: port).exchange("GET /api/data HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)")
            proxy.signal(SIGTERM)
            _ = await proxy.wait()
            await api.shutdown()
            await issuer.shutdown()
        }

        struct Call: Decodable {
            var code: Int
            var details: String
            var answer: String?
            var messages: [[JSONValue]]?
            var trailing: [String: String]
        }

        static func grpc(_ port: Int, _ method: String) async throws -> Call {
            let process = TokenProxyProcess(["python3", "-B", fixtures.appendingPathComponent("grpc_probe.py").path, "\(port)", method], program: "/usr/bin/env")
            try process.start()
            let outcome = await process.wait(timeout: .seconds(60))
            let line = try #require(outcome.stdout.split(separator: "\n").last, "grpc_probe.py gave nothing (pip install grpcio): \(outcome.stderr)")
            return try JSONDecoder().decode(Call.self, from: Data(line.utf8))
        }

        @Test func aGRPCCallRefusedAsUnauthenticatedIsRefreshedAndReplayed() async throws {
            let upstream = try await PythonServer.start("grpc_upstream.py")
            try await withProxyHarness(Self.options(upstream: upstream.port, token: "at-stale")) { harness in
                let call = try await Self.grpc(harness.port, "/echo.Echo/Say")
                #expect(call.code == 0, "OK after the replay: \(call)")
                #expect(call.answer == "echo:hello")
                #expect(call.trailing["x-authorization-seen"]?.hasPrefix("Bearer ") == true)
                #expect(call.trailing["x-authorization-seen"] != "Bearer at-stale")
                #expect(harness.issuer.callCount == 1, "one token endpoint call")
            }
            await upstream.stop()
        }

        @Test func aGRPCCallStillRefusedReachesTheClientAsUnauthenticated() async throws {
            // A server that refuses every token: the replay is refused too.
            let upstream = try await PythonServer.start("grpc_upstream.py", environment: ["GRPC_UPSTREAM_REFUSE": "all"])
            try await withProxyHarness(Self.options(upstream: upstream.port, token: "at-stale")) { harness in
                let call = try await Self.grpc(harness.port, "/echo.Echo/Say")
                #expect(call.code == 16, "UNAUTHENTICATED: \(call)")
                #expect(call.details == "token expired")
            }
            await upstream.stop()
        }

        @Test func aGRPCServerStreamDeliversEachMessageAsItIsSent() async throws {
            let upstream = try await PythonServer.start("grpc_upstream.py")
            try await withProxyHarness(Self.options(upstream: upstream.port)) { harness in
                let call = try await Self.grpc(harness.port, "/echo.Echo/Stream")
                #expect(call.code == 0, "\(call)")
                let messages = try #require(call.messages)
                #expect(messages.map { $0.first } == [.string("part 0"), .string("part 1"), .string("part 2")])
                let times = messages.compactMap { message -> Double? in if case .number(let time)? = message.last { time } else { nil } }
                // Sent 300 ms apart: a proxy that buffered the stream would hand them over together.
                #expect(times.count == 3 && times[2] - times[0] > 0.4, "arrival times \(times)")
            }
            await upstream.stop()
        }
    }
}
