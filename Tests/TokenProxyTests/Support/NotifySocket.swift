import Foundation
import Glibc
import NIOConcurrencyHelpers

/// Plays systemd's side of `sd_notify`: a datagram socket whose messages are kept with the
/// moment they arrived.
final class NotifySocket: @unchecked Sendable {
    let path: String
    private let descriptor: Int32
    private let received = NIOLockedValueBox<[(at: Date, message: String)]>([])
    private let stopped = NIOLockedValueBox(false)

    init(in directory: TemporaryDirectory) throws {
        path = directory.file("notify.sock")
        descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else { throw POSIXError(.EADDRINUSE) }
        let thread = Thread { [self] in
            var buffer = [UInt8](repeating: 0, count: 4096)
            while !stopped.withLockedValue({ $0 }) {
                var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
                guard poll(&poller, 1, 50) > 0 else { continue }
                let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
                if count > 0 {
                    let message = String(decoding: buffer[0..<count], as: UTF8.self)
                    received.withLockedValue { $0.append((Date(), message)) }
                }
            }
            // Closed by the thread that reads it: closed from another thread, the number could
            // be reused by one of NIO's sockets before this loop's next recv, which would then
            // steal its bytes (NIO asserts on a readable socket with nothing to read).
            Glibc.close(descriptor)
        }
        thread.start()
    }

    var messages: [(at: Date, message: String)] { received.withLockedValue { $0 } }

    /// Waits until a message containing `text` arrives after the first `skip` messages.
    func waitFor(_ text: String, after skip: Int = 0, timeout: Duration = .seconds(15)) async -> (at: Date, message: String)? {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while ContinuousClock.now < deadline {
            if let found = messages.dropFirst(skip).first(where: { $0.message.contains(text) }) { return found }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return nil
    }

    /// Stops the reader, which closes the socket within its next 50 ms poll.
    func close() {
        stopped.withLockedValue { $0 = true }
    }
}
