import Foundation
import NIOCore
import Testing

@testable import TokenProxy

/// The connection's decisions (SPEC §2.2, §5) as tables: each row is a sequence of events and
/// the action expected after each, without sockets or sleeping.
@Suite("Connection state machine")
struct ConnectionMachineTests {
    enum Step: Sendable, CustomStringConvertible {
        /// A request head, parsed and prepared by the real parser and rules.
        case head(String)
        case token
        case connected
        /// The whole request reached the socket.
        case written
        case responseHead(Int)
        case responseEnd
        case bodyPart
        case bodyEnd
        /// The handler reports the request finished; `kept` is what its answer said.
        case finished(kept: Bool)
        case parseError
        case inputClosed
        case quiesce
        case clientClosed
        case upstreamClosed
        case headTimeout
        case idleTimeout

        var description: String {
            switch self {
            case .head(let text): "head \(text.prefix(40))"
            case .finished(let kept): "finished(kept: \(kept))"
            case .responseHead(let status): "response \(status)"
            case .token: "token"
            case .connected: "connected"
            case .written: "written"
            case .responseEnd: "response end"
            case .bodyPart: "body part"
            case .bodyEnd: "body end"
            case .parseError: "parse error"
            case .inputClosed: "half-close"
            case .quiesce: "quiesce"
            case .clientClosed: "client closed"
            case .upstreamClosed: "upstream closed"
            case .headTimeout: "header timeout"
            case .idleTimeout: "idle timeout"
            }
        }
    }

    struct Row: Sendable, CustomStringConvertible {
        var description: String
        var steps: [(Step, String)]
    }

    static let configuration: Configuration = try! ClientProtectionTests.configuration()
    static let token = PublishedToken(authorization: "Bearer T", accessToken: "T", mustRefreshAt: Date() + 3600, expiresAt: Date() + 3600)

    static func prepared(_ text: String) -> Result<RequestStateMachine, ProxyError> {
        let lines = text.components(separatedBy: "\r\n")
        let headers = lines.dropFirst().filter { !$0.isEmpty }.map { line -> (String, String) in
            let parts = line.split(separator: ":", maxSplits: 1)
            return (String(parts[0]), String(parts[1].dropFirst()))
        }
        return ClientProtectionTests.prepare(lines[0], headers, configuration: configuration).map {
            RequestStateMachine(request: $0, policy: RetryPolicy(configuration.retry), replayLimit: 65536, injectFirst401: false)
        }
    }

    static func response(_ status: Int, upgrade: Bool = false) -> UpstreamResponseHead {
        var parser = UpstreamResponseParser()
        parser.expectResponse(toHEAD: false, upgrade: upgrade)
        var parts = CircularBuffer<UpstreamResponseParser.Part>()
        let extra = status == 101 ? "Connection: Upgrade\r\nUpgrade: websocket\r\n" : "Content-Length: 0\r\n"
        try! parser.feed(ByteBuffer(string: "HTTP/1.1 \(status) X\r\n\(extra)\r\n"), into: &parts)
        guard case .head(let head) = parts.first! else { fatalError("no head") }
        return head
    }

    static func run(_ step: Step, on machine: inout ProxyConnectionStateMachine) -> ProxyConnectionStateMachine.Action {
        switch step {
        case .head(let text): machine.requestHead(prepared(text))
        case .token: machine.request { $0.tokenObtained(token) }
        case .connected: machine.request { $0.connected() }
        case .written:
            machine.request {
                $0.requestEndWritten()
                return .none
            }
        case .responseHead(let status):
            machine.request { $0.responseHead(response(status, upgrade: status == 101), jitter: 0.5) }
        case .responseEnd: machine.request { $0.responseEnd(upstreamKeepAlive: true) }
        case .bodyPart: machine.request { $0.clientBodyPart(ByteBuffer(string: "x")) }
        case .bodyEnd: machine.request { $0.clientBodyEnd(jitter: 0.5) }
        case .finished(let kept): machine.requestFinished(keptConnection: kept)
        case .parseError: machine.parseFailed(.badRequest("malformed"))
        case .inputClosed: machine.clientInputClosed()
        case .quiesce: machine.quiesce()
        case .clientClosed: machine.request { $0.clientClosed() }
        case .upstreamClosed: machine.request { $0.upstreamFailed(reason: "reset", jitter: 0.5) }
        case .headTimeout: machine.headTimedOut(ProxyError(.requestTimeout, "late"))
        case .idleTimeout: machine.idleTimedOut()
        }
    }

