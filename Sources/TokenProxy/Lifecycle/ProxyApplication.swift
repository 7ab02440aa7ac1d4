import FoundationEssentials
import Logging
import NIOConcurrencyHelpers
import NIOPosix
import ServiceLifecycle
import UnixSignals

/// The one composition root: `tokenproxy run`, `tokenproxy demo` and the test harness all
/// build the proxy, the admin listener and the token broker here, and run them as services of
/// one swift-service-lifecycle group. Signals take one path, service-lifecycle's: SIGTERM/SIGINT
/// drain and stop (exit 0), SIGHUP reloads the configuration, and systemd hears about all of it
/// (SPEC §8).
public struct ProxyApplication: Sendable {
    /// Where a started proxy listens (the ports actually bound, for port 0).
    public struct Listening: Sendable {
        public var proxyPort: Int?
        public var adminPort: Int?
        /// The port of each route's listener, by route name (SPEC §2.4).
        public var routePorts: [String: Int] = [:]
    }

    public let configuration: Configuration
    /// One broker per identity (SPEC §2.4).
    public let identities: IdentityBrokers
    /// The token files kept fresh for other programs (SPEC §2.5).
    public let sinks: TokenSinks
    /// The identity `default`'s broker (or the only one's).
    public var broker: TokenBroker { identities[Configuration.defaultIdentity] ?? identities.all[0].broker }
    public let server: ProxyServer
    public let faults: FaultSettings
    public let statistics: ProxyStatistics
    /// Spans over OTLP/HTTP, when traces are on (SPEC §2.6).
    let traces: Traces?
    let reloader: Reloader
    let notifier: SystemdNotifier
    let logger: Logger

    /// How long startup waits for the first token before telling systemd it is ready anyway.
    static let startupWait = Duration.seconds(10)

    /// Builds the parts and binds the listeners; ``run(handlingSignals:companion:)`` serves.
    public static func start(
        configuration: Configuration, environment: [String: String] = ProcessInfo.processInfo.environment,
        logger: Logger = Logger(label: "tokenproxy")
    ) async throws -> ProxyApplication {
        let notifier = SystemdNotifier(environment: environment)
        let statistics = ProxyStatistics()
        let faults = FaultSettings(enabled: configuration.faults.enabled, upstream401Percent: configuration.faults.upstream401Percent)
        let sinks = TokenSinks(sinks: configuration.sinks, logger: logger)
        let traces = Traces.make(configuration.telemetry, environment: environment, logger: logger)
        let identities: IdentityBrokers
        do {
            identities = try await IdentityBrokers.make(
                configuration: configuration, environment: environment, logger: logger,
                observer: { identity, event in
                    statistics.observe(event, identity: identity)
                    if case .recorded(let entry) = event {
                        Self.publish(entry, identity: identity, to: statistics.events)
                        return
                    }
                    let text = TokenStatusText.describe(event)
                    notifier.status(identity == Configuration.defaultIdentity ? text : "\(identity): \(text)")
                },
                onPublish: { identity, token in sinks.tokenPublished(identity: identity, token: token) }, traces: traces)
        } catch {
            logger.critical("cannot use the token store", metadata: ["error": "\(error)"])
            throw error
        }
        let server: ProxyServer
        var admin: AdminServer?
        do {
            server = try await ProxyServer.start(
                configuration: configuration, services: .init(identities: identities, faults: faults, statistics: statistics, traces: traces, logger: logger), group: .singleton)
            if let settings = configuration.admin {
                admin = try await AdminServer.start(
                    address: settings.listen,
                    routes: Self.adminRoutes(
                        identities: identities, sinks: sinks, server: server, faults: faults, statistics: statistics, tokenFile: settings.tokenFile),
                    group: MultiThreadedEventLoopGroup.singleton)
            }
        } catch {
            logger.critical("cannot listen", metadata: ["listen": "\(configuration.listen)", "admin": "\(configuration.admin?.listen.description ?? "off")", "error": "\(error)"])
            await identities.shutdown()
            throw error
        }
        let reloader = Reloader(
            current: configuration, server: server, admin: admin, identities: identities, sinks: sinks, faults: faults, statistics: statistics,
            notifier: notifier, logger: logger)
        return ProxyApplication(
            configuration: configuration, identities: identities, sinks: sinks, server: server, faults: faults, statistics: statistics, traces: traces,
            reloader: reloader, notifier: notifier, logger: logger)
    }

    /// The admin API over the proxy's live state: it reads the routes a reload publishes.
    static func adminRoutes(
        identities: IdentityBrokers, sinks: TokenSinks, server: ProxyServer, faults: FaultSettings, statistics: ProxyStatistics, tokenFile: String?
    ) -> AdminRoutes {
        AdminRoutes(
            identities: identities, faults: faults, statistics: statistics, upstream: { server.upstream }, routes: { server.routes },
            sinks: { await sinks.status() }, tokenFile: tokenFile)
    }

    /// The admin API of this proxy (for an admin listener of one's own, as the tests start).
    public func adminRoutes(tokenFile: String? = nil) -> AdminRoutes {
        Self.adminRoutes(identities: identities, sinks: sinks, server: server, faults: faults, statistics: statistics, tokenFile: tokenFile)
    }

    /// Where it listens now.
    public func listening() async -> Listening {
        Listening(proxyPort: server.port, adminPort: await reloader.adminPort, routePorts: server.routePorts)
    }

