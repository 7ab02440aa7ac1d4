import FoundationEssentials
import NIOConcurrencyHelpers
import NIOSSL

/// A stand-in API that accepts only live tokens of one ``MockTokenIssuer`` (and, when it has an
/// audience, only those the issuer exchanged for that audience): a JSON route, a Server-Sent
/// Events route, and a route that sometimes answers a request's first attempt with 401 even
/// though its token is live.
public final class MockAPI: Sendable {
    private let server: MockHTTPServer
    private let counterBox: NIOLockedValueBox<Counters>
    private let receivedBox: NIOLockedValueBox<[Received]>

    public struct Counters: Sendable {
        public var requests = 0
        public var unauthorized = 0
        /// Request ids (`X-Demo-Request`) that were answered 401 at least once.
        public var rejectedRequestIDs: Set<String> = []
    }

    /// One request the API received, and the token it carried.
    public struct Received: Sendable {
        /// The path, without the query.
        public var path: String
        /// The bearer token, `nil` when the request carried none.
        public var token: String?
        /// The `audience` of the token exchange that issued the token, `nil` for a token of
        /// another grant (or one the issuer does not know).
        public var audience: String?
        /// `X-Demo-Request`, when the request carried one.
        public var requestID: String?
        /// 200, or 401 when the token was refused (or a spurious 401 was answered).
        public var status: Int
    }

    public var port: Int { server.port }
    public var baseURL: String { server.baseURL }
    public var counters: Counters { counterBox.withLockedValue { $0 } }
    /// The requests received so far, in order: every one, or the latest ``receivedKept`` at least
    /// (a long demo under load must not grow without bound).
    public var received: [Received] { receivedBox.withLockedValue { $0 } }
    public static let receivedKept = 10_000

    /// `audience`: when set, only access tokens that `issuer` issued by a token exchange naming
    /// this audience are accepted; others get 401, as an API checking `aud` answers.
    public static func start(
        issuer: MockTokenIssuer, audience: String? = nil, flaky401Percent: Int = 30, port: Int = 0, tls: NIOSSLContext? = nil
    ) async throws -> MockAPI {
        let counters = NIOLockedValueBox(Counters())
        let received = NIOLockedValueBox<[Received]>([])
        let server = try await MockHTTPServer.start(port: port, tls: tls) { request in
            counters.withLockedValue { $0.requests += 1 }
            let token = request.header("Authorization").flatMap { $0.hasPrefix("Bearer ") ? String($0.dropFirst(7)) : nil }
            let path = request.uri.prefix { $0 != "?" }
            let tokenAudience = token.flatMap { issuer.exchange(thatIssued: $0)?.audience }
            let live = (token.map { issuer.isValid(accessToken: $0) } ?? false) && (audience == nil || tokenAudience == audience)
            // A spurious 401 hits a request's first attempt only, as a token revoked early
            // would: the replay with a fresh token succeeds.
            let requestID = request.header("X-Demo-Request")
            let firstAttempt = requestID.map { id in !counters.withLockedValue { $0.rejectedRequestIDs.contains(id) } } ?? true
            let spurious = path == "/api/flaky" && firstAttempt && Int.random(in: 0..<100) < flaky401Percent
            received.withLockedValue {
                // Trimmed in halves, so that an append stays cheap on average.
                if $0.count >= 2 * MockAPI.receivedKept { $0.removeFirst($0.count - MockAPI.receivedKept) }
                $0.append(Received(path: String(path), token: token, audience: tokenAudience, requestID: requestID, status: live && !spurious ? 200 : 401))
            }
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
                // The audience of an exchanged token shows in the answer, so that a reader sees
                // which identity's token arrived.
                let audienceField = tokenAudience.map { ", \"audience\": \(String(reflecting: $0))" } ?? ""
                return .json(200, "{\"path\": \(String(reflecting: String(path)))\(audienceField), \"time\": \(Int(Date().timeIntervalSince1970))}")
            }
        }
        return MockAPI(server: server, counters: counters, received: received)
    }

    private init(server: MockHTTPServer, counters: NIOLockedValueBox<Counters>, received: NIOLockedValueBox<[Received]>) {
        self.server = server
        self.counterBox = counters
        self.receivedBox = received
    }

    public func shutdown() async { await server.shutdown() }
}
