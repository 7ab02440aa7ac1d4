import Foundation
import NIOCore
import Testing

@testable import TokenProxy

/// The connection's decisions (SPEC §2.2, §5) as tables: each row is a sequence of events (real
/// client bytes through the machine's own parser, upstream answers, timers at given seconds)
/// and the whole actions expected after each, as the handler would carry them out, without
/// sockets or sleeping.
@Suite("Connection state machine")
struct ConnectionMachineTests {
    typealias Action = ProxyConnectionStateMachine.Action

    enum Step: Sendable, CustomStringConvertible {
        /// Bytes from the client.
        case bytes(String)
        /// The channel asks to read: `[.readClient]` when the machine lets it, `[]` when held.
        case read
        case token
        /// A token for the request before the current one (a late callback).
        case staleToken
        case connected
        /// The whole request reached the socket.
        case written
        case responseHead(Int)
        case responseEnd
        /// Bytes came from the upstream (activity), `seconds` after the start.
        case upstreamActivity(seconds: Int64)
        case inputClosed
        case quiesce
        case clientClosed
        case upstreamClosed
        /// The check timer fires `seconds` after the connection started.
        case timer(seconds: Int64)

        var description: String {
            switch self {
            case .bytes(let text): "bytes \(text.prefix(40).debugDescription)"
            case .responseHead(let status): "response \(status)"
            case .upstreamActivity(let seconds): "upstream bytes at \(seconds) s"
            case .timer(let seconds): "timer at \(seconds) s"
            case .read: "read"
            case .token: "token"
            case .staleToken: "a stale token"
            case .connected: "connected"
            case .written: "written"
            case .responseEnd: "response end"
            case .inputClosed: "half-close"
            case .quiesce: "quiesce"
            case .clientClosed: "client closed"
            case .upstreamClosed: "upstream closed"
            }
        }
    }

    struct Row: Sendable, CustomStringConvertible {
        var description: String
        var steps: [(Step, [Action])]
    }

    static let configuration: Configuration = try! ClientProtectionTests.configuration()
    static let token = PublishedToken(authorization: "Bearer T", accessToken: "T", mustRefreshAt: Date() + 3600, expiresAt: Date() + 3600)
    static let readTimeout = Duration.seconds(3)
    static let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
    static func at(_ seconds: Int64) -> NIODeadline { t0 + .seconds(seconds) }

    static var rules: ForwardingRules {
        ForwardingRules(upstream: configuration.upstream.url, clientGuard: ClientGuard(configuration), limits: configuration.limits)
    }

    /// A request head given as its request line and fields, without the blank line.
    /// With `faults`, fault injection is on (`X-TokenProxy-Fault` is read).
    static func prepared(_ text: String, faults: Bool = false) -> Result<RequestStateMachine, ProxyError> {
        let lines = text.components(separatedBy: "\r\n")
        let headers = lines.dropFirst().filter { !$0.isEmpty }.map { line -> (String, String) in
            let parts = line.split(separator: ":", maxSplits: 1)
            return (String(parts[0]), String(parts[1].dropFirst()))
        }
        return ClientProtectionTests.prepare(lines[0], headers, configuration: configuration, faultsEnabled: faults).map {
            RequestStateMachine(request: $0, policy: RetryPolicy(configuration.retry), replayLimit: 65536, injectFirst401: false)
        }
    }

    static func response(_ status: Int, upgrade: Bool = false, chunked: Bool = false) -> UpstreamResponseHead {
        var parser = UpstreamResponseParser()
        parser.expectResponse(toHEAD: false, upgrade: upgrade)
        var parts = CircularBuffer<UpstreamResponseParser.Part>()
        let extra = status == 101 ? "Connection: Upgrade\r\nUpgrade: websocket\r\n" : chunked ? "Transfer-Encoding: chunked\r\n" : "Content-Length: 0\r\n"
        try! parser.feed(ByteBuffer(string: "HTTP/1.1 \(status) X\r\n\(extra)\r\n"), into: &parts)
        guard case .head(let head) = parts.first! else { fatalError("no head") }
        return head
    }

