import Atomics
import Logging
import NIOCore

/// What every connection handler of one proxy shares: immutable rules and thread-safe services.
/// A reload publishes a new one; each request reads the current one once.
final class ProxyContext: AtomicReference, Sendable {
    let rules: ForwardingRules
    let retryPolicy: RetryPolicy
    let replayLimit: Int
    let readTimeout: Duration
    let drainTimeout: Duration
    let broker: TokenBroker
    let publisher: TokenPublisher
    let faults: FaultSettings
    let statistics: ProxyStatistics
    let logger: Logger

    init(configuration: Configuration, broker: TokenBroker, faults: FaultSettings, statistics: ProxyStatistics, logger: Logger) {
        rules = ForwardingRules(upstream: configuration.upstream.url, clientGuard: ClientGuard(configuration), limits: configuration.limits)
        retryPolicy = RetryPolicy(configuration.retry)
        replayLimit = configuration.retry.replayBuffer
        readTimeout = configuration.upstream.readTimeout
        drainTimeout = configuration.drainTimeout
        self.broker = broker
        publisher = broker.publisher
        self.faults = faults
        self.statistics = statistics
        self.logger = logger
    }
}

extension ProxyContext {
    /// A request head through the forwarding rules, as a connection takes it up.
    struct PreparedHead {
        /// The machine that carries the request, or why the rules refused it.
        var machine: Result<RequestStateMachine, ProxyError>
        /// The client's `X-Request-Id`, or the one generated for it (also for a refusal).
        var requestID: RequestID
    }

    /// `random` draws the injected 401s of `faults.upstream401Percent`.
    func prepare(_ head: ClientRequestHead, clientAddress: String, random: inout SplitMix64) -> PreparedHead {
        let faultsEnabled = faults.enabled
        switch rules.prepare(head, clientAddress: clientAddress, faultsEnabled: faultsEnabled) {
        case .success(let request):
            let machine = RequestStateMachine(
                request: request, policy: retryPolicy, replayLimit: replayLimit,
                injectFirst401: faultsEnabled && faults.drawUpstream401(using: &random))
            return PreparedHead(machine: .success(machine), requestID: request.requestID)
        case .failure(let error):
            let id = head.first(.requestID).map(RequestID.client) ?? .generate()
            return PreparedHead(machine: .failure(error), requestID: id)
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
