import FoundationEssentials
import Logging
import NIOConcurrencyHelpers

/// One ``TokenBroker`` per identity (SPEC §2.4), each with its own store and lock, schedule,
/// backoff, failures and counters, so that one identity failing never delays another's
/// requests. A token exchange's broker gets its subject identity's token from here, and hears
/// when that token changes. A reload adds, removes and reconfigures brokers; one whose settings
/// did not change keeps its token.
public final class IdentityBrokers: Sendable {
    /// What a broker is made with besides its settings.
    struct Environment: Sendable {
        var environment: [String: String]
        var logger: Logger
        /// Told about every broker's events, with the identity's name.
        var observer: @Sendable (String, TokenBroker.RefreshEvent) -> Void
        /// Told about every token a broker publishes, with the identity's name (sinks).
        var onPublish: (@Sendable (String, PublishedToken) -> Void)?
        /// One-shot commands write a new token before they use it (they exit right after).
        var writesBeforeUse = false
        /// A span per refresh, when traces are on (SPEC §2.6).
        var traces: Traces?
    }

    private struct State {
        var brokers: [String: TokenBroker] = [:]
        var settings: [String: Configuration.Token] = [:]
        /// Each broker's maintenance loop, while maintenance runs.
        var maintenance: [String: Task<Void, Never>] = [:]
        var maintaining = false
        /// The configuration's fleet, whose row names follow the identities'.
        var configuration: Configuration?
    }

    private let state = NIOLockedValueBox(State())
    private let made: Environment

    init(environment: Environment) {
        made = environment
    }

    /// One broker made elsewhere, as the identity `default` (an admin API of its own, in tests).
    public convenience init(single broker: TokenBroker) {
        self.init(environment: Environment(environment: [:], logger: broker.logger, observer: { _, _ in }))
        state.withLockedValue { $0.brokers[Configuration.defaultIdentity] = broker }
    }

    /// The brokers of `configuration`'s identities.
    /// - Throws: ``TokenStoreError`` when a store cannot be used (a fleet key file, say).
    public static func make(
        configuration: Configuration, environment: [String: String], logger: Logger, writesBeforeUse: Bool = false,
        observer: @escaping @Sendable (String, TokenBroker.RefreshEvent) -> Void = { _, _ in },
        onPublish: (@Sendable (String, PublishedToken) -> Void)? = nil, traces: Traces? = nil
    ) async throws -> IdentityBrokers {
        let brokers = IdentityBrokers(environment: Environment(
            environment: environment, logger: logger, observer: observer, onPublish: onPublish, writesBeforeUse: writesBeforeUse, traces: traces))
        try await brokers.add(configuration, names: configuration.identityNames)
        return brokers
    }

    public subscript(name: String) -> TokenBroker? {
        state.withLockedValue { $0.brokers[name] }
    }

    /// Identity names, `default` first.
    public var names: [String] {
        state.withLockedValue { state in
            state.configuration?.identityNames.filter { state.brokers[$0] != nil } ?? state.brokers.keys.sorted()
        }
    }

    /// Every broker, by name.
    public var all: [(name: String, broker: TokenBroker)] {
        let names = self.names
        return state.withLockedValue { state in names.compactMap { name in state.brokers[name].map { (name, $0) } } }
    }

    private func add(_ configuration: Configuration, names: [String], maintain: Bool = true) async throws {
        var added: [String: TokenBroker] = [:]
        for name in names {
            let settings = configuration.identities[name]!
            let storage = try configuration.makeTokenStorage(identity: name, logger: made.logger)
            let observer = made.observer
            let onPublish = made.onPublish.map { onPublish in { @Sendable (token: PublishedToken) in onPublish(name, token) } }
            let logger = name == Configuration.defaultIdentity ? made.logger : Self.logger(made.logger, identity: name)
            let broker = TokenBroker(
                configuration: settings, tokenEndpoint: TokenEndpointClient(configuration: settings, environment: made.environment), logger: logger,
                storage: storage, writesBeforeUse: made.writesBeforeUse,
                observer: { [weak self] event in
                    observer(name, event)
                    self?.tokenChanged(identity: name, event: event)
                },
                onPublish: onPublish,
                refreshTraces: made.traces.map { RefreshTraces(tracer: $0.tracer, identity: name, endpointHost: Self.endpointHost(settings)) })
            added[name] = broker
        }
        let (maintaining, wanted) = state.withLockedValue { state -> (Bool, [String: Configuration.Token]) in
            state.configuration = configuration
            for (name, broker) in added {
                state.brokers[name] = broker
                state.settings[name] = configuration.identities[name]
            }
            return (state.maintaining, state.settings)
        }
        for (name, broker) in added {
            if case .identity(let subject)? = wanted[name]?.exchange?.subject { await connect(broker, toSubject: subject) }
            if maintaining, maintain { startMaintenance(name, broker) }
        }
    }

