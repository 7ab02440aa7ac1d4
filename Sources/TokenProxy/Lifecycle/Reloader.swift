import Logging
import NIOPosix

/// Applies a new configuration on SIGHUP: a configuration that does not load is logged and the
/// running one kept; listeners that did not change keep their connections.
actor Reloader {
    private var current: Configuration
    private let server: ProxyServer
    private var admin: AdminServer?
    private let broker: TokenBroker
    private let faults: FaultSettings
    private let statistics: ProxyStatistics
    private let notifier: SystemdNotifier
    private let environment: [String: String]
    private let logger: Logger

    init(
        current: Configuration, server: ProxyServer, admin: AdminServer?, broker: TokenBroker, faults: FaultSettings, statistics: ProxyStatistics,
        notifier: SystemdNotifier, environment: [String: String], logger: Logger
    ) {
        self.environment = environment
        self.current = current
        self.server = server
        self.admin = admin
        self.broker = broker
        self.faults = faults
        self.statistics = statistics
        self.notifier = notifier
        self.logger = logger
    }

    var adminPort: Int? { admin?.port }

    func reload() async {
        notifier.reloading()
        defer { notifier.send("READY=1") }
        let next: Configuration
        do {
            next = try Configuration.load(path: current.sourcePath)
        } catch {
            logger.error("reload refused; the running configuration stays in force", metadata: [
                "config": "\(current.sourcePath)", "problems": "\(error.problems.map(\.description).joined(separator: "; "))",
            ])
            return
        }
        do {
            try await server.apply(next, previous: current)
        } catch {
            logger.error("reload could not be applied; the running configuration stays in force", metadata: ["error": "\(error)"])
            return
        }
        faults.update(enabled: next.faults.enabled, upstream401Percent: next.faults.upstream401Percent)
        if next.admin != current.admin {
            await admin?.stop()
            admin = nil
            if let address = next.admin?.listen {
                do {
                    admin = try await AdminServer.start(
                        address: address,
                        routes: ProxyApplication.adminRoutes(broker: broker, server: server, faults: faults, statistics: statistics, tokenFile: next.admin?.tokenFile),
                        group: MultiThreadedEventLoopGroup.singleton
                    )
                } catch {
                    logger.error("reload: the admin listener could not be started", metadata: ["admin": "\(address)", "error": "\(error)"])
                }
            }
        }
        if next.token != current.token {
            await broker.reconfigure(next.token, endpoint: TokenEndpointClient(configuration: next.token, environment: environment))
        }
        if next.log != current.log {
            logger.warning("reload: log.* changes take effect after a restart")
        }
        if next.fleet != current.fleet {
            // The storage (and its connections and listener) is chosen once, at start.
            logger.warning("reload: fleet.* changes take effect after a restart; the running store stays in use")
        }
        var applied = next
        applied.log = current.log
        applied.fleet = current.fleet
        current = applied
        logger.info("configuration reloaded", metadata: ["config": "\(current.sourcePath)", "upstream": "\(current.upstream.url)", "listen": "\(current.listen)"])
    }

    func stopAdmin() async {
        await admin?.stop()
        admin = nil
    }
}
