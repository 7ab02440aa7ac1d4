import Foundation
import NIOCore
import Testing

@testable import TokenProxy

/// One request's decisions (SPEC §5: retries, the 401 replay, token failures, timeouts) as a
/// table of event sequences against `RequestStateMachine` alone.
@Suite("Request state machine")
struct RequestMachineTests {
    enum Step: Sendable, CustomStringConvertible {
        case token
        case tokenFailed(TokenBrokerError)
        case connected
        case written
        case response(Int, retryAfter: String? = nil, wwwAuthenticate: String? = nil)
        case responseEnd
        case upstreamFailed
        case readTimeout
        case retryDue
        /// The handler counted and logged an injected fault.
        case faultReady
        case bodyPart
        case bodyEnd

        var description: String {
            switch self {
            case .token: "token"
            case .tokenFailed(let error): "token failed: \(error)"
            case .connected: "connected"
            case .written: "written"
            case .response(let status, _, _): "response \(status)"
            case .responseEnd: "response end"
            case .upstreamFailed: "upstream failed"
            case .readTimeout: "read timeout"
            case .retryDue: "retry due"
            case .faultReady: "fault ready"
            case .bodyPart: "body part"
            case .bodyEnd: "body end"
            }
        }
    }

    /// What a step should lead to: a whole action, or one built from the row's own request
    /// (the head it sends) or step (the response it forwards).
    enum Expected: Sendable {
        case action(RequestStateMachine.Action)
        /// `sendRequest` with the row's head, the token's line and the body parts held.
        case send(body: [String] = [], end: Bool)
        /// The step's response, passed on to the client.
        case forward
        case retry(afterMilliseconds: Int64, reason: ProxyStatistics.RetryReason)
    }

    struct Row: Sendable, CustomStringConvertible {
        var description: String
        var request: String
        var steps: [(Step, Expected)]
    }

    static func machine(_ request: String) -> RequestStateMachine {
        // Fault injection is on: rows that name X-TokenProxy-Fault get their faults.
        guard case .success(let machine) = ConnectionMachineTests.prepared(request, faults: true) else { fatalError("refused: \(request)") }
        return machine
    }

    static func head(_ status: Int, retryAfter: String?, wwwAuthenticate: String?) -> UpstreamResponseHead {
        var parser = UpstreamResponseParser()
        parser.expectResponse(toHEAD: false)
        var parts = CircularBuffer<UpstreamResponseParser.Part>()
        var text = "HTTP/1.1 \(status) X\r\nContent-Length: 0\r\n"
        if let retryAfter { text += "Retry-After: \(retryAfter)\r\n" }
        if let wwwAuthenticate { text += "WWW-Authenticate: \(wwwAuthenticate)\r\n" }
        try! parser.feed(ByteBuffer(string: text + "\r\n"), into: &parts)
        guard case .head(let head) = parts.first! else { fatalError("no head") }
        return head
    }

    static func run(_ step: Step, on machine: inout RequestStateMachine) -> RequestStateMachine.Action {
        switch step {
        case .token: return machine.tokenObtained(ConnectionMachineTests.token)
        case .tokenFailed(let error): return machine.tokenFailed(error, fallback: ConnectionMachineTests.token)
        case .connected: return machine.connected()
        case .written:
            machine.requestEndWritten()
            return .none
        case .response(let status, let retryAfter, let challenge):
            return machine.responseHead(head(status, retryAfter: retryAfter, wwwAuthenticate: challenge), jitter: 1)
        case .responseEnd: return machine.responseEnd(upstreamKeepAlive: true)
        case .upstreamFailed: return machine.upstreamFailed(reason: "connection reset", jitter: 1)
        case .readTimeout: return machine.readTimedOut(after: .seconds(30))
        case .retryDue: return machine.retryDue()
        case .faultReady: return machine.injectedFaultReady(jitter: 1)
        case .bodyPart: return machine.clientBodyPart(ByteBuffer(string: "x"))
        case .bodyEnd: return machine.clientBodyEnd(jitter: 1)
        }
    }

    static let get = "GET /a HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: t"
    static let post = "POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nX-Request-Id: t"
    static let keyedPost = post + "\r\nIdempotency-Key: k-1"
    static let none = Expected.action(.none)
    static let connect = Expected.action(.connect)
    static let obtainToken = Expected.action(.obtainToken)
    static let replay = Expected.action(.refreshAndReplay(rejected: "T", discardUpstream: true))
    static let sent: [(Step, Expected)] = [(.token, connect), (.connected, .send(end: true)), (.written, none)]
    static let postSent: [(Step, Expected)] = [
        (.token, connect), (.connected, .send(end: false)), (.bodyPart, .action(.sendBodyPart(ByteBuffer(string: "x")))), (.bodyEnd, .action(.sendEnd)), (.written, none),
    ]
    // retry: attempts 3, backoff 100ms doubling; the jitter of 1 keeps the whole delay.
    static let firstRetry = Expected.retry(afterMilliseconds: 100, reason: .upstream503)
    static let secondRetry = Expected.retry(afterMilliseconds: 200, reason: .upstream503)

