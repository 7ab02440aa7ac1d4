import Atomics

/// Counters of the data path, updated with relaxed atomics (no lock on the hot path).
public final class ProxyStatistics: Sendable {
    public let requests = ManagedAtomic<Int>(0)
    public let retries = ManagedAtomic<Int>(0)
    public let replaysAfter401 = ManagedAtomic<Int>(0)
    public let faultsInjected = ManagedAtomic<Int>(0)
    public let proxyErrors = ManagedAtomic<Int>(0)

    public init() {}
}
