import FoundationEssentials
import Logging
import NIOConcurrencyHelpers
import NIOPosix
import ServiceLifecycle
import UnixSignals

/// The one composition root: `tokenproxy run`, `tokenproxy demo` and the lifecycle tests all
/// build the proxy, the admin listener and the token broker here, as services of one
/// swift-service-lifecycle group. SIGTERM/SIGINT drain and stop (exit 0), SIGHUP reloads the
/// configuration, and systemd hears about all of it (SPEC §8).
public enum ProxyApplication {
    /// Where a started proxy listens (the ports actually bound, for port 0).
    public struct Listening: Sendable {
        public var proxyPort: Int?
        public var adminPort: Int?
    }

    /// How long startup waits for the first token before telling systemd it is ready anyway.
    static let startupWait = Duration.seconds(10)

    /// Runs until SIGTERM/SIGINT, or until `companion` (a service run beside the proxy, such as
    /// the demo's traffic) returns.
    public static func run(
        configuration: Configuration, environment: [String: String] = ProcessInfo.processInfo.environment,
        companion: (@Sendable (Listening) async -> Void)? = nil
    ) async throws {
        let startupSignals = StartupSignals()
        let openFiles = FileDescriptorLimit.raiseToHardLimit()
        let logger = Logger(label: "tokenproxy")
        let notifier = SystemdNotifier(environment: environment)
        let statistics = ProxyStatistics()
        let faults = FaultSettings(enabled: configuration.faults.enabled, upstream401Percent: configuration.faults.upstream401Percent)
        let endpoint = TokenEndpointClient(configuration: configuration.token, environment: environment)
        let storage: any TokenStorage
        do {
            storage = try configuration.makeTokenStorage(logger: logger)
        } catch {
            logger.critical("cannot use the token store", metadata: ["error": "\(error)"])
            throw error
        }
        let broker = TokenBroker(
            configuration: configuration.token, endpoint: endpoint, logger: logger, storage: storage, writesBeforeUse: false,
            observer: { event in
                statistics.observe(event)
                notifier.status(TokenStatusText.describe(event))
            }
        )
        let server: ProxyServer
        var admin: AdminServer?
        do {
            server = try await ProxyServer.start(
                configuration: configuration, broker: broker, faults: faults, statistics: statistics, group: .singleton, logger: logger
            )
            if let address = configuration.admin?.listen {
                admin = try await AdminServer.start(
                    address: address, routes: AdminRoutes(broker: broker, faults: faults, statistics: statistics, upstream: configuration.upstream.url, tokenFile: configuration.admin?.tokenFile),
                    group: MultiThreadedEventLoopGroup.singleton
                )
            }
        } catch {
            logger.critical("cannot listen", metadata: ["listen": "\(configuration.listen)", "admin": "\(configuration.admin?.listen.description ?? "off")", "error": "\(error)"])
            await broker.shutdown()
            throw error
        }
        var listening: Logger.Metadata = [
            "listen": "\(configuration.listen)", "upstream": "\(configuration.upstream.url)", "admin": "\(configuration.admin?.listen.description ?? "off")",
            "openFiles": "\(openFiles)",
        ]
        // The ports actually bound, for listen addresses with port 0.
        if let port = server.port { listening["port"] = "\(port)" }
        if let port = admin?.port { listening["adminPort"] = "\(port)" }
        logger.info("listening", metadata: listening)
        notifier.ready(status: await firstToken(from: broker))
        await BlockingIO.run { ExecutableResidency.releaseStartupPages() }

        let reloader = Reloader(
            current: configuration, server: server, admin: admin, broker: broker, faults: faults, statistics: statistics, notifier: notifier,
            environment: environment, logger: logger
        )
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: FunctionService { await cancelWhenGracefulShutdown { await broker.keepFresh() } }, serviceName: "token maintenance"),
            .init(service: FunctionService {
                let hangups = await UnixSignalsSequence(trapping: .sighup)
                if startupSignals.takeEarlyReload() { await reloader.reload() }
                await cancelWhenGracefulShutdown {
                    for await _ in hangups { await reloader.reload() }
                }
            }, serviceName: "reload on SIGHUP"),
        ]
        if let interval = notifier.watchdogInterval {
            services.append(.init(service: FunctionService {
                await cancelWhenGracefulShutdown {
                    while !Task.isCancelled {
                        notifier.watchdog()
                        try? await Task.sleep(for: interval)
                    }
                }
            }, serviceName: "systemd watchdog"))
        }
        if let companion {
            let listening = Listening(proxyPort: server.port, adminPort: admin?.port)
            services.append(.init(
                service: FunctionService { await cancelWhenGracefulShutdown { await companion(listening) } },
                successTerminationBehavior: .gracefullyShutdownGroup, serviceName: "companion"))
        }
        services.append(.init(service: FunctionService {
            try? await gracefulShutdown()
            notifier.stopping()
            logger.info("stopping: draining in-flight requests", metadata: ["open": "\(server.openConnections)", "timeout": "\(configuration.drainTimeout.configString)"])
            await server.drain(timeout: await reloader.drainTimeout)
            await reloader.stopAdmin()
        }, successTerminationBehavior: .gracefullyShutdownGroup, serviceName: "proxy"))

        var groupConfiguration = ServiceGroupConfiguration(services: services, logger: logger)
        groupConfiguration.gracefulShutdownSignals = [.sigterm, .sigint]
        let group = ServiceGroup(configuration: groupConfiguration)
        startupSignals.forwardStops(to: group)
        do {
            try await group.run()
        } catch {
            logger.error("stopped after a service failed", metadata: ["error": "\(error)"])
            await broker.shutdown()
            throw error
        }
        await broker.shutdown()
        logger.info("stopped")
    }

    /// Waits for the first token, at most ``startupWait``, and says how it went.
    static func firstToken(from broker: TokenBroker) async -> String {
        let outcome = NIOLockedValueBox<String?>(nil)
        _ = Task {
            do throws(TokenBrokerError) {
                let tokens = try await broker.token(for: .usable)
                outcome.withLockedValue { $0 = TokenStatusText.describe(.refreshed(expiresAt: tokens.expiresAt)) }
            } catch {
                outcome.withLockedValue { $0 = TokenStatusText.describe(error) }
            }
        }
        let deadline = ContinuousClock.now.advanced(by: startupWait)
        while outcome.withLockedValue({ $0 }) == nil, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
        return outcome.withLockedValue { $0 } ?? "serving without a token: the token endpoint did not answer within \(startupWait.configString); still trying"
    }
}

