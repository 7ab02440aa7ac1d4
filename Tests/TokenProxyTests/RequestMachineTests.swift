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
            case .bodyPart: "body part"
            case .bodyEnd: "body end"
            }
        }
    }

    struct Row: Sendable, CustomStringConvertible {
        var description: String
        var request: String
        var steps: [(Step, String)]
    }

    static func machine(_ request: String) -> RequestStateMachine {
        guard case .success(let machine) = ConnectionMachineTests.prepared(request) else { fatalError("refused: \(request)") }
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
        case .bodyPart: return machine.clientBodyPart(ByteBuffer(string: "x"))
        case .bodyEnd: return machine.clientBodyEnd(jitter: 1)
        }
    }

    static let get = "GET /a HTTP/1.1\r\nHost: localhost"
    static let post = "POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1"
    static let keyedPost = post + "\r\nIdempotency-Key: k-1"
    static let sent: [(Step, String)] = [(.token, "connect"), (.connected, "sendRequest(end)"), (.written, "none")]
    static let postSent: [(Step, String)] = [(.token, "connect"), (.connected, "sendRequest"), (.bodyPart, "sendBodyPart"), (.bodyEnd, "sendEnd"), (.written, "none")]

    static let rows: [Row] = [
        Row(description: "an answer is streamed to the client", request: get, steps: sent + [(.response(200), "forwardResponseHead 200"), (.responseEnd, "forwardResponseEnd(reuse)")]),
        Row(description: "a 401 is refreshed and replayed once", request: get, steps: sent + [(.response(401), "refreshAndReplay"), (.token, "connect"), (.connected, "sendRequest(end)"), (.response(200), "forwardResponseHead 200")]),
        Row(description: "a second 401 goes to the client", request: get, steps: sent + [(.response(401), "refreshAndReplay"), (.token, "connect"), (.connected, "sendRequest(end)"), (.response(401), "forwardResponseHead 401")]),
        Row(description: "a 401 with another error (insufficient_scope) is not a token rejection", request: get, steps: sent + [(.response(401, wwwAuthenticate: #"Bearer error="insufficient_scope""#), "forwardResponseHead 401")]),
        Row(description: "a 403 is passed on", request: get, steps: sent + [(.response(403), "forwardResponseHead 403")]),
        Row(description: "a POST's 401 is replayed (its body was kept)", request: post, steps: postSent + [(.response(401), "refreshAndReplay"), (.token, "connect"), (.connected, "sendRequest(end)")]),
        Row(description: "a 401 before the body is complete is passed on", request: post, steps: [(.token, "connect"), (.connected, "sendRequest"), (.response(401), "forwardResponseHead 401")]),
        Row(description: "503 to a GET: retried", request: get, steps: sent + [(.response(503), "retry"), (.retryDue, "obtainToken"), (.token, "connect")]),
        Row(description: "503 to a POST: passed on", request: post, steps: postSent + [(.response(503), "forwardResponseHead 503")]),
        Row(description: "503 to a POST with an Idempotency-Key: retried", request: keyedPost, steps: postSent + [(.response(503), "retry")]),
        Row(description: "Retry-After beyond maxBackoff: passed on", request: get, steps: sent + [(.response(503, retryAfter: "3600"), "forwardResponseHead 503")]),
        Row(description: "retries run out: the upstream's own 503 is passed on", request: get, steps: sent + [(.response(503), "retry"), (.retryDue, "obtainToken")] + sent + [(.response(503), "retry"), (.retryDue, "obtainToken")] + sent + [(.response(503), "forwardResponseHead 503")]),
        Row(description: "not sent (connect refused): retried whatever the method", request: post, steps: [(.token, "connect"), (.upstreamFailed, "retry")]),
        Row(description: "reset after a POST was written: 502", request: post, steps: postSent + [(.upstreamFailed, "respond 502")]),
        Row(description: "reset after a GET was written: retried", request: get, steps: sent + [(.upstreamFailed, "retry")]),
        Row(description: "no answer within readTimeout: 504", request: get, steps: sent + [(.readTimeout, "respond 504")]),
        Row(description: "the upstream leaves mid-answer: nothing is retried", request: get, steps: sent + [(.response(200), "forwardResponseHead 200"), (.upstreamFailed, "abort upstream_closed")]),
        Row(description: "silent mid-answer: aborted", request: get, steps: sent + [(.response(200), "forwardResponseHead 200"), (.readTimeout, "abort upstream_timeout")]),
        Row(description: "no token, endpoint failing: 503", request: get, steps: [(.tokenFailed(.unavailable(reason: "down", retryAfter: nil)), "respond 503")]),
        Row(description: "no token, login needed: 401", request: get, steps: [(.tokenFailed(.reauthenticationRequired(reason: "invalid_grant")), "respond 401")]),
        Row(description: "the replay's refresh fails transiently: sent once more with the current token", request: get, steps: sent + [(.response(401), "refreshAndReplay"), (.tokenFailed(.unavailable(reason: "down", retryAfter: nil)), "connect")]),
        Row(description: "the replay's refresh is refused: the client gets 401", request: get, steps: sent + [(.response(401), "refreshAndReplay"), (.tokenFailed(.reauthenticationRequired(reason: "invalid_grant")), "respond 401")]),
    ]

    @Test("what a request does next", arguments: rows)
    func sequence(row: Row) {
        var machine = Self.machine(row.request)
        for (index, (step, expected)) in row.steps.enumerated() {
            let action = Self.run(step, on: &machine)
            #expect(Self.describe(action) == expected, "step \(index + 1): \(step)")
        }
    }

    static func describe(_ action: RequestStateMachine.Action) -> String {
        switch action {
        case .none: "none"
        case .obtainToken: "obtainToken"
        case .refreshAndReplay: "refreshAndReplay"
        case .connect: "connect"
        case .injectFault: "injectFault"
        case .sendRequest(_, _, _, let end): end ? "sendRequest(end)" : "sendRequest"
        case .sendBodyPart: "sendBodyPart"
        case .sendEnd: "sendEnd"
        case .forwardResponseHead(let head): "forwardResponseHead \(head.status)"
        case .openTunnel: "openTunnel"
        case .forwardResponseBodyPart: "forwardResponseBodyPart"
        case .forwardResponseEnd(let reuse): reuse ? "forwardResponseEnd(reuse)" : "forwardResponseEnd"
        case .respondInjected(let head): "respondInjected \(head.status)"
        case .respond(let error, _): "respond \(error.code.status.code)"
        case .retry: "retry"
        case .abort(let reason): "abort \(reason.rawValue)"
        }
    }
}