    /// Emulates the handler: carries each action's answer back (a head is prepared with the real
    /// rules) and pulls ``ProxyConnectionStateMachine/next(now:)`` until nothing is left.
    struct Driver {
        var machine = ProxyConnectionStateMachine(
            limits: ConnectionMachineTests.rules.parserLimits, headerTimeout: .seconds(10), idleTimeout: .seconds(75), now: ConnectionMachineTests.t0,
            random: SplitMix64(seed: 1))
        var upstreamChunked = false

        mutating func run(_ step: Step) -> [Action] {
            var actions: [Action] = []
            var next = event(step)
            if case .read = step { return machine.readRequested() ? [.readClient] : [] }
            while true {
                if let action = next {
                    if case .prepare(let head) = action {
                        let text = String(buffer: head.bytes).replacingOccurrences(of: "\r\n\r\n", with: "")
                        next = machine.requestHead(
                            ConnectionMachineTests.prepared(text), expectsContinue: head.first(.expect) == "100-continue", readTimeout: ConnectionMachineTests.readTimeout)
                        continue
                    }
                    actions.append(action)
                    next = nil
                } else if let pulled = machine.next(now: ConnectionMachineTests.t0) {
                    next = pulled
                } else {
                    return actions
                }
            }
        }

        private mutating func event(_ step: Step) -> Action? {
            let t0 = ConnectionMachineTests.t0
            switch step {
            case .bytes(let text): return machine.clientRead(ByteBuffer(string: text), now: t0)
            case .read: return nil
            case .token: return machine.tokenObtained(ConnectionMachineTests.token, request: machine.requestNumber)
            case .staleToken: return machine.tokenObtained(ConnectionMachineTests.token, request: machine.requestNumber - 1)
            case .connected: return machine.connected(now: t0)
            case .written:
                machine.requestEndWritten(request: machine.requestNumber)
                return nil
            case .responseHead(let status):
                return machine.responseHead(ConnectionMachineTests.response(status, upgrade: status == 101, chunked: upstreamChunked))
            case .responseEnd: return machine.responseEnd(upstreamKeepAlive: true)
            case .upstreamActivity(let seconds):
                machine.upstreamReadComplete(now: ConnectionMachineTests.at(seconds))
                return nil
            case .inputClosed: return machine.clientInputClosed()
            case .quiesce: return machine.quiesce()
            case .clientClosed: return machine.clientClosed()
            case .upstreamClosed: return machine.upstreamClosed(reason: "reset")
            case .timer(let seconds):
                return machine.timerFired(now: ConnectionMachineTests.at(seconds), headerTimeout: .seconds(10), idleTimeout: .seconds(75))
            }
        }
    }

    // MARK: Expected actions

    // Each names its X-Request-Id, so that the head the upstream gets is the same every time.
    static let get = "GET /a HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: t\r\n\r\n"
    static let post = "POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nX-Request-Id: t\r\n\r\n"
    static let chunkedPost = "POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nX-Request-Id: t\r\n\r\n"
    static let upgrade = "GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-Request-Id: t\r\n\r\n"
    static let close = "GET /a HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Request-Id: t\r\n\r\n"
    static let http10 = "GET /a HTTP/1.0\r\nX-Request-Id: t\r\n\r\n"

    /// The request as the upstream gets it, whole when it has no body.
    static func send(_ request: String, end: Bool = true, confirm: Bool = false) -> Action {
        guard case .success(var machine) = prepared(request.replacingOccurrences(of: "\r\n\r\n", with: "")),
            case .connect = machine.tokenObtained(token), case .sendRequest(let head, let ending, _, _) = machine.connected()
        else { fatalError("not sendable: \(request)") }
        let start = UpstreamRequestStart(
            head: head, headEnding: ending, framing: machine.bodyFraming, isHEAD: false, upgrade: request.contains("Upgrade: websocket"))
        return .sendRequest(start, body: [], end: end, confirmWrite: confirm)
    }

    static func head(_ status: Int, keepAlive: Bool, chunked: Bool = false) -> Action {
        .writeResponseHead(response(status, chunked: chunked), keepAlive: keepAlive)
    }

    static func refusal(_ request: String) -> Action {
        guard case .failure(let error) = prepared(request.replacingOccurrences(of: "\r\n\r\n", with: "")) else { fatalError("not refused: \(request)") }
        return .refuse(error)
    }

