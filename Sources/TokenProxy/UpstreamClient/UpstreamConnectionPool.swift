import NIOCore
import NIOPosix
import NIOSSL

/// Keep-alive connections to the upstream for one event loop. Used only on that loop, so it
/// needs no lock, and a request finds its connection on its own thread.
final class UpstreamConnectionPool {
    let eventLoop: any EventLoop
    let target: UpstreamURL
    private let connectTimeout: TimeAmount
    private let tls: TLSSettings?
    private var idle: [UpstreamConnection] = []
    /// Idle connections kept per loop; it must cover the expected concurrency, or every request
    /// beyond it opens and closes a connection.
    let maximumIdle: Int
    /// Idle connections older than this are closed, before the upstream's own keep-alive
    /// timeout (nginx: 75 s) can close one just as a request is sent on it.
    let idleTimeout: TimeAmount
    private var sweeper: RepeatedTask?
    private var retired = false

    /// TLS to an https upstream: the context (trust, client certificate) and the name the
    /// server's certificate must carry when it is not the URL's host (`upstream.tls.serverName`).
    struct TLSSettings: Sendable {
        let context: NIOSSLContext
        let serverName: String?
    }

    init(eventLoop: any EventLoop, target: UpstreamURL, connectTimeout: Duration, tls: TLSSettings?, maximumIdle: Int = 512, idleTimeout: TimeAmount = .seconds(30)) {
        self.eventLoop = eventLoop
        self.target = target
        self.connectTimeout = .nanoseconds(Int64(connectTimeout.timeInterval * 1e9))
        self.tls = tls
        self.maximumIdle = maximumIdle
        self.idleTimeout = idleTimeout
    }

    var idleCount: Int { idle.count }

    /// A warm connection, if one is idle.
    func lease() -> UpstreamConnection? {
        while let connection = idle.popLast() {
            if connection.isActive { return connection }
        }
        return nil
    }

    /// No route uses this upstream any more (after a reload): idle connections close now,
    /// leased ones when they come back.
    func retire() {
        retired = true
        closeAll()
    }

    /// Opens a new connection (TLS for https, with certificate and host name verification).
    func connect() -> EventLoopFuture<UpstreamConnection> {
        let tls = self.tls
        let target = self.target
        let serverHostname = tls?.serverName ?? (target.host.isIPAddress ? nil : target.host)
        return ClientBootstrap(group: eventLoop)
            .connectTimeout(connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let operations = channel.pipeline.syncOperations
                    if let tls {
                        try operations.addHandler(NIOSSLClientHandler(context: tls.context, serverHostname: serverHostname))
                    }
                    try operations.addHandler(UpstreamHandler())
                }
            }
            .connect(host: target.host, port: target.port)
            .flatMapThrowing { channel in
                let handler = try channel.pipeline.syncOperations.handler(type: UpstreamHandler.self)
                return UpstreamConnection(channel: channel, handler: handler, target: target)
            }
    }

    /// Takes a connection back after a complete exchange, or closes it when the pool is full.
    func release(_ connection: UpstreamConnection) {
        connection.receiver = nil
        guard connection.isActive, !retired, idle.count < maximumIdle else {
            connection.close()
            return
        }
        connection.idleSince = .now()
        idle.append(connection)
        startSweeperIfNeeded()
    }

    func closeAll() {
        sweeper?.cancel()
        sweeper = nil
        let connections = idle
        idle.removeAll()
        for connection in connections { connection.close() }
    }

    private func startSweeperIfNeeded() {
        guard sweeper == nil else { return }
        let loopBound = NIOLoopBound(self, eventLoop: eventLoop)
        sweeper = eventLoop.scheduleRepeatedTask(initialDelay: .seconds(5), delay: .seconds(5)) { _ in
            loopBound.value.closeStaleConnections()
        }
    }

    private func closeStaleConnections() {
        let cutoff = NIODeadline.now() - idleTimeout
        // Connections the upstream closed are dropped here too (a lease skips them as well).
        let stale = idle.filter { $0.idleSince < cutoff || !$0.isActive }
        guard !stale.isEmpty else { return }
        idle.removeAll { $0.idleSince < cutoff || !$0.isActive }
        for connection in stale { connection.close() }
    }
}

extension String {
    fileprivate var isIPAddress: Bool {
        (try? SocketAddress(ipAddress: self, port: 0)) != nil
    }
}
