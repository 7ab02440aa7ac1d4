import FoundationEssentials
import NIOConcurrencyHelpers
import NIOSSL

/// A stand-in API that accepts only live tokens of one ``MockTokenIssuer``: a JSON route, a
/// Server-Sent Events route, and a route that sometimes answers a request's first attempt with
/// 401 even though its token is live.
public final class MockAPI: Sendable {
    private let server: MockHTTPServer
    private let counterBox: NIOLockedValueBox<Counters>

    public struct Counters: Sendable {
        public var requests = 0
        public var unauthorized = 0
        /// Request ids (`X-Demo-Request`) that were answered 401 at least once.
        public var rejectedRequestIDs: Set<String> = []
    }

    public var port: Int { server.port }
    public var baseURL: String { server.baseURL }
    public var counters: Counters { counterBox.withLockedValue { $0 } }

    public static func start(issuer: MockTokenIssuer, flaky401Percent: Int = 30, port: Int = 0, tls: NIOSSLContext? = nil) async throws -> MockAPI {
        let counters = NIOLockedValueBox(Counters())
        let server = try await MockHTTPServer.start(port: port, tls: tls) { request in
            counters.withLockedValue { $0.requests += 1 }
            let token = request.header("Authorization").flatMap { $0.hasPrefix("Bearer ") ? String($0.dropFirst(7)) : nil }
            let path = request.uri.prefix { $0 != "?" }
            let live = token.map { issuer.isValid(accessToken: $0) } ?? false
            // A spurious 401 hits a request's first attempt only, as a token revoked early
            // would: the replay with a fresh token succeeds.
            let requestID = request.header("X-Demo-Request")
            let firstAttempt = requestID.map { id in !counters.withLockedValue { $0.rejectedRequestIDs.contains(id) } } ?? true
            let spurious = path == "/api/flaky" && firstAttempt && Int.random(in: 0..<100) < flaky401Percent
            guard live, !spurious else {
                counters.withLockedValue {
                    $0.unauthorized += 1
                    if let id = request.header("X-Demo-Request") { $0.rejectedRequestIDs.insert(id) }
                }
                var response = MockHTTPResponse.json(401, #"{"error":"invalid_token"}"#)
                response.headers.append(("WWW-Authenticate", #"Bearer error="invalid_token""#))
                return response
            }
            switch path {
            case "/api/events":
                return .streaming(headers: [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]) { writer in
                    for number in 1...3 {
                        try? await writer.write("event: tick\ndata: {\"n\": \(number)}\n\n")
                        try? await Task.sleep(for: .milliseconds(300))
                    }
                }
            default:
                return .json(200, "{\"path\": \(String(reflecting: String(path))), \"time\": \(Int(Date().timeIntervalSince1970))}")
            }
        }
        return MockAPI(server: server, counters: counters)
    }

    private init(server: MockHTTPServer, counters: NIOLockedValueBox<Counters>) {
        self.server = server
        self.counterBox = counters
    }

    public func shutdown() async { await server.shutdown() }
}