/// A service made of one closure.
struct FunctionService: Service {
    let body: @Sendable () async throws -> Void
    init(_ body: @escaping @Sendable () async throws -> Void) { self.body = body }
    func run() async throws { try await body() }
}

/// The `STATUS=` texts systemd shows for the token state.
enum TokenStatusText {
    static func describe(_ event: TokenBroker.RefreshEvent) -> String {
        switch event {
        case .refreshing: "refreshing the token"
        case .refreshed(let expiresAt), .adopted(let expiresAt): "token valid until \(expiresAt.map(RFC3339.format) ?? "unknown")"
        case .transientFailure(let reason): "token endpoint failing, retrying: \(reason)"
        case .reauthenticationRequired(let reason): "re-login needed: \(reason)"
        case .misconfigured(let reason): "configuration error: \(reason)"
        case .refreshTokenExpiring(let expiresAt): "refresh token expires at \(RFC3339.format(expiresAt)): log in again before then (tokenproxy login)"
        }
    }

    static func describe(_ error: TokenBrokerError) -> String {
        switch error {
        case .reauthenticationRequired(let reason): "re-login needed: \(reason)"
        case .unavailable(let reason, _): "no token yet, retrying: \(reason)"
        case .misconfigured(let reason): "configuration error: \(reason)"
        case .rateLimited: "no token yet, retrying"
        }
    }
}
