import Atomics
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOPosix
import NIOSSL
import ServiceLifecycle

/// The proxy's listeners (SPEC §2.4: one per distinct `listen` of the routes): each accepts
/// client connections and serves each with a ``ProxyRequestHandler``, which takes the upstream
/// pools of its own event loop. A reload publishes new routes to the listeners that stay, opens
/// the listeners that appear and drains those that go, without dropping open connections.
///
/// As a `Service` it serves until the group's graceful shutdown, then drains: the listeners
/// close, open connections finish within `drainTimeout`. The listener table is the state: no
/// listener left, nothing is accepted.
public final class ProxyServer: Service, Sendable {
    /// One bound address: its channel, the context its connections read, and its quiescer.
    private struct Listener: Sendable {
        let channel: any Channel
        let context: ProxyContextBox
        let quiescer: ServerQuiescingHelper
    }

    /// What one configuration makes of the routes: per listener, its context.
    private struct Plan {
        var contexts: [ListenAddress: ProxyContext]
        var targets: [UpstreamTarget]
    }

    private let group: MultiThreadedEventLoopGroup
    /// The loops, in a fixed order: a loop's position indexes its pools and per-loop counts.
    private let loops: [any EventLoop]
    private let pools: [NIOLoopBound<UpstreamPools>]
    private let listeners = NIOLockedValueBox<[ListenAddress: Listener]>([:])
    /// The upstream targets the current routes use (kept, so that equal settings keep a pool).
    private let targets = NIOLockedValueBox<[UpstreamTarget]>([])
    private let connections = ClientConnections()
    /// Every listener ever bound: a removed one still drains its connections on shutdown.
    private let quiescers = NIOLockedValueBox<[ServerQuiescingHelper]>([])
    private let trimmer = MemoryTrimmer()
    private let services: Services
    /// The configuration in force (for `drainTimeout`, ports and status).
    private let current: NIOLockedValueBox<Configuration>

    /// What every context is built from besides the configuration.
    struct Services: Sendable {
        let identities: IdentityBrokers
        let faults: FaultSettings
        let statistics: ProxyStatistics
        /// Spans of requests and their upstream attempts, when traces are on (SPEC §2.6).
        var traces: Traces? = nil
        let logger: Logger
    }

    private init(group: MultiThreadedEventLoopGroup, loops: [any EventLoop], pools: [NIOLoopBound<UpstreamPools>], services: Services, configuration: Configuration) {
        self.group = group
        self.loops = loops
        self.pools = pools
        self.services = services
        self.current = NIOLockedValueBox(configuration)
    }

    /// Binds every listener and starts serving.
    static func start(configuration: Configuration, services: Services, group: MultiThreadedEventLoopGroup) async throws -> ProxyServer {
        let loops = Array(group.makeIterator())
        var pools: [NIOLoopBound<UpstreamPools>] = []
        for eventLoop in loops {
            pools.append(try await eventLoop.submit { NIOLoopBound(UpstreamPools(eventLoop: eventLoop), eventLoop: eventLoop) }.get())
        }
        let server = ProxyServer(group: group, loops: loops, pools: pools, services: services, configuration: configuration)
        let plan = try server.plan(configuration)
        do {
            for (address, context) in plan.contexts.sorted(by: { $0.key.description < $1.key.description }) {
                try await server.bind(address, context: context)
            }
        } catch {
            await server.closeListeners()
            throw error
        }
        server.targets.withLockedValue { $0 = plan.targets }
        return server
    }

    /// The contexts of `configuration`'s listeners, with upstream targets reused where the
    /// settings did not change.
    private func plan(_ configuration: Configuration) throws -> Plan {
        var targets: [UpstreamTarget] = []
        let known = self.targets.withLockedValue { $0 }
        func target(for settings: Configuration.Upstream) throws -> UpstreamTarget {
            if let existing = targets.first(where: { $0.settings == settings }) ?? known.first(where: { $0.settings == settings }) {
                if !targets.contains(where: { $0 === existing }) { targets.append(existing) }
                return existing
            }
            let made = try UpstreamTarget(settings)
            targets.append(made)
            return made
        }
        var routesByListener: [ListenAddress: [RouteContext]] = [:]
        for route in configuration.routes {
            guard let broker = services.identities[route.identity] else {
                throw ProxyServerError(message: "route \(route.name): the identity \(route.identity) has no broker")
            }
            let context = RouteContext(
                route: route, configuration: configuration, broker: broker, upstream: try target(for: route.upstream),
                statistics: services.statistics.route(route.name, loops: loops.count))
            routesByListener[route.listen, default: []].append(context)
        }
        let contexts = routesByListener.mapValues { routes in
            ProxyContext(
                listen: routes[0].route.listen, configuration: configuration, routes: routes, faults: services.faults, statistics: services.statistics,
                tracer: services.traces?.tracer, loops: loops.count, logger: services.logger)
        }
        return Plan(contexts: contexts, targets: targets)
    }

