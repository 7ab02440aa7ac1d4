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

    private let factory: PrometheusMetricsFactory
    private let faultsTotal: Count
    private let retriesByReason: [RetryReason: Count]
    private let errorsByCode: [ProxyError.Code: Count]
    private let abortsByReason: [AbortReason: Count]
    /// Per identity (SPEC §2.4): its refreshes, adoptions and token gauges, labelled `identity`.
    private let identities = NIOLockedValueBox<[String: IdentityCounts]>([:])
    /// Per route: its requests and their durations, labelled `route`; kept across reloads.
    private let routes = NIOLockedValueBox<[String: RouteStatistics]>([:])
    /// Serialises renders: each brings the counters up to the atomics once.
    private let renderLock = NIOLock()
    /// The live events of `/events` (SPEC §7), published where what they tell happens.
    public let events = EventHub()

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
        self.factory = factory
        func counts<Key: RawRepresentable & CaseIterable & Hashable>(_ label: String, _ dimension: String, _: Key.Type) -> [Key: Count] where Key.RawValue == String {
            Self.counts(label, dimension, Key.self, factory: factory)
        }
        faultsTotal = Count("tokenproxy_faults_injected_total", factory: factory)
        retriesByReason = counts("tokenproxy_retries_total", "reason", RetryReason.self)
        errorsByCode = counts("tokenproxy_proxy_errors_total", "code", ProxyError.Code.self)
        abortsByReason = counts("tokenproxy_requests_aborted_total", "reason", AbortReason.self)
    }

    static func counts<Key: RawRepresentable & CaseIterable & Hashable>(
        _ label: String, _ dimension: String, _: Key.Type, labels: [(String, String)] = [], factory: PrometheusMetricsFactory
    ) -> [Key: Count] where Key.RawValue == String {
        Dictionary(uniqueKeysWithValues: Key.allCases.map { ($0, Count(label, dimensions: labels + [(dimension, $0.rawValue)], factory: factory)) })
    }

    // MARK: Counting (the data path)

    /// The counts of the route `name` (SPEC §2.4), one ``LoopStatistics`` per event loop; the
    /// same object for the same name, so that a reload keeps the counts.
    func route(_ name: String, loops: Int) -> RouteStatistics {
        routes.withLockedValue { routes in
            if let known = routes[name], known.loops.count == loops { return known }
            let made = RouteStatistics(name: name, loops: loops)
            routes[name] = made
            return made
        }
    }

    /// The counts of the identity `name`.
    private func identity(_ name: String) -> IdentityCounts {
        identities.withLockedValue { identities in
            if let known = identities[name] { return known }
            let made = IdentityCounts(name: name, factory: factory)
            identities[name] = made
            return made
        }
    }

    func retried(_ reason: RetryReason) { retriesByReason[reason]?.increment() }

    func faultInjected() { faultsTotal.increment() }

    func answeredByProxy(_ code: ProxyError.Code) { errorsByCode[code]?.increment() }

    func requestAborted(_ reason: AbortReason) { abortsByReason[reason]?.increment() }

    /// Counts the broker's calls to the token endpoint by outcome, and the tokens it adopted from
    /// other processes apart from them; pass it as the broker's observer.
    public func observe(_ event: TokenBroker.RefreshEvent, identity name: String = Configuration.defaultIdentity) {
        let counts = identity(name)
        let refreshesByResult = counts.refreshes
        let adoptionsTotal = counts.adoptions
        switch event {
        case .refreshing: break
        case .refreshed: refreshesByResult[.success]?.increment()
        case .adopted: adoptionsTotal.increment()
        case .transientFailure: refreshesByResult[.transientFailure]?.increment()
        case .reauthenticationRequired: refreshesByResult[.reauthenticationRequired]?.increment()
        case .misconfigured: refreshesByResult[.configurationError]?.increment()
        case .refreshTokenExpiring, .recorded: break
        }
    }

    // MARK: Reading (`/status`, `/metrics`)

    public var requests: Int { routes.withLockedValue { $0.values.reduce(0) { $0 + $1.requests } } }

    /// What `/status` and the status page show of the route `name` (SPEC §7).
    public struct RouteFigures: Sendable, Equatable {
        public var requests: Int
        public var recovered401: Int
        public var errors: [String: Int]
        public var latencyMilliseconds: (p50: Double, p99: Double)?

        public static func == (lhs: RouteFigures, rhs: RouteFigures) -> Bool {
            lhs.requests == rhs.requests && lhs.recovered401 == rhs.recovered401 && lhs.errors == rhs.errors
                && lhs.latencyMilliseconds?.p50 == rhs.latencyMilliseconds?.p50 && lhs.latencyMilliseconds?.p99 == rhs.latencyMilliseconds?.p99
        }
    }

    public func figures(route name: String) -> RouteFigures {
        guard let route = routes.withLockedValue({ $0[name] }) else { return RouteFigures(requests: 0, recovered401: 0, errors: [:]) }
        return RouteFigures(requests: route.requests, recovered401: route.recovered401s, errors: route.errors, latencyMilliseconds: route.latencyMilliseconds)
    }

    /// Requests of the route `name` so far.
    public func requests(route name: String) -> Int { routes.withLockedValue { $0[name]?.requests ?? 0 } }

    /// Sets the token gauges of `identity` (done when `/metrics` is rendered).
    public func recordTokenExpiry(secondsLeft: Double?, refreshTokenSecondsLeft: Double?, reauthenticationRequired: Bool = false, identity name: String) {
        let counts = identity(name)
        counts.reauthenticationRequired.record(reauthenticationRequired ? 1 : 0)
        if let secondsLeft { counts.tokenSecondsLeft.record(max(secondsLeft, 0)) }
        if let refreshTokenSecondsLeft { counts.refreshTokenSecondsLeft.record(max(refreshTokenSecondsLeft, 0)) }
    }
    /// Retries other than the 401 replay.
    public var retries: Int { retriesByReason.filter { $0.key != .upstream401 }.values.reduce(0) { $0 + $1.value } }
    public var replaysAfter401: Int { retriesByReason[.upstream401]?.value ?? 0 }
    public var faultsInjected: Int { faultsTotal.value }
    public var proxyErrors: Int { errorsByCode.values.reduce(0) { $0 + $1.value } }
    public var aborted: Int { abortsByReason.values.reduce(0) { $0 + $1.value } }

    /// The Prometheus text exposition of every metric.
    public func render() -> String {
        renderLock.withLock {
            for count in allCounts { count.publish() }
            let routes = self.routes.withLockedValue { $0.values.sorted { $0.name < $1.name } }
            return registry.emitToString() + RouteStatistics.render(routes)
        }
    }

    private var allCounts: [Count] {
        let identities = self.identities.withLockedValue { Array($0.values) }
        return [faultsTotal] + Array(retriesByReason.values) + Array(errorsByCode.values) + Array(abortsByReason.values)
            + identities.flatMap { Array($0.refreshes.values) + [$0.adoptions] }
    }
}

