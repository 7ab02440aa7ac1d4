import Foundation
import Glibc

/// A plain TCP client for requests that a well-behaved HTTP client would refuse to send
/// (smuggling attempts, CONNECT, pipelining) and for timing streamed bytes as they arrive.
struct RawHTTPClient {
    let port: Int

    /// Sends `request` verbatim and returns everything the server sent until it closed the
    /// connection or `timeout` passed.
    func exchange(_ request: String, timeout: Duration = .seconds(5)) async throws -> String {
        let port = self.port
        return try await onOwnThread {
            let socket = try Self.connect(port: port)
            defer { close(socket) }
            try Self.send(request, on: socket)
            var received: [UInt8] = []
            let deadline = ContinuousClock.now.advanced(by: timeout)
            while ContinuousClock.now < deadline {
                guard let chunk = Self.receive(on: socket, waitingAtMost: .milliseconds(100)) else { continue }
                if chunk.isEmpty { break }
                received += chunk
            }
            return String(decoding: received, as: UTF8.self)
        }
    }

    /// Sends `request` and reports each chunk of bytes with the moment it arrived.
    func stream(_ request: String, until done: @escaping @Sendable (String) -> Bool, timeout: Duration = .seconds(10)) async throws -> [(at: Date, text: String)] {
        let port = self.port
        return try await onOwnThread {
            let socket = try Self.connect(port: port)
            defer { close(socket) }
            try Self.send(request, on: socket)
            var chunks: [(Date, String)] = []
            var all = ""
            let deadline = ContinuousClock.now.advanced(by: timeout)
            while ContinuousClock.now < deadline, !done(all) {
                guard let chunk = Self.receive(on: socket, waitingAtMost: .milliseconds(20)) else { continue }
                if chunk.isEmpty { break }
                let text = String(decoding: chunk, as: UTF8.self)
                chunks.append((Date(), text))
                all += text
            }
            return chunks
        }
    }

    static func connect(port: Int) throws -> Int32 {
        let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard socket >= 0 else { throw POSIXError(.EIO) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else {
            close(socket)
            throw POSIXError(.ECONNREFUSED)
        }
        return socket
    }

    private static func send(_ text: String, on socket: Int32) throws {
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Glibc.send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard written > 0 else { throw POSIXError(.EPIPE) }
            offset += written
        }
    }

    /// `nil`: nothing within the wait; empty: the peer closed.
    private static func receive(on socket: Int32, waitingAtMost wait: Duration) -> [UInt8]? {
        var descriptor = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
        guard poll(&descriptor, 1, Int32(wait.milliseconds)) > 0 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 65536)
        let count = buffer.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, 0) }
        return count <= 0 ? [] : Array(buffer[0..<count])
    }
}
