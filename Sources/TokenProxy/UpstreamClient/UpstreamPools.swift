import Atomics
import NIOCore
import NIOSSL

/// One upstream as routes name it (SPEC §2.4): its settings and, for https, its TLS context,
/// made once. Routes with equal `upstream` settings share one target, and so one pool per loop.
final class UpstreamTarget: Sendable {
    let settings: Configuration.Upstream
    let tls: UpstreamConnectionPool.TLSSettings?
    /// No route uses it any more (after a reload): a request still carrying it gets a pool that
    /// keeps no connection.
    private let retiredFlag = ManagedAtomic(false)

    var isRetired: Bool { retiredFlag.load(ordering: .relaxed) }
    /// How this loop's pool reaches it (`upstream.protocol`; `auto` over plain http is HTTP/1.1).
    var poolMode: UpstreamConnectionPool.Mode {
        switch settings.protocol {
        case .http1: .http1
        case .http2: .http2
        case .auto: settings.url.scheme == .https ? .negotiate : .http1
        }
    }

    /// It may speak HTTP/2, and so carry gRPC.
    var speaksHTTP2: Bool { poolMode != .http1 }
    func retire() { retiredFlag.store(true, ordering: .relaxed) }

    init(_ settings: Configuration.Upstream) throws {
        self.settings = settings
        if settings.url.scheme == .https {
            var configuration = try settings.tls.clientConfiguration()
            switch settings.protocol {
            case .http1: break
            case .http2: configuration.applicationProtocols = ["h2"]
            case .auto: configuration.applicationProtocols = ["h2", "http/1.1"]
            }
            tls = .init(context: try NIOSSLContext(configuration: configuration), serverName: settings.tls?.serverName)
        } else {
            tls = nil
        }
    }
}

/// The keep-alive pools of one event loop, one per upstream target. Used only on that loop.
final class UpstreamPools {
    let eventLoop: any EventLoop
    /// By target; the target is held so that its identity is not reused while its pool lives.
    private var pools: [ObjectIdentifier: (target: UpstreamTarget, pool: UpstreamConnectionPool)] = [:]

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    /// The pool of `target`, made on first use.
    func pool(for target: UpstreamTarget) -> UpstreamConnectionPool {
        let key = ObjectIdentifier(target)
        if let known = pools[key] { return known.pool }
        let pool = UpstreamConnectionPool(
            eventLoop: eventLoop, target: target.settings.url, connectTimeout: target.settings.connectTimeout, tls: target.tls,
            mode: target.poolMode)
        if target.isRetired {
            // A request that began before the reload: served, but nothing is kept for it.
            pool.retire()
        } else {
            pools[key] = (target, pool)
        }
        return pool
    }

    /// Closes the pools of targets no route uses any more (after a reload).
    func retain(only targets: [UpstreamTarget]) {
        let kept = Set(targets.map(ObjectIdentifier.init))
        for (key, entry) in pools where !kept.contains(key) {
            entry.target.retire()
            entry.pool.retire()
            pools[key] = nil
        }
    }

    /// Closes every idle connection (a drain's last step).
    func closeAll() {
        for entry in pools.values { entry.pool.closeAll() }
    }
}