    static let start: [Action] = [.startRequest(sendContinue: false)]
    static let keptEnd: [Action] = [.writeResponseEnd(reuseUpstream: true, keepAlive: true), .requestFinished]
    static let closingEnd: [Action] = [.writeResponseEnd(reuseUpstream: true, keepAlive: false), .requestFinished]
    static let exchange: [(Step, [Action])] = [
        (.bytes(get), start), (.token, [.connect]), (.connected, [send(get)]), (.written, []), (.responseHead(200), [head(200, keepAlive: true)]),
    ]

    static let rows: [Row] = [
        Row(description: "a keep-alive exchange, then the next request is read",
            steps: exchange + [(.responseEnd, keptEnd), (.bytes(get), start)]),
        Row(description: "a pipelined request waits, held, until the one before it is answered",
            steps: [(.bytes(get + get), start), (.read, []), (.token, [.connect]), (.connected, [send(get)]), (.written, []), (.responseHead(200), [head(200, keepAlive: true)]),
                    (.responseEnd, keptEnd + [.readClient] + start)]),
        Row(description: "Connection: close from the client: the head says so, and nothing more is read",
            steps: [(.bytes(close), start), (.token, [.connect]), (.connected, [send(close)]), (.written, []),
                    (.responseHead(200), [head(200, keepAlive: false)]), (.responseEnd, closingEnd), (.bytes(get), []), (.read, [])]),
        Row(description: "an HTTP/1.0 client without keep-alive: closed after the answer",
            steps: [(.bytes(http10), start), (.token, [.connect]), (.connected, [send(http10)]), (.written, []),
                    (.responseHead(200), [head(200, keepAlive: false)]), (.responseEnd, closingEnd)]),
        Row(description: "TRACE: refused, then nothing is read",
            steps: [(.bytes("TRACE / HTTP/1.1\r\nHost: localhost\r\n\r\n"), [refusal("TRACE / HTTP/1.1\r\nHost: localhost\r\n\r\n")]), (.bytes("junk\r\n\r\n"), [])]),
        Row(description: "a rebinding Host: 403",
            steps: [(.bytes("GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n"), [refusal("GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n")])]),
        Row(description: "a TLS ClientHello on the plain port: 400 at once",
            steps: [(.bytes("\u{16}\u{03}\u{01}\u{02}\u{00}\u{01}\u{00}"),
                     [.refuse(.badRequest("malformed HTTP request: a TLS handshake was sent to a plain-HTTP port (use http://, not https://)"))])]),
        Row(description: "binary noise before a request line: 400 at once",
            steps: [(.bytes("\u{00}\u{01}"), [.refuse(.badRequest("malformed HTTP request: the request line does not start with a method and one space"))])]),
        Row(description: "a malformed chunk before anything went upstream: 400",
            steps: [(.bytes(chunkedPost), start), (.bytes("zz\r\n"), [.refuse(.badRequest("a chunk size line is not hexadecimal in the request body"))])]),
        Row(description: "a chunk extension holding a NUL: 400",
            steps: [(.bytes(chunkedPost), start), (.bytes("1;a\u{00}b\r\n"), [.refuse(.badRequest("a chunk extension holds a control character (NUL, CR, …) in the request body"))])]),
        Row(description: "a chunk extension holding a bare CR: 400",
            steps: [(.bytes(chunkedPost), start), (.bytes("1;a\rb\r\n"), [.refuse(.badRequest("a chunk extension holds a control character (NUL, CR, …) in the request body"))])]),
        Row(description: "a malformed chunk while the body is being sent: closed",
            steps: [(.bytes(chunkedPost), start), (.token, [.connect]), (.connected, [send(chunkedPost, end: false, confirm: true)]),
                    (.bytes("zz\r\n"), [.closeForMalformedBody(.badRequest("a chunk size line is not hexadecimal in the request body"))])]),
        Row(description: "an answer before the whole body: one keep-alive value, close, for head and end",
            steps: [(.bytes(post), start), (.token, [.connect]), (.connected, [send(post, end: false, confirm: true)]),
                    (.responseHead(200), [head(200, keepAlive: false)]), (.responseEnd, [.writeResponseEnd(reuseUpstream: false, keepAlive: false)]),
                    (.bytes("x"), [.requestFinished])]),
        Row(description: "half-close after a whole request: answered, then closed",
            steps: [(.bytes(get), start), (.inputClosed, []), (.token, [.connect]), (.connected, [send(get)]), (.written, []),
                    (.responseHead(200), [head(200, keepAlive: false)]), (.responseEnd, closingEnd)]),
        Row(description: "half-close mid-body: aborted", steps: [(.bytes(post), start), (.inputClosed, [.abort(.clientClosed)])]),
        Row(description: "half-close while idle: closed", steps: [(.inputClosed, [.close])]),
        Row(description: "quiesce while idle: closed now", steps: [(.quiesce, [.close])]),
        Row(description: "quiesce mid-request: answered, then closed",
            steps: [(.bytes(get), start), (.quiesce, []), (.token, [.connect]), (.connected, [send(get)]), (.written, []),
                    (.responseHead(200), [head(200, keepAlive: false)]), (.responseEnd, closingEnd), (.bytes(get), [])]),
        Row(description: "quiesce between a head that promised keep-alive and its end: closed after the end",
            steps: exchange + [(.quiesce, []), (.responseEnd, closingEnd)]),
        Row(description: "a WebSocket upgrade becomes a tunnel; what followed the request goes first",
            steps: [(.bytes(upgrade + "early"), start), (.token, [.connect]), (.connected, [send(upgrade)]),
                    (.responseHead(101), [.openTunnel(response(101, upgrade: true), earlyBytes: ByteBuffer(string: "early"))]),
                    (.bytes("x"), [.sendBodyPart(ByteBuffer(string: "x"))]), (.clientClosed, [.endTunnel]), (.bytes("y"), [])]),
        Row(description: "a 401 on the upgrade is refreshed and replayed",
            steps: [(.bytes(upgrade), start), (.token, [.connect]), (.connected, [send(upgrade)]),
                    (.responseHead(401), [.refreshAndReplay(rejected: "T", discardUpstream: true)]), (.token, [.connect]), (.connected, [send(upgrade)]),
                    (.responseHead(101), [.openTunnel(response(101, upgrade: true), earlyBytes: ByteBuffer())])]),
        Row(description: "the client leaves mid-answer: aborted once",
            steps: exchange + [(.clientClosed, [.abort(.clientClosed)]), (.clientClosed, [])]),
        Row(description: "the upstream leaves mid-answer: aborted", steps: exchange + [(.upstreamClosed, [.abort(.upstreamClosed)])]),
        Row(description: "a callback of an earlier request is ignored",
            steps: exchange + [(.responseEnd, keptEnd), (.bytes(get), start), (.staleToken, []), (.token, [.connect])]),
        // Timeouts (SPEC §2.2): the connection started at 0 s; headerTimeout 10 s, idleTimeout 75 s, readTimeout 3 s.
        Row(description: "a connection that sends nothing gets 408 at headerTimeout from its start",
            steps: [(.timer(seconds: 9), []), (.timer(seconds: 10), [.refuse(ProxyError(.requestTimeout, "the request head did not arrive within limits.headerTimeout (10s)"))])]),
        Row(description: "a head begun and late: 408",
            steps: [(.bytes("GET /a HT"), []), (.timer(seconds: 10), [.refuse(ProxyError(.requestTimeout, "the request head did not arrive within limits.headerTimeout (10s)"))])]),
        Row(description: "idle between requests: closed at idleTimeout without an answer",
            steps: exchange + [(.responseEnd, keptEnd), (.timer(seconds: 74), []), (.timer(seconds: 75), [.close])]),
        Row(description: "timeouts do not touch a request waiting for its token",
            steps: [(.bytes(get), start), (.timer(seconds: 10), []), (.timer(seconds: 80), [])]),
        Row(description: "an upstream that trickles its head still answers within readTimeout: 504",
            steps: [(.bytes(get), start), (.token, [.connect]), (.connected, [send(get)]), (.upstreamActivity(seconds: 1), []), (.upstreamActivity(seconds: 2), []),
                    (.timer(seconds: 3), [.respond(ProxyError(.upstreamTimeout, "the upstream did not answer within upstream.readTimeout (3s)"), discardUpstream: true, keepAlive: true), .requestFinished])]),
        Row(description: "once the head came, only silence counts",
            steps: exchange + [(.upstreamActivity(seconds: 2), []), (.timer(seconds: 4), []), (.timer(seconds: 5), [.abort(.upstreamTimeout)])]),
    ]

