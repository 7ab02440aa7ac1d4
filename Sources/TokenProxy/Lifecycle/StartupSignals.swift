import Dispatch
import Glibc
import NIOConcurrencyHelpers
import ServiceLifecycle

/// Catches SIGTERM, SIGINT and SIGHUP from the first moment of `tokenproxy run`, before the
/// services install their own handlers: with the default actions, a stop or a reload requested
/// during startup (`systemctl stop`/`reload` right after `start`) would kill the process.
/// Early stops are passed to the service group, an early reload to the reload service.
final class StartupSignals: @unchecked Sendable {
    private struct State {
        var stopRequested = false
        var reloadRequested = false
        var group: ServiceGroup?
    }

    private let state = NIOLockedValueBox(State())
    // Only kept alive; never touched after init (the reason for @unchecked Sendable).
    private var sources: [any DispatchSourceSignal] = []

    init() {
        let queue = DispatchQueue(label: "tokenproxy.startup-signals")
        for number in [SIGTERM, SIGINT, SIGHUP] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            source.setEventHandler { [weak self] in self?.received(number) }
            source.resume()
            sources.append(source)
        }
    }

    private func received(_ number: Int32) {
        guard number != SIGHUP else {
            state.withLockedValue { $0.reloadRequested = true }
            return
        }
        let group = state.withLockedValue { state -> ServiceGroup? in
            state.stopRequested = true
            return state.group
        }
        if let group { Task { await group.triggerGracefulShutdown() } }
    }

    /// Hands stops over to `group`; one that came earlier is passed on at once (a group that
    /// has not started yet remembers it).
    func forwardStops(to group: ServiceGroup) {
        let alreadyRequested = state.withLockedValue { state -> Bool in
            state.group = group
            return state.stopRequested
        }
        if alreadyRequested { Task { await group.triggerGracefulShutdown() } }
    }

    /// Whether a SIGHUP came before the reload service listened for it (and forgets it).
    func takeEarlyReload() -> Bool {
        state.withLockedValue { state in
            defer { state.reloadRequested = false }
            return state.reloadRequested
        }
    }
}
