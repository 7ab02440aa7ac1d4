import Logging
import NIOCore
import NIOHTTP1

/// What the log line and the duration metric of one request need, from its head (or from the
/// error that ended the connection before a head) to its ending.
struct RequestRecord {
    var clientAddress = "unknown"
    /// A request is being recorded (its ending not logged yet).
    private(set) var isOpen = false
    private var started = NIODeadline.now()
    /// The request target's bytes, made text only for a log line.
    private var target: ByteBuffer?
    private(set) var requestID: RequestID?
    /// The method, also for a request the rules refused (which never became a request machine).
    private(set) var method: HTTPMethod?
    /// The status the client got from the upstream (0: none yet).
    var status: UInt = 0
    /// The route that took the request (SPEC §2.4), for the log line.
    private var route: String?

    mutating func start(target: ByteBuffer?, requestID: RequestID, method: HTTPMethod?, route: String?) {
        self.route = route
        isOpen = true
        started = .now()
        status = 0
        self.target = target
        self.requestID = requestID
        self.method = method
    }

    /// How an ending came about, for the log line.
    struct Ending {
        var status: UInt?
        var error: ProxyError? = nil
        var aborted: ProxyStatistics.AbortReason? = nil
        var reason: String? = nil
        var attempts = 0
        var refreshed = false
    }

    /// Every ending of a request comes here: answered (by the upstream or the proxy), refused, or
    /// aborted. `tries` (attempts, and whether a refresh happened) is asked for only when a line
    /// is logged.
    /// `traceMetadata` gives the request's `trace_id` and `span_id` when it is traced (SPEC §2.6).
    mutating func finish(
        _ ending: Ending, statistics: LoopStatistics, logger: Logger, tries: () -> (attempts: Int, refreshed: Bool),
        traceMetadata: () -> Logger.Metadata? = { nil }
    ) {
        isOpen = false
        let duration = NIODeadline.now() - started
        statistics.requestFinished(after: duration)
        guard logger.logLevel <= .info || ending.error != nil || (ending.aborted != nil && ending.aborted != .clientClosed) else { return }
        var ending = ending
        (ending.attempts, ending.refreshed) = tries()
        var metadata: Logger.Metadata = [
            "requestId": "\(requestID?.description ?? "-")", "method": "\(method?.rawValue ?? "-")",
            "attempts": "\(ending.attempts)", "durationMs": "\(duration.nanoseconds / 1_000_000)", "refreshed": "\(ending.refreshed)",
        ]
        if let status = ending.status, status > 0 { metadata["status"] = "\(status)" }
        if let trace = traceMetadata() { metadata.merge(trace) { current, _ in current } }
        if let route { metadata["route"] = "\(route)" }
        if let target, target.readableBytes > 0 { metadata["path"] = "\(Self.pathOnly(String(buffer: target)))" }
        if let error = ending.error {
            metadata["error"] = "\(error.code.rawValue)"
            metadata["reason"] = "\(error.message)"
            logger.warning("request answered by the proxy", metadata: metadata)
        } else if let aborted = ending.aborted {
            metadata["aborted"] = "\(aborted.rawValue)"
            if let reason = ending.reason { metadata["reason"] = "\(reason)" }
            // A client that goes away is its own business; the upstream failing mid-answer is not.
            if aborted == .clientClosed {
                logger.info("request aborted", metadata: metadata)
            } else {
                logger.warning("request aborted", metadata: metadata)
            }
        } else {
            logger.info("request", metadata: metadata)
        }
    }

    /// The client's address for `X-Forwarded-For` and the log.
    static func describe(_ address: SocketAddress?) -> String {
        switch address {
        case .v4(let address)?: address.host
        case .v6(let address)?: address.host
        default: "unix"
        }
    }

    /// The path without its query, which may carry secrets.
    static func pathOnly(_ uri: String) -> Substring {
        uri.prefix { $0 != "?" }
    }
}