    @Test("what the connection does next", arguments: rows)
    func sequence(row: Row) {
        var driver = Driver()
        for (index, (step, expected)) in row.steps.enumerated() {
            let actions = driver.run(step)
            #expect(actions == expected, "step \(index + 1): \(step)")
        }
    }

    @Test func theCheckTimerFollowsTheEarliestDeadline() {
        var driver = Driver()
        #expect(driver.machine.nextCheck(now: Self.t0) == Self.at(10), "the first head is due at headerTimeout")
        _ = driver.run(.bytes(Self.get))
        #expect(driver.machine.nextCheck(now: Self.t0) == Self.at(10), "busy: looked at again after the shorter timeout")
        _ = driver.run(.token)
        _ = driver.run(.connected)
        #expect(driver.machine.nextCheck(now: Self.t0) == Self.at(3), "the read timeout comes first")
    }

    // MARK: Timers

    struct TimerRow: Sendable, CustomStringConvertible {
        var description: String
        var steps: @Sendable (inout ConnectionTimers) -> Void
        /// Seconds after the start at which the check is made.
        var at: Int64
        var expected: ConnectionTimers.IdleDecision
    }

    static let timerRows: [TimerRow] = [
        TimerRow(description: "a new connection: its first head is due at headerTimeout", steps: { _ in }, at: 5, expected: .checkAgain(at: at(10))),
        TimerRow(description: "a new connection that sent nothing by headerTimeout: 408", steps: { _ in }, at: 10, expected: .headTimedOut),
        TimerRow(description: "idle after a request, before the idle timeout", steps: { $0.requestStarted(); $0.becameIdle(now: at(0)) }, at: 5, expected: .checkAgain(at: at(15))),
        TimerRow(description: "idle past idleTimeout: closed", steps: { $0.requestStarted(); $0.becameIdle(now: at(0)) }, at: 75, expected: .closeIdle),
        TimerRow(description: "a head begun, within headerTimeout", steps: { $0.requestStarted(); $0.becameIdle(now: at(0)); $0.headBytesArrived(now: at(70)) }, at: 75, expected: .checkAgain(at: at(80))),
        TimerRow(description: "a head begun and late: 408", steps: { $0.requestStarted(); $0.becameIdle(now: at(0)); $0.headBytesArrived(now: at(70)) }, at: 80, expected: .headTimedOut),
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
        timers.watchSilence(limit: .seconds(30), now: Self.at(0), awaitingHead: false)
        #expect(timers.silenceCheck(now: Self.at(10)) == .checkAgain(at: Self.at(30)))
        timers.activity(now: Self.at(20))
        #expect(timers.silenceCheck(now: Self.at(30)) == .checkAgain(at: Self.at(50)), "an event stream that keeps talking never times out")
        #expect(timers.silenceCheck(now: Self.at(50)) == .timedOut)
        timers.stopWatchingSilence()
        #expect(timers.silenceCheck(now: Self.at(500)) == .stop)
    }

    @Test func aResponseHeadMustBeWholeWithinTheLimitHoweverItTrickles() {
        var timers = ConnectionTimers(headerTimeout: .seconds(10), idleTimeout: .seconds(75), now: Self.t0)
        timers.watchSilence(limit: .seconds(3), now: Self.at(0), awaitingHead: true)
        timers.activity(now: Self.at(2))
        #expect(timers.silenceCheck(now: Self.at(3)) == .timedOut, "bytes of an unfinished head are not activity")
        timers.watchSilence(limit: .seconds(3), now: Self.at(0), awaitingHead: true)
        timers.responseHeadArrived()
        timers.activity(now: Self.at(2))
        #expect(timers.silenceCheck(now: Self.at(3)) == .checkAgain(at: Self.at(5)))
    }
}
