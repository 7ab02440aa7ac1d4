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
    /// `upstream.protocol` for this URL (SPEC §5): HTTP/2 sends every request as a stream of one
    /// shared connection (``HTTP2UpstreamSession``) instead of leasing keep-alive connections;
    /// `auto` over TLS lets the first connection's ALPN decide for the pool.
    enum Mode: Equatable {
        case http1, http2, negotiate
    }
    private(set) var mode: Mode
    private var session: HTTP2UpstreamSession?
    private var sessionConnecting: EventLoopFuture<HTTP2UpstreamSession>?

    /// TLS to an https upstream: the context (trust, client certificate) and the name the
    /// server's certificate must carry when it is not the URL's host (`upstream.tls.serverName`).
    struct TLSSettings: Sendable {
        let context: NIOSSLContext
        let serverName: String?
    }

    init(
        eventLoop: any EventLoop, target: UpstreamURL, connectTimeout: Duration, tls: TLSSettings?, mode: Mode = .http1, maximumIdle: Int = 512,
        idleTimeout: TimeAmount = .seconds(30)
    ) {
        self.eventLoop = eventLoop
        self.target = target
        self.mode = mode
        self.connectTimeout = .nanoseconds(Int64(connectTimeout.timeInterval * 1e9))
        self.tls = tls
        self.maximumIdle = maximumIdle
        self.idleTimeout = idleTimeout
    }

    var idleCount: Int { idle.count }

    /// A warm connection, if one is idle (never for HTTP/2: a request is a new stream).
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

    /// Opens a new connection (TLS for https, with certificate and host name verification), or
    /// for HTTP/2 a new stream on the loop's connection to the upstream.
    func connect() -> EventLoopFuture<UpstreamConnection> {
        switch mode {
        case .http2: return openStream()
        case .negotiate: return negotiate()
        case .http1: break
        }
        let target = self.target
        return Self.connect(on: eventLoop, to: target, timeout: connectTimeout, tls: tls) { try $0.addHandler(UpstreamHandler()) }
            .flatMapThrowing { channel in
                let handler = try channel.pipeline.syncOperations.handler(type: UpstreamHandler.self)
                return UpstreamConnection(channel: channel, handler: handler, target: target)
            }
    }

    /// A connection to `target`: TLS for https (certificate and host name verified), then the
    /// handlers `configure` adds.
    static func connect(
        on eventLoop: any EventLoop, to target: UpstreamURL, timeout: TimeAmount, tls: TLSSettings?,
        configure: @escaping @Sendable (ChannelPipeline.SynchronousOperations) throws -> Void
    ) -> EventLoopFuture<any Channel> {
        let serverHostname = tls?.serverName ?? (target.host.isIPAddress ? nil : target.host)
        return ClientBootstrap(group: eventLoop)
            .connectTimeout(timeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let operations = channel.pipeline.syncOperations
                    if let tls { try operations.addHandler(NIOSSLClientHandler(context: tls.context, serverHostname: serverHostname)) }
                    try configure(operations)
                }
            }
            .connect(host: target.host, port: target.port)
    }

    /// `auto` over TLS: a connection offering `h2` and `http/1.1`; the server's choice sets the
    /// pool's mode, and this connection serves the request either way.
    private func negotiate() -> EventLoopFuture<UpstreamConnection> {
        let target = self.target
        let chosen = eventLoop.makePromise(of: String?.self)
        let connected = Self.connect(on: eventLoop, to: target, timeout: connectTimeout, tls: tls) { try $0.addHandler(ALPNReporter(chosen: chosen)) }
        connected.whenFailure { chosen.fail($0) }
        let loopBound = NIOLoopBound(self, eventLoop: eventLoop)
        let eventLoop = self.eventLoop
        let promise = eventLoop.makePromise(of: NIOLoopBound<UpstreamConnection>.self)
        connected.and(chosen.futureResult).whenComplete { result in
            let pool = loopBound.value
            do {
                let (channel, negotiated) = try result.get()
                if negotiated == "h2" {
                    let session = try HTTP2UpstreamSession.configure(channel, target: target)
                    if pool.mode == .negotiate { pool.mode = .http2 }
                    if pool.session?.isUsable != true, !pool.retired { pool.session = session } else { session.retire() }
                    pool.startSweeperIfNeeded()
                    session.openStream(target: target).assumeIsolated().whenComplete { opened in
                        promise.completeWith(opened.map { NIOLoopBound($0, eventLoop: eventLoop) })
                    }
                } else {
                    if pool.mode == .negotiate { pool.mode = .http1 }
                    let handler = UpstreamHandler()
                    try channel.pipeline.syncOperations.addHandler(handler)
                    promise.succeed(NIOLoopBound(UpstreamConnection(channel: channel, handler: handler, target: target), eventLoop: eventLoop))
                }
            } catch {
                promise.fail(error)
            }
        }
        return promise.futureResult.flatMapThrowing { $0.value }
    }

    /// A stream of the loop's HTTP/2 connection, which is opened first when there is none (or
    /// the last one was told `GOAWAY`); concurrent first requests wait for the same one.
    private func openStream() -> EventLoopFuture<UpstreamConnection> {
        let target = self.target
        if let session, session.isUsable { return session.openStream(target: target) }
        if let sessionConnecting { return Self.stream(of: sessionConnecting, target: target) }
        let connecting = HTTP2UpstreamSession.connect(on: eventLoop, target: target, connectTimeout: connectTimeout, tls: tls)
        sessionConnecting = connecting
        let loopBound = NIOLoopBound(self, eventLoop: eventLoop)
        connecting.whenComplete { result in
            let pool = loopBound.value
            pool.sessionConnecting = nil
            if case .success(let session) = result {
                if pool.retired { session.retire() } else { pool.session = session }
            }
        }
        startSweeperIfNeeded()
        return Self.stream(of: connecting, target: target)
    }

    /// A stream of the session `connecting` gives, once it does. On this loop throughout: the
    /// session and its streams never leave it.
    private static func stream(of connecting: EventLoopFuture<HTTP2UpstreamSession>, target: UpstreamURL) -> EventLoopFuture<UpstreamConnection> {
        let eventLoop = connecting.eventLoop
        let promise = eventLoop.makePromise(of: NIOLoopBound<UpstreamConnection>.self)
        connecting.assumeIsolated().whenComplete { result in
            switch result {
            case .success(let session):
                session.openStream(target: target).assumeIsolated().whenComplete { opened in
                    promise.completeWith(opened.map { NIOLoopBound($0, eventLoop: eventLoop) })
                }
            case .failure(let error):
                promise.fail(error)
            }
        }
        return promise.futureResult.flatMapThrowing { $0.value }
    }

    /// Takes a connection back after a complete exchange, or closes it when the pool is full.
    func release(_ connection: UpstreamConnection) {
        connection.receiver = nil
        // A stream carries one request.
        guard !connection.isStream, connection.isActive, !retired, idle.count < maximumIdle else {
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
        // Its streams in flight finish first.
        session?.retire()
        session = nil
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
        if let session, session.openStreams == 0, session.idleSince < cutoff || !session.isUsable {
            self.session = nil
            session.retire()
        }
        // Connections the upstream closed are dropped here too (a lease skips them as well).
        let stale = idle.filter { $0.idleSince < cutoff || !$0.isActive }
        guard !stale.isEmpty else { return }
        idle.removeAll { $0.idleSince < cutoff || !$0.isActive }
        for connection in stale { connection.close() }
    }
}

extension String {
    var isIPAddress: Bool {
        (try? SocketAddress(ipAddress: self, port: 0)) != nil
    }
}
