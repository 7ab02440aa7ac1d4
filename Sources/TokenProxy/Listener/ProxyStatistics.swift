import Atomics
import CoreMetrics
import NIOConcurrencyHelpers
import NIOCore
import Prometheus

/// What the data path counts, in one place: relaxed atomics, which `/status` reads and which
/// `/metrics` brings its Prometheus counters up to when it renders (SPEC §7). What every request
/// counts (the request and its duration) goes to its event loop's ``LoopStatistics``, so that
/// the two loops never write the same cache line; the rarer counts are shared atomics.
public final class ProxyStatistics: Sendable {
    /// The registry `/metrics` renders.
    public let registry: PrometheusCollectorRegistry

    private let requestsTotal: Count
    private let faultsTotal: Count
    private let retriesByReason: [RetryReason: Count]
    private let errorsByCode: [ProxyError.Code: Count]
    private let abortsByReason: [AbortReason: Count]
    private let refreshesByResult: [RefreshResult: Count]
    private let adoptionsTotal: Count
    private let loops = NIOLockedValueBox<[LoopStatistics]>([])
    /// Seconds left on the access token, set when `/metrics` is rendered.
    public let tokenSecondsLeft: CoreMetrics.Gauge
    /// Seconds until the refresh token expires, when that is known (SPEC §2.1).
    public let refreshTokenSecondsLeft: CoreMetrics.Gauge
    /// Serialises renders: each brings the counters up to the atomics once.
    private let renderLock = NIOLock()

    public enum RetryReason: String, Sendable, CaseIterable {
        case notSent = "not_sent", reset, upstream502 = "upstream_502", upstream503 = "upstream_503", upstream504 = "upstream_504"
        case upstream401 = "upstream_401"
    }

    /// Why a request ended without a complete answer (the client connection was closed).
    public enum AbortReason: String, Sendable, CaseIterable {
        case clientClosed = "client_closed", upstreamClosed = "upstream_closed", upstreamTimeout = "upstream_timeout"
        case malformedBody = "malformed_body"
    }

    public enum RefreshResult: String, Sendable, CaseIterable {
        case success, transientFailure = "transient_failure", reauthenticationRequired = "reauthentication_required"
        case configurationError = "configuration_error"
    }

    public init() {
        let registry = PrometheusCollectorRegistry()
        let factory = PrometheusMetricsFactory(registry: registry)
        self.registry = registry
        func counts<Key: RawRepresentable & CaseIterable & Hashable>(_ label: String, _ dimension: String, _: Key.Type) -> [Key: Count] where Key.RawValue == String {
            Dictionary(uniqueKeysWithValues: Key.allCases.map { ($0, Count(label, dimensions: [(dimension, $0.rawValue)], factory: factory)) })
        }
        requestsTotal = Count("tokenproxy_requests_total", factory: factory)
        faultsTotal = Count("tokenproxy_faults_injected_total", factory: factory)
        retriesByReason = counts("tokenproxy_retries_total", "reason", RetryReason.self)
        errorsByCode = counts("tokenproxy_proxy_errors_total", "code", ProxyError.Code.self)
        abortsByReason = counts("tokenproxy_requests_aborted_total", "reason", AbortReason.self)
        refreshesByResult = counts("tokenproxy_token_refreshes_total", "result", RefreshResult.self)
        adoptionsTotal = Count("tokenproxy_token_adoptions_total", factory: factory)
        tokenSecondsLeft = Gauge(label: "tokenproxy_token_expires_in_seconds", factory: factory)
        refreshTokenSecondsLeft = Gauge(label: "tokenproxy_refresh_token_expiry_seconds", factory: factory)
    }

    // MARK: Counting (the data path)

    /// The counts of one more event loop's requests; use it on that loop only.
    func makeLoopStatistics() -> LoopStatistics {
        let loop = LoopStatistics()
        loops.withLockedValue { $0.append(loop) }
        return loop
    }

    func retried(_ reason: RetryReason) { retriesByReason[reason]?.increment() }

    func faultInjected() { faultsTotal.increment() }

    func answeredByProxy(_ code: ProxyError.Code) { errorsByCode[code]?.increment() }

    func requestAborted(_ reason: AbortReason) { abortsByReason[reason]?.increment() }

    /// Counts the broker's calls to the token endpoint by outcome, and the tokens it adopted from
    /// other processes apart from them; pass it as the broker's observer.
    public func observe(_ event: TokenBroker.RefreshEvent) {
        switch event {
        case .refreshing: break
        case .refreshed: refreshesByResult[.success]?.increment()
        case .adopted: adoptionsTotal.increment()
        case .transientFailure: refreshesByResult[.transientFailure]?.increment()
        case .reauthenticationRequired: refreshesByResult[.reauthenticationRequired]?.increment()
        case .misconfigured: refreshesByResult[.configurationError]?.increment()
        case .refreshTokenExpiring: break
        }
    }

