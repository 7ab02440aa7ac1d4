import Atomics
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOPosix
import NIOSSL
import ServiceLifecycle

/// The proxy listener: accepts client connections on `listen` and serves each with a
/// ``ProxyRequestHandler`` that uses the upstream pool of its own event loop. A reload swaps
/// the shared context (and rebinds when `listen` changed) without dropping open connections.
///
/// As a `Service` it serves until the group's graceful shutdown, then drains: listening →
/// draining → stopped.
public final class ProxyServer: Service, Sendable {
    enum State {
        case listening(any Channel)
        /// No longer accepting; open connections finish within `drainTimeout`.
        case draining
        case stopped
    }

    private let group: MultiThreadedEventLoopGroup
    private let pools: [ObjectIdentifier: NIOLoopBound<UpstreamConnectionPool>]
    private let loopStatistics: [ObjectIdentifier: LoopStatistics]
    private let context: ProxyContextBox
    private let state: NIOLockedValueBox<State?>
    private let connections = ClientConnections()
    /// One per listener bound (a reload may bind a new one): each knows the connections its
    /// listener accepted, and drains them by quiescing.
    private let quiescers = NIOLockedValueBox<[ServerQuiescingHelper]>([])
    private let trimmer = MemoryTrimmer()

    private init(
        group: MultiThreadedEventLoopGroup, pools: [ObjectIdentifier: NIOLoopBound<UpstreamConnectionPool>],
        loopStatistics: [ObjectIdentifier: LoopStatistics], context: ProxyContext
    ) {
        self.group = group
        self.pools = pools
        self.loopStatistics = loopStatistics
        self.context = ProxyContextBox(context)
        self.state = NIOLockedValueBox(nil)
    }

    /// Binds the listener and starts serving.
    public static func start(
        configuration: Configuration,
        broker: TokenBroker,
        faults: FaultSettings,
        statistics: ProxyStatistics,
        group: MultiThreadedEventLoopGroup,
        logger: Logger
    ) async throws -> ProxyServer {
        let shared = ProxyContext(configuration: configuration, broker: broker, faults: faults, statistics: statistics, logger: logger)
        let tls = try makeTLSSettings(for: configuration.upstream)
        var pools: [ObjectIdentifier: NIOLoopBound<UpstreamConnectionPool>] = [:]
        var loopStatistics: [ObjectIdentifier: LoopStatistics] = [:]
        for eventLoop in group.makeIterator() {
            loopStatistics[ObjectIdentifier(eventLoop)] = statistics.makeLoopStatistics()
            let pool = try await eventLoop.submit {
                NIOLoopBound(
                    UpstreamConnectionPool(eventLoop: eventLoop, target: configuration.upstream.url, connectTimeout: configuration.upstream.connectTimeout, tls: tls),
                    eventLoop: eventLoop
                )
            }.get()
            pools[ObjectIdentifier(eventLoop)] = pool
        }
        let server = ProxyServer(group: group, pools: pools, loopStatistics: loopStatistics, context: shared)
        try await server.bind(configuration.listen)
        return server
    }

    private static func makeTLSSettings(for upstream: Configuration.Upstream) throws -> UpstreamConnectionPool.TLSSettings? {
        guard upstream.url.scheme == .https else { return nil }
        return .init(context: try NIOSSLContext(configuration: upstream.tls.clientConfiguration()), serverName: upstream.tls?.serverName)
    }