    static func respond(_ error: ProxyError, discard: Bool = true) -> Expected { .action(.respond(error, discardUpstream: discard)) }
    static let down = TokenBrokerError.unavailable(reason: "down", retryAfter: nil)
    static let refused = TokenBrokerError.reauthenticationRequired(reason: "invalid_grant")

    // SPEC §6: injected faults are answered as if from the upstream, before anything is sent.
    static let fault401 = get + "\r\nX-TokenProxy-Fault: 401"
    static let fault401Twice = get + "\r\nX-TokenProxy-Fault: 401;times=2"
    static let fault503Twice = get + "\r\nX-TokenProxy-Fault: 503;times=2"
    static let faultReset = post + "\r\nX-TokenProxy-Fault: reset"
    static let injected401 = UpstreamResponseHead.synthesized(
        status: 401, headers: [("X-TokenProxy-Fault-Injected", "401"), ("WWW-Authenticate", #"Bearer error="invalid_token""#)],
        allocator: ByteBufferAllocator())
    static let faultRows: [Row] = [
        Row(description: "an injected 401 is refreshed for real and replayed", request: fault401,
            steps: [(.token, .action(.injectFault(.status(401)))), (.faultReady, .action(.refreshAndReplay(rejected: "T", discardUpstream: false))),
                    (.token, connect), (.connected, .send(end: true))]),
        Row(description: "an injected 401 that outlasts the one replay reaches the client, marked", request: fault401Twice,
            steps: [(.token, .action(.injectFault(.status(401)))), (.faultReady, .action(.refreshAndReplay(rejected: "T", discardUpstream: false))),
                    (.token, .action(.injectFault(.status(401)))), (.faultReady, .action(.respondInjected(injected401)))]),
        Row(description: "an injected 503 on a GET is retried like a real one", request: fault503Twice,
            steps: [(.token, .action(.injectFault(.status(503)))), (.faultReady, .action(.retry(after: .milliseconds(100), discardUpstream: false, reason: .upstream503))),
                    (.retryDue, obtainToken), (.token, .action(.injectFault(.status(503)))),
                    (.faultReady, .action(.retry(after: .milliseconds(200), discardUpstream: false, reason: .upstream503))), (.retryDue, obtainToken), (.token, connect)]),
        Row(description: "an injected reset after a POST was sent: 502, marked, not retried", request: faultReset,
            // Held until the body is complete, so that a replay could send it whole.
            steps: [(.token, .action(.injectFault(.reset))), (.faultReady, none), (.bodyPart, none),
                    (.bodyEnd, .action(.respond(ProxyError(
                        .upstreamUnavailable,
                        "the upstream could not be reached after 1 attempt: connection reset (injected fault); not retried because POST is not idempotent and has no Idempotency-Key",
                        injectedFault: "reset"), discardUpstream: false)))]),
    ]

    static let rows: [Row] = faultRows + [
        Row(description: "an answer is streamed to the client", request: get, steps: sent + [(.response(200), .forward), (.responseEnd, .action(.forwardResponseEnd(reuseUpstream: true)))]),
        Row(description: "a 401 is refreshed and replayed once", request: get, steps: sent + [(.response(401), replay), (.token, connect), (.connected, .send(end: true)), (.response(200), .forward)]),
        Row(description: "a second 401 goes to the client", request: get, steps: sent + [(.response(401), replay), (.token, connect), (.connected, .send(end: true)), (.response(401), .forward)]),
        Row(description: "a 401 with another error (insufficient_scope) is not a token rejection", request: get,
            steps: sent + [(.response(401, wwwAuthenticate: #"Bearer error="insufficient_scope""#), .forward)]),
        Row(description: "a 403 is passed on", request: get, steps: sent + [(.response(403), .forward)]),
        Row(description: "a POST's 401 is replayed (its body was kept)", request: post,
            steps: postSent + [(.response(401), replay), (.token, connect), (.connected, .send(body: ["x"], end: true))]),
        Row(description: "a 401 before the body is complete is passed on", request: post, steps: [(.token, connect), (.connected, .send(end: false)), (.response(401), .forward)]),
        Row(description: "503 to a GET: retried", request: get, steps: sent + [(.response(503), firstRetry), (.retryDue, obtainToken), (.token, connect)]),
        Row(description: "503 to a POST: passed on", request: post, steps: postSent + [(.response(503), .forward)]),
        Row(description: "503 to a POST with an Idempotency-Key: retried", request: keyedPost, steps: postSent + [(.response(503), firstRetry)]),
        Row(description: "Retry-After within maxBackoff is honoured", request: get, steps: sent + [(.response(503, retryAfter: "1"), .retry(afterMilliseconds: 1000, reason: .upstream503))]),
        Row(description: "Retry-After beyond maxBackoff: passed on", request: get, steps: sent + [(.response(503, retryAfter: "3600"), .forward)]),
        Row(description: "retries run out: the upstream's own 503 is passed on", request: get,
            steps: sent + [(.response(503), firstRetry), (.retryDue, obtainToken)] + sent + [(.response(503), secondRetry), (.retryDue, obtainToken)] + sent + [(.response(503), .forward)]),
        Row(description: "not sent (connect refused): retried whatever the method", request: post,
            steps: [(.token, connect), (.upstreamFailed, .retry(afterMilliseconds: 100, reason: .notSent))]),
        Row(description: "reset after a POST was written: 502", request: post,
            steps: postSent + [(.upstreamFailed, respond(ProxyError(.upstreamUnavailable, "the upstream could not be reached after 1 attempt: connection reset; not retried because POST is not idempotent and has no Idempotency-Key")))]),
        Row(description: "reset after a GET was written: retried", request: get, steps: sent + [(.upstreamFailed, .retry(afterMilliseconds: 100, reason: .reset))]),
        Row(description: "no answer within readTimeout: 504", request: get,
            steps: sent + [(.readTimeout, respond(ProxyError(.upstreamTimeout, "the upstream did not answer within upstream.readTimeout (30s)")))]),
        Row(description: "the upstream leaves mid-answer: nothing is retried", request: get, steps: sent + [(.response(200), .forward), (.upstreamFailed, .action(.abort(.upstreamClosed)))]),
        Row(description: "silent mid-answer: aborted", request: get, steps: sent + [(.response(200), .forward), (.readTimeout, .action(.abort(.upstreamTimeout)))]),
        Row(description: "no token, endpoint failing: 503 with Retry-After", request: get,
            steps: [(.tokenFailed(down), respond(ProxyError(.tokenUnavailable, "down", retryAfter: 1), discard: false))]),
        Row(description: "no token, login needed: 401", request: get,
            steps: [(.tokenFailed(refused), respond(ProxyError(.reauthenticationRequired, "invalid_grant"), discard: false))]),
        Row(description: "the replay's refresh fails transiently: sent once more with the current token", request: get,
            steps: sent + [(.response(401), replay), (.tokenFailed(down), connect), (.connected, .send(end: true))]),
        Row(description: "the replay's refresh is refused: the client gets 401", request: get,
            steps: sent + [(.response(401), replay), (.tokenFailed(refused), respond(ProxyError(.reauthenticationRequired, "invalid_grant"), discard: false))]),
    ]

    /// The whole action `expected` stands for, on `request`, after `step`.
    static func resolve(_ expected: Expected, request: String, step: Step) -> RequestStateMachine.Action {
        switch expected {
        case .action(let action):
            return action
        case .send(let body, let end):
            // The head sent is the same with faults off: X-TokenProxy-Fault is never forwarded.
            guard case .success(var machine) = ConnectionMachineTests.prepared(request) else { fatalError("refused: \(request)") }
            _ = machine.tokenObtained(ConnectionMachineTests.token)
            guard case .sendRequest(let head, let ending, _, _) = machine.connected() else { fatalError("not sendable: \(request)") }
            return .sendRequest(head: head, headEnding: ending, body: ArraySlice(body.map { ByteBuffer(string: $0) }), end: end)
        case .forward:
            guard case .response(let status, let retryAfter, let challenge) = step else { fatalError("no response in \(step)") }
            return .forwardResponseHead(head(status, retryAfter: retryAfter, wwwAuthenticate: challenge))
        case .retry(let milliseconds, let reason):
            return .retry(after: .milliseconds(milliseconds), discardUpstream: true, reason: reason)
        }
    }

    @Test("what a request does next", arguments: rows)
    func sequence(row: Row) {
        var machine = Self.machine(row.request)
        for (index, (step, expected)) in row.steps.enumerated() {
            let action = Self.run(step, on: &machine)
            #expect(action == Self.resolve(expected, request: row.request, step: step), "step \(index + 1): \(step)")
        }
    }
}
