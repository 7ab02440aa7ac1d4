import Atomics
import CoreMetrics
import NIOCore
import Prometheus

/// What the data path counts: relaxed atomics for `/status`, and swift-metrics instruments
/// backed by a Prometheus registry for `/metrics` (SPEC §7). Instruments are made once; the hot
/// path only increments.
public final class ProxyStatistics: Sendable {
    /// The registry `/metrics` renders.
    public let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory

    public let requests = ManagedAtomic<Int>(0)
    public let retries = ManagedAtomic<Int>(0)
    public let replaysAfter401 = ManagedAtomic<Int>(0)
    public let faultsInjected = ManagedAtomic<Int>(0)
    public let proxyErrors = ManagedAtomic<Int>(0)
    public let aborted = ManagedAtomic<Int>(0)

    private let requestsTotal: CoreMetrics.Counter
    private let requestDuration: CoreMetrics.Timer
    private let faultsTotal: CoreMetrics.Counter
    private let retriesByReason: [RetryReason: CoreMetrics.Counter]
    private let refreshesByResult: [RefreshResult: CoreMetrics.Counter]
    private let adoptionsTotal: CoreMetrics.Counter
    private let errorsByCode: [ProxyError.Code: CoreMetrics.Counter]
    private let abortsByReason: [AbortReason: CoreMetrics.Counter]
    /// Seconds left on the access token, set when `/metrics` is rendered.
    public let tokenSecondsLeft: CoreMetrics.Gauge

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
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
            .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2), .seconds(5), .seconds(10),
        ]
        self.registry = registry
        self.factory = factory
        requestsTotal = Counter(label: "tokenproxy_requests_total", factory: factory)
        requestDuration = Timer(label: "tokenproxy_request_duration_seconds", factory: factory)
        faultsTotal = Counter(label: "tokenproxy_faults_injected_total", factory: factory)
        retriesByReason = Dictionary(uniqueKeysWithValues: RetryReason.allCases.map {
            ($0, Counter(label: "tokenproxy_retries_total", dimensions: [("reason", $0.rawValue)], factory: factory))
        })
        refreshesByResult = Dictionary(uniqueKeysWithValues: RefreshResult.allCases.map {
            ($0, Counter(label: "tokenproxy_token_refreshes_total", dimensions: [("result", $0.rawValue)], factory: factory))
        })
        errorsByCode = Dictionary(uniqueKeysWithValues: ProxyError.Code.allCases.map {
            ($0, Counter(label: "tokenproxy_proxy_errors_total", dimensions: [("code", $0.rawValue)], factory: factory))
        })
        abortsByReason = Dictionary(uniqueKeysWithValues: AbortReason.allCases.map {
            ($0, Counter(label: "tokenproxy_requests_aborted_total", dimensions: [("reason", $0.rawValue)], factory: factory))
        })
        adoptionsTotal = Counter(label: "tokenproxy_token_adoptions_total", factory: factory)
        tokenSecondsLeft = Gauge(label: "tokenproxy_token_expires_in_seconds", factory: factory)
    }

    func requestStarted() {
        requests.wrappingIncrement(ordering: .relaxed)
        requestsTotal.increment()
    }

    func requestFinished(after duration: TimeAmount) {
        requestDuration.recordNanoseconds(duration.nanoseconds)
    }

    func retried(_ reason: RetryReason) {
        if reason == .upstream401 {
            replaysAfter401.wrappingIncrement(ordering: .relaxed)
        } else {
            retries.wrappingIncrement(ordering: .relaxed)
        }
        retriesByReason[reason]?.increment()
    }

    func faultInjected() {
        faultsInjected.wrappingIncrement(ordering: .relaxed)
        faultsTotal.increment()
    }

    func answeredByProxy(_ code: ProxyError.Code) {
        proxyErrors.wrappingIncrement(ordering: .relaxed)
        errorsByCode[code]?.increment()
    }

    func requestAborted(_ reason: AbortReason) {
        aborted.wrappingIncrement(ordering: .relaxed)
        abortsByReason[reason]?.increment()
    }

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
        }
    }

    /// The Prometheus text exposition of every metric.
    public func render() -> String {
        registry.emitToString()
    }
}
