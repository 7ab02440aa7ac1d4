import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// The proxy listener: accepts client connections on `listen` and serves each with a
/// ``ProxyRequestHandler`` that uses the upstream pool of its own event loop.
public final class ProxyServer: Sendable {
    private let channel: any Channel
    private let pools: [ObjectIdentifier: NIOLoopBound<UpstreamConnectionPool>]
    /// The address actually bound (the port is chosen by the system for port 0).
    public let localAddress: SocketAddress?

    private init(channel: any Channel, pools: [ObjectIdentifier: NIOLoopBound<UpstreamConnectionPool>]) {
        self.channel = channel
        self.pools = pools
        self.localAddress = channel.localAddress
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
        let tlsContext: NIOSSLContext? = configuration.upstream.url.scheme == .https
            ? try NIOSSLContext(configuration: .makeClientConfiguration()) : nil
        var pools: [ObjectIdentifier: NIOLoopBound<UpstreamConnectionPool>] = [:]
        for eventLoop in group.makeIterator() {
            let pool = try await eventLoop.submit {
                NIOLoopBound(
                    UpstreamConnectionPool(eventLoop: eventLoop, target: configuration.upstream.url, connectTimeout: configuration.upstream.connectTimeout, tlsContext: tlsContext),
                    eventLoop: eventLoop
                )
            }.get()
            pools[ObjectIdentifier(eventLoop)] = pool
        }
        let poolsByLoop = pools
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let pool = poolsByLoop[ObjectIdentifier(channel.eventLoop)]!.value
                    let operations = channel.pipeline.syncOperations
                    try operations.addHandler(HTTPResponseEncoder(configuration: .init()))
                    try operations.addHandler(ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes)))
                    try operations.addHandler(ProxyRequestHandler(shared: shared, pool: pool))
                }
            }
        let channel: any Channel
        switch configuration.listen {
        case .tcp(let host, let port):
            channel = try await bootstrap.bind(host: host, port: port).get()
        case .unix(let path):
            channel = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
        }
        return ProxyServer(channel: channel, pools: pools)
    }

    /// The bound TCP port, if listening on TCP.
    public var port: Int? { localAddress?.port }

    /// Stops accepting connections; open connections are left to finish.
    public func stopAccepting() async {
        try? await channel.close()
    }

    /// Closes the idle upstream connections of every loop.
    public func closeIdleUpstreamConnections() async {
        for pool in pools.values {
            try? await pool.eventLoop.submit { pool.value.closeAll() }.get()
        }
    }
}