/// One identity's token metrics, labelled `identity` (SPEC §7).
private final class IdentityCounts: Sendable {
    let refreshes: [ProxyStatistics.RefreshResult: Count]
    let adoptions: Count
    /// Seconds left on the access token, set when `/metrics` is rendered.
    let tokenSecondsLeft: CoreMetrics.Gauge
    /// Seconds until the refresh token expires, when that is known (SPEC §2.1).
    let refreshTokenSecondsLeft: CoreMetrics.Gauge
    /// 1 while a new login is needed (however this process learned it), else 0.
    let reauthenticationRequired: CoreMetrics.Gauge

    init(name: String, factory: PrometheusMetricsFactory) {
        let label = [("identity", name)]
        refreshes = ProxyStatistics.counts("tokenproxy_token_refreshes_total", "result", ProxyStatistics.RefreshResult.self, labels: label, factory: factory)
        adoptions = Count("tokenproxy_token_adoptions_total", dimensions: label, factory: factory)
        tokenSecondsLeft = Gauge(label: "tokenproxy_token_expires_in_seconds", dimensions: label, factory: factory)
        refreshTokenSecondsLeft = Gauge(label: "tokenproxy_refresh_token_expiry_seconds", dimensions: label, factory: factory)
        reauthenticationRequired = Gauge(label: "tokenproxy_token_reauthentication_required", dimensions: label, factory: factory)
    }
}

/// One route's requests: a ``LoopStatistics`` per event loop, rendered with a `route` label.
final class RouteStatistics: Sendable {
    let name: String
    /// Indexed by the event loop's position in the group.
    let loops: [LoopStatistics]

    init(name: String, loops: Int) {
        self.name = name
        self.loops = (0..<loops).map { _ in LoopStatistics() }
    }

    var requests: Int { loops.reduce(0) { $0 + $1.requests } }

    /// Requests answered after a 401 and a replay with a new token (rare: a shared atomic).
    private let recovered = ManagedAtomic<Int>(0)
    /// The proxy's own answers, by code (rare: shared atomics).
    private let errorsByCode = Dictionary(uniqueKeysWithValues: ProxyError.Code.allCases.map { ($0, ManagedAtomic<Int>(0)) })