    private func bind(_ address: ListenAddress) async throws {
        let pools = self.pools
        let loopStatistics = self.loopStatistics
        let contextBox = self.context
        let connections = self.connections
        let trimmer = self.trimmer
        let budget = FileDescriptorLimit.clientConnectionBudget()
        let quiescer = ServerQuiescingHelper(group: group)
        quiescers.withLockedValue { $0.append(quiescer) }
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // Out of file descriptors (EMFILE), accepting pauses for a moment instead of spinning.
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AcceptBackoffHandler())
                    try channel.pipeline.syncOperations.addHandler(quiescer.makeServerChannelHandler(channel: channel))
                    try channel.pipeline.syncOperations.addHandler(
                        ConnectionLimiter(
                            connections: connections, limit: { min(contextBox.load().rules.limits.maxConnections, budget) },
                            changed: { trimmer.connectionsChanged(open: $0) }))
                }
            }
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            // A client that half-closes after its request still gets the answer.
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer { channel in
                // Over limits.maxConnections (or what the descriptor limit allows): accepted and
                // closed at once, without an answer.
                if connections.wasRefused(channel) { return channel.close() }
                return channel.eventLoop.makeCompletedFuture {
                    let loop = ObjectIdentifier(channel.eventLoop)
                    let pool = pools[loop]!.value
                    let operations = channel.pipeline.syncOperations
                    // Requests are parsed and responses written by the handler itself, as bytes:
                    // heads are forwarded with edits in place instead of decoded and encoded again.
                    try operations.addHandler(ProxyRequestHandler(context: contextBox, pool: pool, statistics: loopStatistics[loop]!))
                }
            }
        let channel: any Channel
        switch address {
        case .tcp(let host, let port):
            channel = try await bootstrap.bind(host: host, port: port).get()
        case .unix(let path):
            channel = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
        }
        let previous = state.withLockedValue { state -> (any Channel)? in
            defer { state = .listening(channel) }
            if case .listening(let previous)? = state { return previous }
            return nil
        }
        try? await previous?.close()
    }

    /// The address actually bound (the port is chosen by the system for port 0).
    public var localAddress: SocketAddress? {
        state.withLockedValue { state in
            if case .listening(let channel)? = state { channel.localAddress } else { nil }
        }
    }

    /// The bound TCP port, if listening on TCP.
    public var port: Int? { localAddress?.port }

    /// The upstream requests are forwarded to now (after the last reload).
    public var upstream: UpstreamURL { context.load().rules.upstream }

    /// Client connections now open.
    public var openConnections: Int { connections.count }

    /// Applies a reloaded configuration: new rules for new requests, the pools pointed at a
    /// changed upstream, and a new listener when `listen` changed (open connections stay).
    public func apply(_ configuration: Configuration, previous: Configuration) async throws {
        let current = context.load()
        let next = ProxyContext(
            configuration: configuration, broker: current.broker, faults: current.faults, statistics: current.statistics,
            logger: current.logger
        )
        if configuration.upstream != previous.upstream {
            let tls = try Self.makeTLSSettings(for: configuration.upstream)
            for pool in pools.values {
                try? await pool.eventLoop.submit {
                    pool.value.retarget(configuration.upstream.url, connectTimeout: configuration.upstream.connectTimeout, tls: tls)
                }.get()
            }
        }
        context.store(next)
        if configuration.listen != previous.listen {
            try await bind(configuration.listen)
        }
    }

    /// How long a graceful stop waits for requests in flight (`drainTimeout`, as last reloaded).
    public var drainTimeout: Duration { context.load().drainTimeout }

    /// Serves until the graceful shutdown of its service group, then drains. Cancelled (a test
    /// ending), it closes at once what is still open.
    public func run() async throws {
        try? await gracefulShutdown()
        await drain(timeout: Task.isCancelled ? .zero : drainTimeout)
        state.withLockedValue { $0 = .stopped }
    }

    /// Graceful stop: no new connections, idle ones close now, busy ones after their current
    /// response (`ChannelShouldQuiesceEvent`); whatever is still open after `timeout` is closed.
    public func drain(timeout: Duration) async {
        state.withLockedValue { state in
            if case .listening? = state { state = .draining }
        }
        let eventLoop = group.next()
        let drained = quiescers.withLockedValue { $0 }.map { quiescer in
            let promise = eventLoop.makePromise(of: Void.self)
            quiescer.initiateShutdown(promise: promise)
            return promise.futureResult
        }
        let connections = self.connections
        let deadline = eventLoop.scheduleTask(in: TimeAmount(timeout)) {
            for channel in connections.all { channel.close(promise: nil) }
        }
        try? await EventLoopFuture.andAllComplete(drained, on: eventLoop).get()
        deadline.cancel()
        await closeIdleUpstreamConnections()
    }

    /// Closes the idle upstream connections of every loop.
    private func closeIdleUpstreamConnections() async {
        for pool in pools.values {
            try? await pool.eventLoop.submit { pool.value.closeAll() }.get()
        }
    }
}