    // MARK: Reading (`/status`, `/metrics`)

    public var requests: Int { loops.withLockedValue { $0.reduce(0) { $0 + $1.requests } } }
    /// Retries other than the 401 replay.
    public var retries: Int { retriesByReason.filter { $0.key != .upstream401 }.values.reduce(0) { $0 + $1.value } }
    public var replaysAfter401: Int { retriesByReason[.upstream401]?.value ?? 0 }
    public var faultsInjected: Int { faultsTotal.value }
    public var proxyErrors: Int { errorsByCode.values.reduce(0) { $0 + $1.value } }
    public var aborted: Int { abortsByReason.values.reduce(0) { $0 + $1.value } }

    /// The Prometheus text exposition of every metric.
    public func render() -> String {
        renderLock.withLock {
            requestsTotal.publish(total: requests)
            for count in allCounts { count.publish() }
            return registry.emitToString() + LoopStatistics.renderDurations(loops.withLockedValue { $0 })
        }
    }

    private var allCounts: [Count] {
        [requestsTotal, faultsTotal, adoptionsTotal] + Array(retriesByReason.values) + Array(errorsByCode.values)
            + Array(abortsByReason.values) + Array(refreshesByResult.values)
    }
}

/// One count: an atomic the data path increments, and the Prometheus counter that `/metrics`
/// brings up to it when it renders.
private final class Count: Sendable {
    private let atomic = ManagedAtomic<Int>(0)
    /// What the Prometheus counter holds (only touched under the render lock).
    private let published = ManagedAtomic<Int>(0)
    private let counter: CoreMetrics.Counter

    init(_ label: String, dimensions: [(String, String)] = [], factory: PrometheusMetricsFactory) {
        counter = Counter(label: label, dimensions: dimensions, factory: factory)
    }

    func increment() { atomic.wrappingIncrement(ordering: .relaxed) }

    var value: Int { atomic.load(ordering: .relaxed) }

    /// Brings the Prometheus counter up to `total`, a count kept elsewhere.
    func publish(total: Int) {
        atomic.store(total, ordering: .relaxed)
        publish()
    }

    func publish() {
        let now = value
        let delta = now - published.load(ordering: .relaxed)
        guard delta > 0 else { return }
        counter.increment(by: Int64(delta))
        published.store(now, ordering: .relaxed)
    }
}

/// What one event loop's requests count: the requests and the histogram of their durations.
/// Written only from that loop, so an increment is a plain load and store (no read-modify-write
/// on a line another core keeps taking); read by `/status` and `/metrics` from anywhere.
final class LoopStatistics: Sendable {
    /// The histogram's upper bounds (`le`), in nanoseconds, as SPEC §7 lists them.
    static let bounds: [Int64] = [
        500_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000, 25_000_000, 50_000_000, 100_000_000, 250_000_000, 500_000_000,
        1_000_000_000, 2_000_000_000, 5_000_000_000, 10_000_000_000,
    ]

    private let started = ManagedAtomic<Int>(0)
    /// Per bound, the requests that took at most that long and more than the bound before; the
    /// last one counts those above every bound.
    private let buckets = (0...LoopStatistics.bounds.count).map { _ in ManagedAtomic<Int>(0) }
    private let sumNanoseconds = ManagedAtomic<Int64>(0)

    var requests: Int { started.load(ordering: .relaxed) }

    func requestStarted() {
        started.store(started.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
    }

    func requestFinished(after duration: TimeAmount) {
        let nanoseconds = duration.nanoseconds
        var index = 0
        while index < Self.bounds.count, nanoseconds > Self.bounds[index] { index += 1 }
        let bucket = buckets[index]
        bucket.store(bucket.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
        sumNanoseconds.store(sumNanoseconds.load(ordering: .relaxed) &+ nanoseconds, ordering: .relaxed)
    }

    /// `tokenproxy_request_duration_seconds` in the Prometheus text format, summed over `loops`.
    static func renderDurations(_ loops: [LoopStatistics]) -> String {
        let name = "tokenproxy_request_duration_seconds"
        var counts = [Int](repeating: 0, count: bounds.count + 1)
        var sum: Int64 = 0
        for loop in loops {
            for index in counts.indices { counts[index] += loop.buckets[index].load(ordering: .relaxed) }
            sum += loop.sumNanoseconds.load(ordering: .relaxed)
        }
        var text = "# TYPE \(name) histogram\n"
        var cumulative = 0
        for (index, bound) in bounds.enumerated() {
            cumulative += counts[index]
            text += "\(name)_bucket{le=\"\(Double(bound) / 1e9)\"} \(cumulative)\n"
        }
        cumulative += counts[bounds.count]
        text += "\(name)_bucket{le=\"+Inf\"} \(cumulative)\n"
        text += "\(name)_sum \(Double(sum) / 1e9)\n"
        text += "\(name)_count \(cumulative)\n"
        return text
    }
}