    static let get = "GET /a HTTP/1.1\r\nHost: localhost"
    static let post = "POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1"
    static let exchange: [(Step, String)] = [(.head(get), "obtainToken"), (.token, "connect"), (.connected, "sendRequest(end)"), (.written, "none"), (.responseHead(200), "forwardResponseHead 200"), (.responseEnd, "forwardResponseEnd(reuse)")]

    static let rows: [Row] = [
        Row(description: "a keep-alive exchange, then the next request is read", steps: exchange + [(.finished(kept: true), "readNextRequest"), (.head(get), "obtainToken")]),
        Row(description: "an answer that closed the connection: nothing more is read", steps: exchange + [(.finished(kept: false), "none")]),
        Row(description: "Connection: close from the client", steps: [(.head(get + "\r\nConnection: close"), "obtainToken"), (.token, "connect"), (.connected, "sendRequest(end)"), (.written, "none"), (.responseHead(200), "forwardResponseHead 200"), (.responseEnd, "forwardResponseEnd(reuse)"), (.finished(kept: false), "none")]),
        Row(description: "a refused head: refused, then closing", steps: [(.head("TRACE / HTTP/1.1\r\nHost: localhost"), "refuse 405"), (.parseError, "none")]),
        Row(description: "a rebinding Host: 403", steps: [(.head("GET / HTTP/1.1\r\nHost: evil.example"), "refuse 403")]),
        Row(description: "malformed bytes between requests: 400", steps: [(.parseError, "refuse 400")]),
        Row(description: "malformed body before anything went upstream: 400", steps: [(.head(post), "obtainToken"), (.parseError, "refuse 400")]),
        Row(description: "malformed body while it is being sent: closed", steps: [(.head(post), "obtainToken"), (.token, "connect"), (.connected, "sendRequest"), (.parseError, "close")]),
        Row(description: "half-close after a whole request: answered", steps: [(.head(get), "obtainToken"), (.inputClosed, "none"), (.token, "connect"), (.connected, "sendRequest(end)"), (.written, "none"), (.responseHead(200), "forwardResponseHead 200"), (.responseEnd, "forwardResponseEnd(reuse)"), (.finished(kept: true), "none")]),
        Row(description: "half-close mid-body: aborted", steps: [(.head(post), "obtainToken"), (.inputClosed, "abort client_closed")]),
        Row(description: "half-close while idle: closed", steps: [(.inputClosed, "close")]),
        Row(description: "quiesce while idle: closed now", steps: [(.quiesce, "close")]),
        Row(description: "quiesce mid-request: answered, then closed", steps: [(.head(get), "obtainToken"), (.quiesce, "none"), (.token, "connect"), (.connected, "sendRequest(end)"), (.written, "none"), (.responseHead(200), "forwardResponseHead 200"), (.responseEnd, "forwardResponseEnd(reuse)"), (.finished(kept: true), "none"), (.head(get), "trap")]),
        Row(description: "a slow head: 408", steps: [(.headTimeout, "refuse 408")]),
        Row(description: "an idle connection: closed without an answer", steps: [(.idleTimeout, "close")]),
        Row(description: "timeouts do not touch a request in progress", steps: [(.head(get), "obtainToken"), (.headTimeout, "none"), (.idleTimeout, "none")]),
        Row(description: "a WebSocket upgrade becomes a tunnel", steps: [(.head(get + "\r\nConnection: Upgrade\r\nUpgrade: websocket"), "obtainToken"), (.token, "connect"), (.connected, "sendRequest(end)"), (.responseHead(101), "openTunnel"), (.bodyPart, "sendBodyPart"), (.clientClosed, "abort client_closed"), (.finished(kept: false), "none")]),
        Row(description: "a 401 on the upgrade is refreshed and replayed", steps: [(.head(get + "\r\nConnection: Upgrade\r\nUpgrade: websocket"), "obtainToken"), (.token, "connect"), (.connected, "sendRequest(end)"), (.responseHead(401), "refreshAndReplay"), (.token, "connect"), (.connected, "sendRequest(end)"), (.responseHead(101), "openTunnel")]),
        Row(description: "the client leaves mid-answer: aborted", steps: exchange.prefix(5) + [(.clientClosed, "abort client_closed"), (.clientClosed, "none")]),
        Row(description: "the upstream leaves mid-answer: aborted", steps: exchange.prefix(5) + [(.upstreamClosed, "abort upstream_closed")]),
        Row(description: "events after the request ended are ignored", steps: exchange + [(.finished(kept: false), "none"), (.responseEnd, "none"), (.token, "none")]),
    ]