    /// `tokenproxy run` and `tokenproxy demo`: starts, then serves until SIGTERM/SIGINT, or
    /// until `companion` (a service run beside the proxy, such as the demo's traffic) returns.
    public static func run(
        configuration: Configuration, environment: [String: String] = ProcessInfo.processInfo.environment,
        companion: (@Sendable (Listening) async -> Void)? = nil
    ) async throws {
        // Trapped from the first moment: with the default actions, a stop or a reload asked for
        // during startup (`systemctl stop`/`reload` right after `start`) would kill the process.
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint, .sighup)
        let openFiles = FileDescriptorLimit.raiseToHardLimit()
        let application = try await start(configuration: configuration, environment: environment)
        let listening = await application.listening()
        var metadata: Logger.Metadata = [
            "listen": "\(configuration.listen)", "upstream": "\(configuration.upstream.url)", "admin": "\(configuration.admin?.listen.description ?? "off")",
            "openFiles": "\(openFiles)", "routes": "\(configuration.routes.map(\.name).joined(separator: ","))",
            "identities": "\(configuration.identityNames.joined(separator: ","))",
        ]
        // The ports actually bound, for listen addresses with port 0.
        if let port = listening.proxyPort { metadata["port"] = "\(port)" }
        if let port = listening.adminPort { metadata["adminPort"] = "\(port)" }
        if let traces = application.traces { metadata["traces"] = "\(traces.endpoint)" }
        // Each route's port, for routes on listeners of their own (`b=8790,c=8791`).
        if configuration.routes.count > 1 {
            metadata["routePorts"] = "\(listening.routePorts.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ","))"
        }
        application.logger.info("listening", metadata: metadata)
        application.notifier.ready(status: await firstToken(from: application.broker))
        await BlockingIO.run { ExecutableResidency.releaseStartupPages() }
        try await application.run(signals: signals, companion: companion)
    }

    /// Serves until a graceful shutdown: SIGTERM/SIGINT when `signals` are given, `companion`
    /// returning, or the cancellation of the calling task (as the tests stop it). Then the
    /// proxy drains, and the broker closes its connections.
    public func run(signals: UnixSignalsSequence? = nil, companion: (@Sendable (Listening) async -> Void)? = nil) async throws {
        let (identities, sinks, server, reloader, notifier, logger, traces) = (identities, sinks, server, reloader, notifier, logger, traces)
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: FunctionService { await cancelWhenGracefulShutdown { await identities.keepFresh() } }, serviceName: "token maintenance"),
            .init(service: FunctionService { await cancelWhenGracefulShutdown { await sinks.run() } }, serviceName: "token sinks"),
            .init(service: server, serviceName: "proxy"),
            .init(service: FunctionService {
                try? await gracefulShutdown()
                notifier.stopping()
                logger.info("stopping: draining in-flight requests", metadata: ["open": "\(server.openConnections)", "timeout": "\(server.drainTimeout.configString)"])
            }, serviceName: "systemd"),
        ]
        if let traces {
            // First in the group, so stopped last: the spans of the drained requests go out.
            // An exporter that stops never stops the proxy: traces are not a reason not to serve.
            services.insert(.init(
                service: FunctionService {
                    do { try await traces.service.run() } catch { logger.error("traces stopped", metadata: ["error": "\(error)"]) }
                }, successTerminationBehavior: .ignore, failureTerminationBehavior: .ignore, serviceName: "traces"), at: 0)
        }
        if let signals {
            // A stop ends this service, and with it the group, gracefully; a reload is applied.
            services.append(.init(service: FunctionService {
                for await signal in signals.cancelOnGracefulShutdown() {
                    guard signal == .sighup else { return }
                    await reloader.reload()
                }
            }, successTerminationBehavior: .gracefullyShutdownGroup, serviceName: "signals"))
        }
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
            let listening = await listening()
            services.append(.init(
                service: FunctionService { await cancelWhenGracefulShutdown { await companion(listening) } },
                successTerminationBehavior: .gracefullyShutdownGroup, serviceName: "companion"))
        }
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(services: services, logger: logger))
        do {
            try await group.run()
        } catch {
            logger.error("stopped after a service failed", metadata: ["error": "\(error)"])
            await reloader.stopAdmin()
            await identities.shutdown()
            throw error
        }
        await reloader.stopAdmin()
        await identities.shutdown()
        logger.info("stopped")
    }

    /// A refresh or an adoption as `/events` tells it (SPEC §7): never the token.
    static func publish(_ entry: TokenBroker.RefreshHistoryEntry, identity: String, to events: EventHub) {
        var fields: [String: JSONValue] = [
            "identity": .string(identity), "trigger": .string(entry.trigger), "durationMs": .number(Double(entry.duration.milliseconds)),
        ]
        if let expiresAt = entry.expiresAt { fields["expiresAt"] = .string(RFC3339.format(expiresAt)) }
        if let detail = entry.detail { fields["error"] = .string(detail) }
        switch entry.result {
        case .refreshed: events.publish(.refresh, fields, at: entry.at)
        case .adopted: events.publish(.adopted, fields, at: entry.at)
        case .failed, .refused:
            events.publish(.refreshFailed, fields, at: entry.at)
            if entry.reauthenticationRequired { events.publish(.loginNeeded, fields, at: entry.at) }
        }
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
        case .recorded(let entry): "\(entry.trigger) refresh: \(entry.result.rawValue)"
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
