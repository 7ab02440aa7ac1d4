import Atomics
import Logging
import NIOCore
import Tracing

/// What every connection of one listener shares: its routes (SPEC §2.4), immutable rules and
/// thread-safe services. A reload publishes a new one; each request reads the current one once.
final class ProxyContext: AtomicReference, Sendable {
    /// The listener's routes; ``table`` resolves a request to one of them.
    let routes: [RouteContext]
    let table: RouteTable
    /// What a request that no route takes is checked against before it is told `no_route`, so
    /// that a refused `Host` or a browser's request still gets its 403 first.
    let listenerGuard: ClientGuard
    let limits: Configuration.Limits
    let drainTimeout: Duration
    let faults: FaultSettings
    let statistics: ProxyStatistics
    /// The tracer, when traces are on (SPEC §2.6).
    let tracer: (any Tracer)?
    /// The counts of requests no route took (refused heads, `no_route`).
    let unrouted: RouteStatistics
    let logger: Logger

    init(
        listen: ListenAddress, configuration: Configuration, routes: [RouteContext], faults: FaultSettings, statistics: ProxyStatistics,
        tracer: (any Tracer)?, loops: Int, logger: Logger
    ) {
        self.tracer = tracer
        self.routes = routes
        table = RouteTable(routes.enumerated().map { RouteTable.entry(host: $1.route.host, pathPrefix: $1.route.pathPrefix, route: $0) })
        listenerGuard = ClientGuard(configuration, listen: listen, requiredHeader: nil)
        limits = configuration.limits
        drainTimeout = configuration.drainTimeout
        self.faults = faults
        self.statistics = statistics
        // Not a valid route name, so never one route's counts.
        unrouted = statistics.route("(none)", loops: loops)
        self.logger = logger
    }

    /// The limits the request parser enforces (SPEC §2.2 `limits`).
    var parserLimits: ClientRequestParser.Limits {
        ClientRequestParser.Limits(maxHeaderBytes: limits.maxHeaderBytes, maxURIBytes: limits.maxUriBytes)
    }
}

/// One route as the data path uses it: its rules, retries, upstream and identity (SPEC §2.4).
final class RouteContext: Sendable {
    let route: Configuration.Route
    let rules: ForwardingRules
    let retryPolicy: RetryPolicy
    let replayLimit: Int
    let readTimeout: Duration
    let broker: TokenBroker
    let publisher: TokenPublisher
    let upstream: UpstreamTarget
    let statistics: RouteStatistics

    init(route: Configuration.Route, configuration: Configuration, broker: TokenBroker, upstream: UpstreamTarget, statistics: RouteStatistics) {
        self.route = route
        rules = ForwardingRules(
            upstream: route.upstream.url, clientGuard: ClientGuard(configuration, listen: route.listen, requiredHeader: route.requireHeader),
            limits: configuration.limits, stripPrefix: route.stripPrefix ? route.normalizedPrefix.utf8.count : 0,
            upstreamSpeaksHTTP2: upstream.speaksHTTP2)
        retryPolicy = RetryPolicy(route.retry)
        replayLimit = route.retry.replayBuffer
        readTimeout = route.upstream.readTimeout
        self.broker = broker
        publisher = broker.publisher
        self.upstream = upstream
        self.statistics = statistics
    }

    var name: String { route.name }
}

extension ProxyContext {
    /// A request head through the routes and the forwarding rules, as a connection takes it up.
    struct PreparedHead {
        /// The machine that carries the request, or why the rules refused it.
        var machine: Result<RequestStateMachine, ProxyError>
        /// The client's `X-Request-Id`, or the one generated for it (also for a refusal).
        var requestID: RequestID
        /// The route that took it; `nil` when none did.
        var route: RouteContext?
    }

    /// `random` draws the injected 401s of `faults.upstream401Percent`.
    func prepare(_ head: ClientRequestHead, clientAddress: String, random: inout SplitMix64) -> PreparedHead {
        guard let route = self.route(for: head) else {
            let id = head.first(.requestID).map(RequestID.client) ?? .generate()
            let refusal = head.bytes.withUnsafeReadableBytes { raw in
                listenerGuard.refusal(
                    host: head.fields.first { $0.kind == .host }.map { UnsafeRawBufferPointer(rebasing: raw[$0.value]) },
                    origin: head.first(.origin), fetchSite: head.first(.secFetchSite), carries: { _ in true })
            }
            let error = refusal ?? ProxyError(.noRoute, "no route of this listener takes host \"\((head.first(.host) ?? "").prefix(100))\" and path \"\(RequestRecord.pathOnly(head.target).prefix(200))\"; see routes in the configuration")
            return PreparedHead(machine: .failure(error), requestID: id, route: nil)
        }
        let faultsEnabled = faults.enabled
        switch route.rules.prepare(head, clientAddress: clientAddress, faultsEnabled: faultsEnabled, tracing: tracer != nil) {
        case .success(let request):
            let machine = RequestStateMachine(
                request: request, policy: route.retryPolicy, replayLimit: route.replayLimit,
                injectFirst401: faultsEnabled && faults.drawUpstream401(using: &random))
            return PreparedHead(machine: .success(machine), requestID: request.requestID, route: route)
        case .failure(let error):
            let id = head.first(.requestID).map(RequestID.client) ?? .generate()
            return PreparedHead(machine: .failure(error), requestID: id, route: route)
        }
    }

    /// The route that takes `head`: by its `Host` and path (SPEC §2.4).
    private func route(for head: ClientRequestHead) -> RouteContext? {
        if table.takesEverything { return routes[0] }
        return head.bytes.withUnsafeReadableBytes { raw -> RouteContext? in
            let host = head.fields.first { $0.kind == .host }.map { UnsafeRawBufferPointer(rebasing: raw[$0.value]) }
            let path = UnsafeRawBufferPointer(rebasing: raw[head.pathRange])
            return table.resolve(host: host, path: path).map { routes[$0] }
        }
    }
}

/// The current ``ProxyContext``, published by reloads and read by every request. A reader keeps
/// the context it has while the version is unchanged: the hot path then reads a counter that
/// only reloads write, instead of doing an atomic reference load (a compare-and-swap on a line
/// that every event loop would keep taking from the others).
final class ProxyContextBox: Sendable {
    private let current: ManagedAtomic<ProxyContext>
    private let published = ManagedAtomic<Int>(0)

    init(_ context: ProxyContext) {
        current = ManagedAtomic(context)
    }

    /// Bumped by each ``store(_:)``.
    var version: Int { published.load(ordering: .acquiring) }

    func load() -> ProxyContext { current.load(ordering: .acquiring) }

    func store(_ context: ProxyContext) {
        current.store(context, ordering: .releasing)
        published.wrappingIncrement(ordering: .releasing)
    }

}

/// One connection's view of the current ``ProxyContext``: kept while the box's version is
/// unchanged, so that the hot path reads a counter only reloads write.
struct ProxyContextView {
    let box: ProxyContextBox
    private(set) var current: ProxyContext
    private var version: Int

    init(_ box: ProxyContextBox) {
        self.box = box
        version = box.version
        current = box.load()
    }

    /// Takes up the context a reload published, if any.
    mutating func refresh() {
        let version = box.version
        guard version != self.version else { return }
        current = box.load()
        self.version = version
    }
}
