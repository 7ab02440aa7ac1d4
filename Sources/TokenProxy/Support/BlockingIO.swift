import NIOPosix

/// Runs blocking system calls (flock, fsync, file reads) on NIO's blocking-I/O thread pool, so
/// that they never stall an event loop or the cooperative pool.
enum BlockingIO {
    static func run<T: Sendable, E: Error>(_ body: @escaping @Sendable () throws(E) -> T) async throws(E) -> T {
        let result: Result<T, E>
        do {
            result = try await NIOThreadPool.singleton.runIfActive { () -> Result<T, E> in
                do throws(E) { return .success(try body()) } catch { return .failure(error) }
            }
        } catch {
            // The singleton pool is never shut down; run inline rather than lose the call.
            result = Result { () throws(E) -> T in try body() }
        }
        return try result.get()
    }
}
