import Glibc
import NIOConcurrencyHelpers
import NIOPosix

/// Gives memory back to the system after a crowd of connections is gone (a slowloris wave, a
/// burst of clients): glibc keeps freed heap pages in its arenas, so the resident size would
/// stay at the crowd's peak. When the open connections fall to a quarter of a peak of at least
/// `minimumPeak`, `malloc_trim` runs once, on a thread-pool thread, not on an event loop.
final class MemoryTrimmer: Sendable {
    private let minimumPeak: Int
    private let state = NIOLockedValueBox(State())

    private struct State {
        var peak = 0
        /// Connections still open at the last trim: their memory is trimmed once they are gone.
        var openAtLastTrim = 0
    }

    init(minimumPeak: Int = 128) {
        self.minimumPeak = minimumPeak
    }

    /// Call with the number of connections open now, whenever it changes.
    func connectionsChanged(open: Int) {
        let shouldTrim = state.withLockedValue { state in
            if open > state.peak {
                state.peak = open
                return false
            }
            if state.peak >= minimumPeak, open <= state.peak / 4 {
                state.peak = open
                state.openAtLastTrim = open
                return true
            }
            if open == 0, state.openAtLastTrim > 0 {
                state.openAtLastTrim = 0
                return true
            }
            return false
        }
        guard shouldTrim, let trim = Self.mallocTrim else { return }
        NIOThreadPool.singleton.submit { state in
            guard case .active = state else { return }
            _ = trim(0)
        }
    }

    /// glibc's `malloc_trim`, which Swift's Glibc module does not export (it is in malloc.h).
    private static let mallocTrim: (@convention(c) (Int) -> Int32)? = {
        guard let symbol = dlsym(nil, "malloc_trim") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (Int) -> Int32).self)
    }()
}
