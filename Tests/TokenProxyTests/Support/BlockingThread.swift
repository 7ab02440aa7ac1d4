import Foundation

/// Runs blocking work (socket reads in raw clients) on a thread of its own: blocking a thread of
/// the cooperative pool, which has only as many threads as cores, would starve the servers
/// the test runs in the same process.
func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread {
            continuation.resume(with: Result { try body() })
        }
        thread.start()
    }
}
