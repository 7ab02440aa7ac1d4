import Dispatch
import Glibc

/// Waits for SIGTERM or SIGINT (the default actions are replaced, so the process can drain).
public enum TerminationSignal {
    public static func wait() async -> Int32 {
        await withCheckedContinuation { (continuation: CheckedContinuation<Int32, Never>) in
            let queue = DispatchQueue(label: "tokenproxy.signals")
            let resumed = SignalBox(continuation)
            for number in [SIGTERM, SIGINT] {
                signal(number, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
                source.setEventHandler { resumed.resume(number) }
                source.resume()
                resumed.keep(source)
            }
        }
    }

    private final class SignalBox: @unchecked Sendable {
        // Only touched on the signal queue, after setup.
        private var continuation: CheckedContinuation<Int32, Never>?
        private var sources: [any DispatchSourceSignal] = []

        init(_ continuation: CheckedContinuation<Int32, Never>) {
            self.continuation = continuation
        }

        func keep(_ source: any DispatchSourceSignal) { sources.append(source) }

        func resume(_ number: Int32) {
            continuation?.resume(returning: number)
            continuation = nil
        }
    }
}