    @Test("what the connection does next", arguments: rows)
    func sequence(row: Row) {
        var machine = ProxyConnectionStateMachine()
        for (index, (step, expected)) in row.steps.enumerated() {
            // "trap" marks an event the machine refuses as illegal; the row ends before it.
            if expected == "trap" { break }
            let action = Self.run(step, on: &machine)
            #expect(Self.describe(action) == expected, "step \(index + 1): \(step)")
        }
    }

    @Test func keepAliveIsDecidedOnceForTheConnection() {
        var machine = ProxyConnectionStateMachine()
        _ = machine.requestHead(Self.prepared(Self.get))
        #expect(machine.keepsConnection(responseEndsWithClose: false))
        #expect(!machine.keepsConnection(responseEndsWithClose: true), "a body framed by close ends the connection")
        _ = machine.quiesce()
        #expect(!machine.keepsConnection(responseEndsWithClose: false), "shutting down")
        #expect(!machine.mayKeepAlive)

        var post = ProxyConnectionStateMachine()
        _ = post.requestHead(Self.prepared(Self.post))
        #expect(!post.keepsConnection(responseEndsWithClose: false), "an answer before the whole body closes the connection")

        var http10 = ProxyConnectionStateMachine()
        _ = http10.requestHead(Self.prepared("GET /a HTTP/1.0\r\nHost: localhost"))
        #expect(!http10.keepsConnection(responseEndsWithClose: false))
    }

    static func describe(_ action: ProxyConnectionStateMachine.Action) -> String {
        switch action {
        case .none: "none"
        case .refuse(let error): "refuse \(error.code.status.code)"
        case .readNextRequest: "readNextRequest"
        case .close, .closeForMalformedBody: "close"
        case .request(let action):
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

    // MARK: Timers

    struct TimerRow: Sendable, CustomStringConvertible {
        var description: String
        var steps: @Sendable (inout ConnectionTimers) -> Void
        /// Seconds after the start at which the check is made.
        var at: Int64
        var expected: ConnectionTimers.IdleDecision
    }

    static let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
    static func at(_ seconds: Int64) -> NIODeadline { t0 + .seconds(seconds) }

    static let timerRows: [TimerRow] = [
        TimerRow(description: "idle, before the idle timeout", steps: { _ in }, at: 5, expected: .checkAgain(at: at(15))),
        TimerRow(description: "idle past idleTimeout: closed", steps: { _ in }, at: 75, expected: .closeIdle),
        TimerRow(description: "a head begun, within headerTimeout", steps: { $0.headBytesArrived(now: at(70)) }, at: 75, expected: .checkAgain(at: at(80))),
        TimerRow(description: "a head begun and late: 408", steps: { $0.headBytesArrived(now: at(70)) }, at: 80, expected: .headTimedOut),
        TimerRow(description: "a request in progress is not the idle timer's", steps: { $0.requestStarted() }, at: 500, expected: .busy(checkAgainAt: at(510))),
        TimerRow(description: "idle again after a request: counted from then", steps: { $0.requestStarted(); $0.becameIdle(now: at(100)) }, at: 170, expected: .checkAgain(at: at(175))),
        TimerRow(description: "head bytes during a request do not start the header timer", steps: { $0.requestStarted(); $0.headBytesArrived(now: at(1)); $0.becameIdle(now: at(100)) }, at: 175, expected: .closeIdle),
    ]

    @Test("header and idle timeouts", arguments: timerRows)
    func idleTimer(row: TimerRow) {
        var timers = ConnectionTimers(headerTimeout: .seconds(10), idleTimeout: .seconds(75), now: Self.t0)
        row.steps(&timers)
        #expect(timers.idleCheck(now: Self.at(row.at)) == row.expected)
    }

    @Test func silenceIsMeasuredFromTheLastActivity() {
        var timers = ConnectionTimers(headerTimeout: .seconds(10), idleTimeout: .seconds(75), now: Self.t0)
        #expect(timers.silenceCheck(now: Self.at(1)) == .stop, "nothing watched")
        timers.watchSilence(limit: .seconds(30), now: Self.at(0))
        #expect(timers.silenceCheck(now: Self.at(10)) == .checkAgain(at: Self.at(30)))
        timers.activity(now: Self.at(20))
        #expect(timers.silenceCheck(now: Self.at(30)) == .checkAgain(at: Self.at(50)), "an event stream that keeps talking never times out")
        #expect(timers.silenceCheck(now: Self.at(50)) == .timedOut)
        timers.stopWatchingSilence()
        #expect(timers.silenceCheck(now: Self.at(500)) == .stop)
    }
}