    private func bind(_ address: ListenAddress, context: ProxyContext) async throws {
        let pools = self.pools
        let loopIndex = Dictionary(uniqueKeysWithValues: loops.enumerated().map { (ObjectIdentifier($1), $0) })
        let contextBox = ProxyContextBox(context)
        let connections = self.connections
        let trimmer = self.trimmer
        let budget = FileDescriptorLimit.clientConnectionBudget()
        let quiescer = ServerQuiescingHelper(group: group)
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
                            connections: connections, limit: { min(contextBox.load().limits.maxConnections, budget) },
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
                    let loop = loopIndex[ObjectIdentifier(channel.eventLoop)]!
                    // Requests are parsed and responses written by the handler itself, as bytes:
                    // heads are forwarded with edits in place instead of decoded and encoded again.
                    let http1 = ProxyRequestHandler(context: contextBox, pools: pools[loop].value, loop: loop)
                    // A connection that opens with HTTP/2's preface is HTTP/2's (SPEC §5): each of
                    // its streams gets a request handler of its own, on this loop.
                    let sniffer = ClientProtocolSniffer { context in
                        try HTTP2ClientConnection.takeOver(context.pipeline.syncOperations, from: http1, eventLoop: context.eventLoop, context: contextBox) {
                            ProxyRequestHandler(context: contextBox, pools: pools[loop].value, loop: loop)
                        }
                    }
                    try channel.pipeline.syncOperations.addHandlers([sniffer, http1])
                }
            }
        let channel: any Channel
        switch address {
        case .tcp(let host, let port):
            channel = try await bootstrap.bind(host: host, port: port).get()
        case .unix(let path):
            channel = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
        }
        quiescers.withLockedValue { $0.append(quiescer) }
        listeners.withLockedValue { $0[address] = Listener(channel: channel, context: contextBox, quiescer: quiescer) }
    }

    /// The address actually bound for the top-level `listen` (or the first listener), with the
    /// port the system chose for port 0.
    public var localAddress: SocketAddress? {
        let listen = current.withLockedValue { $0.listen }
        return listeners.withLockedValue { listeners in
            (listeners[listen] ?? listeners.sorted { $0.key.description < $1.key.description }.first?.value)?.channel.localAddress
        }
    }

    /// The bound TCP port of the top-level `listen`, if listening on TCP.
    public var port: Int? { localAddress?.port }

    /// The bound TCP port of each route's listener, by route name.
    public var routePorts: [String: Int] {
        let routes = current.withLockedValue { $0.routes }
        let bound = listeners.withLockedValue { $0.mapValues { $0.channel.localAddress?.port } }
        var ports: [String: Int] = [:]
        for route in routes {
            if let port = bound[route.listen] ?? nil { ports[route.name] = port }
        }
        return ports
    }

    /// The upstream of the route `default` (or the first), as the last reload left it.
    public var upstream: UpstreamURL { current.withLockedValue { $0.upstream.url } }

    /// The routes in force.
    public var routes: [Configuration.Route] { current.withLockedValue { $0.routes } }

    /// Client connections now open.
    public var openConnections: Int { connections.count }

    /// Applies a reloaded configuration (SPEC §2.4, §8): listeners that appear are opened (first,
    /// so that one that cannot be bound leaves everything as it was), those that stay take the
    /// new routes for new requests, those that go drain; pools of upstreams no route uses close.
    func apply(_ configuration: Configuration) async throws {
        let plan = try plan(configuration)
        let existing = listeners.withLockedValue { $0 }
        var opened: [ListenAddress] = []
        do {
            for (address, context) in plan.contexts where existing[address] == nil {
                try await bind(address, context: context)
                opened.append(address)
            }
        } catch {
            for address in opened { await close(address, drain: false) }
            throw error
        }
        for (address, listener) in existing {
            if let context = plan.contexts[address] { listener.context.store(context) } else { await close(address, drain: true) }
        }
        current.withLockedValue { $0 = configuration }
        targets.withLockedValue { $0 = plan.targets }
        for pool in pools {
            try? await pool.eventLoop.submit { pool.value.retain(only: plan.targets) }.get()
        }
    }

    /// Stops accepting on `address`; with `drain`, its connections close once idle or after
    /// their current response (`ChannelShouldQuiesceEvent`), and whatever is still open after
    /// `drainTimeout` (a long event stream, a tunnel) is closed then.
    private func close(_ address: ListenAddress, drain: Bool) async {
        guard let listener = listeners.withLockedValue({ $0.removeValue(forKey: address) }) else { return }
        guard drain else {
            try? await listener.channel.close()
            return
        }
        listener.quiescer.initiateShutdown(promise: nil)
        // The reload is done once the address no longer accepts.
        try? await listener.channel.closeFuture.get()
        let (connections, server) = (self.connections, listener.channel)
        listener.channel.eventLoop.scheduleTask(in: TimeAmount(drainTimeout)) {
            for channel in connections.all where channel.parent === server { channel.close(promise: nil) }
        }
    }

    private func closeListeners() async {
        for address in listeners.withLockedValue({ Array($0.keys) }) { await close(address, drain: false) }
    }

    /// How long a graceful stop waits for requests in flight (`drainTimeout`, as last reloaded).
    public var drainTimeout: Duration { current.withLockedValue { $0.drainTimeout } }

    /// Serves until the graceful shutdown of its service group, then drains. Cancelled (a test
    /// ending), it closes at once what is still open.
    public func run() async throws {
        try? await gracefulShutdown()
        await drain(timeout: Task.isCancelled ? .zero : drainTimeout)
    }

    /// Graceful stop: no new connections, idle ones close now, busy ones after their current
    /// response (`ChannelShouldQuiesceEvent`); whatever is still open after `timeout` is closed.
    public func drain(timeout: Duration) async {
        listeners.withLockedValue { $0.removeAll() }
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
        for pool in pools {
            try? await pool.eventLoop.submit { pool.value.closeAll() }.get()
        }
    }
}

struct ProxyServerError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}
