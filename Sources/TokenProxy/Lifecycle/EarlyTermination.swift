import Dispatch
import Glibc
import NIOConcurrencyHelpers
import ServiceLifecycle

/// Catches SIGTERM and SIGINT from the first moment of `tokenproxy run`, before the service
/// group installs its own handlers: a stop requested during startup must drain and exit 0,
/// not kill the process with the default action.
final class EarlyTermination: @unchecked Sendable {
    private struct State {
        var requested = false
        var group: ServiceGroup?
    }

    private let state = NIOLockedValueBox(State())
    // Only kept alive; never touched after init (the reason for @unchecked Sendable).
    private var sources: [any DispatchSourceSignal] = []

    init() {
        let queue = DispatchQueue(label: "tokenproxy.early-termination")
        for number in [SIGTERM, SIGINT] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            source.setEventHandler { [weak self] in self?.requested() }
            source.resume()
            sources.append(source)
        }
    }

    private func requested() {
        let group = state.withLockedValue { state -> ServiceGroup? in
            state.requested = true
            return state.group
        }
        if let group { Task { await group.triggerGracefulShutdown() } }
    }

    /// Hands stops over to `group`; one that came earlier is passed on at once (a group that
    /// has not started yet remembers it).
    func forward(to group: ServiceGroup) {
        let alreadyRequested = state.withLockedValue { state -> Bool in
            state.group = group
            return state.requested
        }
        if alreadyRequested { Task { await group.triggerGracefulShutdown() } }
    }
}
