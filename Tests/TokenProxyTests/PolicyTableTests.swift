import NIOCore
import Testing

@testable import TokenProxy

/// SPEC §5's retry rules and the client-side framing of responses, as tables: no sockets, no sleeping.
@Suite("Retry policy and response framing")
struct PolicyTableTests {
    static let policy = RetryPolicy(Configuration.Retry(attempts: 3, backoff: .milliseconds(100), maxBackoff: .seconds(2), replayBuffer: 65536))

    struct RetryRow: Sendable, CustomStringConvertible {
        var description: String
        var failure: RetryPolicy.Failure
        var attempt: Int
        var retryableAfterSending: Bool
        var random = 1.0
        /// The pause in milliseconds, or nil: given up.
        var expected: Int64?
    }

    static let retryRows: [RetryRow] = [
        RetryRow(description: "never sent: any method is retried", failure: .notSent, attempt: 1, retryableAfterSending: false, expected: 100),
        RetryRow(description: "never sent, second try: backoff doubles", failure: .notSent, attempt: 2, retryableAfterSending: false, expected: 200),
        RetryRow(description: "jitter takes up to half off", failure: .notSent, attempt: 1, retryableAfterSending: false, random: 0, expected: 50),
        RetryRow(description: "attempts used up", failure: .notSent, attempt: 3, retryableAfterSending: true, expected: nil),
        RetryRow(description: "reset after sending a POST: not retried", failure: .resetAfterSending, attempt: 1, retryableAfterSending: false, expected: nil),
        RetryRow(description: "reset after sending a GET: retried", failure: .resetAfterSending, attempt: 1, retryableAfterSending: true, expected: 100),
        RetryRow(description: "503 to a POST without Idempotency-Key: passed on", failure: .unavailableStatus(503, retryAfter: nil), attempt: 1, retryableAfterSending: false, expected: nil),
        RetryRow(description: "503 to a GET: retried", failure: .unavailableStatus(503, retryAfter: nil), attempt: 1, retryableAfterSending: true, expected: 100),
        RetryRow(description: "Retry-After within maxBackoff is honoured", failure: .unavailableStatus(503, retryAfter: "1"), attempt: 1, retryableAfterSending: true, expected: 1000),
        RetryRow(description: "Retry-After beyond maxBackoff: the client decides", failure: .unavailableStatus(503, retryAfter: "30"), attempt: 1, retryableAfterSending: true, expected: nil),
        RetryRow(description: "Retry-After as a date: the computed backoff", failure: .unavailableStatus(503, retryAfter: "Wed, 21 Oct 2026 07:28:00 GMT"), attempt: 2, retryableAfterSending: true, expected: 200),
    ]

    @Test("when a failed attempt is tried again", arguments: retryRows)
    func retry(row: RetryRow) {
        let delay = Self.policy.delay(after: row.failure, attempt: row.attempt, retryableAfterSending: row.retryableAfterSending, random: row.random)
        #expect(delay.map { $0.nanoseconds / 1_000_000 } == row.expected)
    }

    @Test func theBackoffNeverExceedsMaxBackoff() {
        let policy = RetryPolicy(Configuration.Retry(attempts: 100, backoff: .milliseconds(100), maxBackoff: .seconds(2), replayBuffer: 0))
        for attempt in 1..<99 {
            let delay = policy.delay(after: .notSent, attempt: attempt, retryableAfterSending: true, random: 1)
            #expect(delay.map { $0 <= .seconds(2) } == true, "attempt \(attempt)")
        }
    }

    @Test("only 502, 503 and 504 are retryable statuses", arguments: [(500, false), (501, false), (502, true), (503, true), (504, true), (429, false), (401, false)])
    func retryableStatus(status: UInt, retryable: Bool) {
        #expect(RetryPolicy.isRetryableStatus(status) == retryable)
    }

    // MARK: Response framing for the client

    struct FramingRow: Sendable, CustomStringConvertible {
        var description: String
        var upstream: String
        var keepAlive = true
        var clientAcceptsChunked = true
        var body: [String] = []
        /// What the client receives, byte for byte.
        var expected: String
    }

    static let framingRows: [FramingRow] = [
        FramingRow(description: "a small body follows its head in one write", upstream: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", body: ["ok"],
                   expected: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        FramingRow(description: "a chunked body is re-chunked", upstream: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", body: ["abc", "de"],
                   expected: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
        FramingRow(description: "a body until close goes chunked to an HTTP/1.1 client", upstream: "HTTP/1.0 200 OK\r\n\r\n", body: ["x"],
                   expected: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"),
        FramingRow(description: "and until close to an HTTP/1.0 client", upstream: "HTTP/1.0 200 OK\r\n\r\n", clientAcceptsChunked: false, body: ["x"],
                   expected: "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nx"),
        FramingRow(description: "an HTTP/1.0 client that keeps the connection is told so", upstream: "HTTP/1.1 204 No Content\r\n\r\n", clientAcceptsChunked: false,
                   expected: "HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n"),
        FramingRow(description: "the last answer says Connection: close", upstream: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", keepAlive: false,
                   expected: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        FramingRow(description: "hop-by-hop headers stay on the upstream's hop", upstream: "HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nX-End: 2\r\nContent-Length: 0\r\n\r\n",
                   expected: "HTTP/1.1 200 OK\r\nX-End: 2\r\nContent-Length: 0\r\n\r\n"),
    ]

    @Test("what the client receives", arguments: framingRows)
    func framing(row: FramingRow) throws {
        var parser = UpstreamResponseParser()
        parser.expectResponse(toHEAD: false)
        var parts = CircularBuffer<UpstreamResponseParser.Part>()
        try parser.feed(ByteBuffer(string: row.upstream), into: &parts)
        guard case .head(let head) = parts.first else { throw ProxyError.badRequest("no head") }
        var writer = ClientResponseWriter()
        var written = ByteBuffer()
        writer.start(head, keepAlive: row.keepAlive, clientAcceptsChunked: row.clientAcceptsChunked)
        for part in row.body { writer.body(ByteBuffer(string: part)) { var bytes = $0; written.writeBuffer(&bytes) } }
        writer.end { var bytes = $0; written.writeBuffer(&bytes) }
        #expect(String(buffer: written) == row.expected)
    }
}
