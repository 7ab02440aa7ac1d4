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
