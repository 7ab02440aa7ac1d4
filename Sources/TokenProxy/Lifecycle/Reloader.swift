import Logging
import NIOPosix

/// Applies a new configuration on SIGHUP: a configuration that does not load is logged and the
/// running one kept; listeners that did not change keep their connections, identities whose
/// settings did not change keep their tokens (SPEC §2.4, §8).
actor Reloader {
    private var current: Configuration
    private let server: ProxyServer
    private var admin: AdminServer?
    private let identities: IdentityBrokers
    private let sinks: TokenSinks
    private let faults: FaultSettings
    private let statistics: ProxyStatistics
    private let notifier: SystemdNotifier
    private let logger: Logger

    init(
        current: Configuration, server: ProxyServer, admin: AdminServer?, identities: IdentityBrokers, sinks: TokenSinks, faults: FaultSettings,
        statistics: ProxyStatistics, notifier: SystemdNotifier, logger: Logger
    ) {
        self.sinks = sinks
        self.current = current
        self.server = server
        self.admin = admin
        self.identities = identities
        self.faults = faults
        self.statistics = statistics
        self.notifier = notifier
        self.logger = logger
    }

    var adminPort: Int? { admin?.port }

    func reload() async {
        notifier.reloading()
        defer { notifier.send("READY=1") }
        var next: Configuration
        do {
            next = try Configuration.load(path: current.sourcePath)
        } catch {
            logger.error("reload refused; the running configuration stays in force", metadata: [
                "config": "\(current.sourcePath)", "problems": "\(error.problems.map(\.description).joined(separator: "; "))",
            ])
            return
        }
        if next.fleet != current.fleet {
            // The storage (and its connections and listener) is chosen once, at start.
            logger.warning("reload: fleet.* changes take effect after a restart; the running store stays in use")
            next.fleet = current.fleet
        }
        // New identities' brokers first (the routes name them), then the routes; only when both
        // took does anything running change: reconfigured and removed identities.
        let added: [String]
        do {
            added = try await identities.prepare(next)
        } catch {
            logger.error("reload could not be applied; the running configuration stays in force", metadata: ["error": "\(error)"])
            return
        }
        do {
            try await server.apply(next)
        } catch {
            await identities.rollback(added)
            logger.error("reload could not be applied; the running configuration stays in force", metadata: ["error": "\(error)"])
            return
        }
        await identities.commit(next)
        if next.sinks != current.sinks { sinks.reconfigure(next.sinks) }
        faults.update(enabled: next.faults.enabled, upstream401Percent: next.faults.upstream401Percent)
        if next.admin != current.admin {
            await admin?.stop()
            admin = nil
            if let address = next.admin?.listen {
                do {
                    admin = try await AdminServer.start(
                        address: address,
                        routes: ProxyApplication.adminRoutes(
                            identities: identities, sinks: sinks, server: server, faults: faults, statistics: statistics, tokenFile: next.admin?.tokenFile),
                        group: MultiThreadedEventLoopGroup.singleton
                    )
                } catch {
                    logger.error("reload: the admin listener could not be started", metadata: ["admin": "\(address)", "error": "\(error)"])
                }
            }
        }
        if next.log != current.log {
            logger.warning("reload: log.* changes take effect after a restart")
        }
        if next.telemetry != current.telemetry {
            logger.warning("reload: telemetry.* changes take effect after a restart")
        }
        var applied = next
        applied.log = current.log
        applied.telemetry = current.telemetry
        current = applied
        logger.info("configuration reloaded", metadata: [
            "config": "\(current.sourcePath)", "upstream": "\(current.upstream.url)", "listen": "\(current.listen)",
            "routes": "\(current.routes.map(\.name).joined(separator: ","))", "identities": "\(current.identityNames.joined(separator: ","))",
        ])
    }

    func stopAdmin() async {
        await admin?.stop()
        admin = nil
    }
}