    func recovered401() { recovered.wrappingIncrement(ordering: .relaxed) }
    func answeredByProxy(_ code: ProxyError.Code) { errorsByCode[code]?.wrappingIncrement(ordering: .relaxed) }

    var recovered401s: Int { recovered.load(ordering: .relaxed) }
    /// The proxy's own answers so far, by code, without the codes never answered.
    var errors: [String: Int] {
        errorsByCode.reduce(into: [:]) { errors, entry in
            let count = entry.value.load(ordering: .relaxed)
            if count > 0 { errors[entry.key.rawValue] = count }
        }
    }

    /// The median and 99th percentile of the request durations so far, in milliseconds,
    /// estimated from the histogram (linear within a bucket); `nil` before the first request.
    var latencyMilliseconds: (p50: Double, p99: Double)? {
        let counts = LoopStatistics.bucketCounts(loops)
        let total = counts.reduce(0, +)
        guard total > 0 else { return nil }
        func quantile(_ q: Double) -> Double {
            let rank = q * Double(total)
            var below = 0
            for (index, count) in counts.enumerated() where count > 0 {
                if Double(below + count) >= rank {
                    let lower = index == 0 ? 0 : Double(LoopStatistics.bounds[index - 1])
                    // Above every bound: the last bound is the best there is.
                    let upper = index < LoopStatistics.bounds.count ? Double(LoopStatistics.bounds[index]) : lower
                    let share = (rank - Double(below)) / Double(count)
                    return (lower + (upper - lower) * min(max(share, 0), 1)) / 1e6
                }
                below += count
            }
            return Double(LoopStatistics.bounds.last!) / 1e6
        }
        return (quantile(0.5), quantile(0.99))
    }

    /// `tokenproxy_requests_total` and `tokenproxy_request_duration_seconds`, a series per route.
    static func render(_ routes: [RouteStatistics]) -> String {
        var text = "# TYPE tokenproxy_requests_total counter\n"
        for route in routes {
            text += "tokenproxy_requests_total{route=\"\(route.name)\"} \(route.requests)\n"
        }
        text += "# TYPE \(LoopStatistics.durationName) histogram\n"
        for route in routes {
            text += LoopStatistics.renderDurations(route.loops, labels: "route=\"\(route.name)\"")
        }
        return text
    }
}

/// One count: an atomic the data path increments, and the Prometheus counter that `/metrics`
/// brings up to it when it renders.
final class Count: Sendable {
    private let atomic = ManagedAtomic<Int>(0)
    /// What the Prometheus counter holds (only touched under the render lock).
    private let published = ManagedAtomic<Int>(0)
    private let counter: CoreMetrics.Counter

    init(_ label: String, dimensions: [(String, String)] = [], factory: PrometheusMetricsFactory) {
        counter = Counter(label: label, dimensions: dimensions, factory: factory)
    }

    func increment() { atomic.wrappingIncrement(ordering: .relaxed) }

    var value: Int { atomic.load(ordering: .relaxed) }

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

    static let durationName = "tokenproxy_request_duration_seconds"

    /// The histogram's buckets (not cumulative) summed over `loops`.
    static func bucketCounts(_ loops: [LoopStatistics]) -> [Int] {
        var counts = [Int](repeating: 0, count: bounds.count + 1)
        for loop in loops {
            for index in counts.indices { counts[index] += loop.buckets[index].load(ordering: .relaxed) }
        }
        return counts
    }

    /// `tokenproxy_request_duration_seconds` in the Prometheus text format, summed over `loops`,
    /// each series with `labels` (`route="…"`).
    static func renderDurations(_ loops: [LoopStatistics], labels: String) -> String {
        let name = durationName
        let counts = bucketCounts(loops)
        let sum = loops.reduce(Int64(0)) { $0 + $1.sumNanoseconds.load(ordering: .relaxed) }
        var text = ""
        var cumulative = 0
        for (index, bound) in bounds.enumerated() {
            cumulative += counts[index]
            text += "\(name)_bucket{\(labels),le=\"\(Double(bound) / 1e9)\"} \(cumulative)\n"
        }
        cumulative += counts[bounds.count]
        text += "\(name)_bucket{\(labels),le=\"+Inf\"} \(cumulative)\n"
        text += "\(name)_sum{\(labels)} \(Double(sum) / 1e9)\n"
        text += "\(name)_count{\(labels)} \(cumulative)\n"
        return text
    }
}