    /// Gives an exchanging broker its subject identity's token, looked up by name at each call
    /// (a reload may replace that broker).
    private func connect(_ broker: TokenBroker, toSubject subject: String) async {
        await broker.useSubject { [weak self] () async throws(TokenBrokerError) -> String in
            guard let source = self?[subject] else { throw .misconfigured(reason: "subjectIdentity: the identity \"\(subject)\" is not configured") }
            return try await source.tokenForRequest(.usable).accessToken
        }
    }

    /// The token endpoint's host, for refresh spans: never the URL, whose query might hold a secret.
    static func endpointHost(_ settings: Configuration.Token) -> String {
        URLComponents(string: settings.endpoint)?.host ?? settings.issuer.flatMap { URLComponents(string: $0)?.host } ?? ""
    }

    /// A logger whose lines name the identity.
    static func logger(_ logger: Logger, identity: String) -> Logger {
        var logger = logger
        logger[metadataKey: "identity"] = "\(identity)"
        return logger
    }

    /// The first step of a reload: brokers for the identities `configuration` adds, so that the
    /// routes being prepared can name them; nothing running changes yet. Returns their names,
    /// for ``rollback(_:)`` when the reload cannot be applied.
    func prepare(_ configuration: Configuration) async throws -> [String] {
        let previous = state.withLockedValue { $0.settings }
        let added = configuration.identities.keys.filter { previous[$0] == nil }.sorted()
        try await add(configuration, names: added, maintain: false)
        return added
    }

    /// Drops the brokers ``prepare(_:)`` added for a reload that was not applied.
    func rollback(_ added: [String]) async {
        let brokers = state.withLockedValue { state in
            added.compactMap { name -> TokenBroker? in
                state.settings[name] = nil
                return state.brokers.removeValue(forKey: name)
            }
        }
        for broker in brokers { await broker.shutdown() }
    }

    /// The last step of a reload, once the routes are in force: added identities are kept
    /// fresh, changed ones reconfigured (their token dropped when it came from other settings,
    /// SPEC §8), removed ones stopped.
    func commit(_ configuration: Configuration) async {
        let (previous, brokers) = state.withLockedValue { ($0.settings, $0.brokers) }
        let next = configuration.identities
        for (name, settings) in next where previous[name] != nil && previous[name] != settings {
            guard let broker = brokers[name] else { continue }
            await broker.reconfigure(settings, endpoint: TokenEndpointClient(configuration: settings, environment: made.environment))
            state.withLockedValue { $0.settings[name] = settings }
            if case .identity(let subject)? = settings.exchange?.subject { await connect(broker, toSubject: subject) }
        }
        for name in previous.keys where next[name] == nil {
            let (broker, task) = state.withLockedValue { state in
                state.settings[name] = nil
                return (state.brokers.removeValue(forKey: name), state.maintenance.removeValue(forKey: name))
            }
            task?.cancel()
            // Requests in flight keep their broker; its connections close once its refresh is done.
            if let broker { Task { await broker.refreshSettled(); await broker.shutdown() } }
        }
        state.withLockedValue { $0.configuration = configuration }
        for (name, broker) in all { startMaintenance(name, broker) }
    }

    /// A broker's token changed: exchanges made from it are replaced at their next need.
    private func tokenChanged(identity: String, event: TokenBroker.RefreshEvent) {
        switch event {
        case .refreshed, .adopted: break
        default: return
        }
        let (source, dependents) = state.withLockedValue { state in
            (state.brokers[identity], state.settings.filter { $0.value.exchange?.subject == .identity(identity) }.keys.compactMap { state.brokers[$0] })
        }
        guard let source, !dependents.isEmpty else { return }
        Task {
            guard let token = source.publisher.latest()?.accessToken else { return }
            for broker in dependents { await broker.subjectChanged(to: token) }
        }
    }

    /// Keeps every identity's token fresh until cancelled (a broker added by a reload starts
    /// its own loop; a removed one's stops); returns once every loop has ended, a refresh under
    /// way included (its rotated refresh token must reach the store before the process exits).
    public func keepFresh() async {
        let brokers = state.withLockedValue { state in
            state.maintaining = true
            return state.brokers
        }
        for (name, broker) in brokers { startMaintenance(name, broker) }
        while !Task.isCancelled { try? await Task.sleep(for: .seconds(3600)) }
        let tasks = state.withLockedValue { state in
            state.maintaining = false
            defer { state.maintenance.removeAll() }
            return Array(state.maintenance.values)
        }
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
    }

    /// Starts `name`'s maintenance loop, unless maintenance is not running or it has one.
    private func startMaintenance(_ name: String, _ broker: TokenBroker) {
        state.withLockedValue { state in
            guard state.maintaining, state.maintenance[name] == nil else { return }
            state.maintenance[name] = Task { await broker.keepFresh() }
        }
    }

    /// Closes every broker's connections; call once before the process exits.
    public func shutdown() async {
        for (_, broker) in all {
            await broker.refreshSettled()
            await broker.shutdown()
        }
    }
}
