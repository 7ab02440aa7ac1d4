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
        self.broker = broker
        publisher = broker.publisher
        self.faults = faults
        self.statistics = statistics
        self.logger = logger
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
