import Foundation
import Glibc

/// A plain TCP client for requests that a well-behaved HTTP client would refuse to send
/// (smuggling attempts, CONNECT, pipelining) and for timing streamed bytes as they arrive.
struct RawHTTPClient {
    let port: Int
    /// The loopback address to connect to (a second listener may be on 127.0.0.2).
    var host = "127.0.0.1"

    /// Sends `request` verbatim and returns everything the server sent until it closed the
    /// connection or `timeout` passed.
    /// With `halfClose`, the client shuts its sending side after the request (as `nc -N` does).
    func exchange(_ request: String, timeout: Duration = .seconds(5), halfClose: Bool = false) async throws -> String {
        let (port, host) = (self.port, self.host)
        return try await onOwnThread {
            let socket = try Self.connect(port: port, host: host)
            defer { close(socket) }
            try Self.send(request, on: socket)
            if halfClose { shutdown(socket, Int32(SHUT_WR)) }
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
        let (port, host) = (self.port, self.host)
        return try await onOwnThread {
            let socket = try Self.connect(port: port, host: host)
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

    static func connect(port: Int, host: String = "127.0.0.1") throws -> Int32 {
        let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard socket >= 0 else { throw POSIXError(.EIO) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr(host)
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

    /// Whether the peer has neither closed `socket` nor sent anything on it, looked at without
    /// waiting and without taking what is there.
    static func isOpen(_ socket: Int32) -> Bool {
        var byte: UInt8 = 0
        let count = recv(socket, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
        return count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)
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

/// A client connection kept open across several sends and receives (a tunnel).
final class RawConnection: @unchecked Sendable {
    fileprivate let socket: Int32
    /// Everything received so far.
    private(set) var received: [UInt8] = []
    private(set) var closedByPeer = false

    init(port: Int, host: String = "127.0.0.1") throws {
        socket = try RawHTTPClient.connect(port: port, host: host)
    }

    deinit { close(socket) }

    func send(_ bytes: [UInt8]) async throws {
        let socket = self.socket
        try await onOwnThread {
            var offset = 0
            while offset < bytes.count {
                let written = bytes[offset...].withUnsafeBytes { Glibc.send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                guard written > 0 else { throw POSIXError(.EPIPE) }
                offset += written
            }
        }
    }

    func send(_ text: String) async throws { try await send(Array(text.utf8)) }

    /// Receives until `done(received)` holds, the peer closes, or `timeout` passes; returns `done`'s verdict.
    @discardableResult
    func receive(until done: @escaping @Sendable ([UInt8]) -> Bool, timeout: Duration = .seconds(10)) async throws -> Bool {
        let socket = self.socket
        let start = received
        let (bytes, closed) = try await onOwnThread { () -> ([UInt8], Bool) in
            var bytes = start
            let deadline = ContinuousClock.now.advanced(by: timeout)
            while ContinuousClock.now < deadline, !done(bytes) {
                var descriptor = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
                guard poll(&descriptor, 1, 50) > 0 else { continue }
                var buffer = [UInt8](repeating: 0, count: 65536)
                let count = buffer.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, 0) }
                if count <= 0 { return (bytes, true) }
                bytes += buffer[0..<count]
            }
            return (bytes, false)
        }
        received = bytes
        closedByPeer = closedByPeer || closed
        return done(bytes)
    }

    /// Waits for the peer to close the connection, up to `timeout`.
    func waitForClose(timeout: Duration) async throws -> Bool {
        try await receive(until: { _ in false }, timeout: timeout)
        return closedByPeer
    }
}

extension RawConnection {
    /// Sends filler bytes for `duration`, as fast as the peer takes them, up to `limit`;
    /// returns how many it took.
    func sendFiller(for duration: Duration, limit: Int) async throws -> Int {
        let socket = self.socket
        return try await onOwnThread {
            let chunk = [UInt8](repeating: 0x78, count: 65536)
            var sent = 0
            let deadline = ContinuousClock.now.advanced(by: duration)
            while sent < limit, ContinuousClock.now < deadline {
                var descriptor = pollfd(fd: socket, events: Int16(POLLOUT), revents: 0)
                guard poll(&descriptor, 1, 50) > 0 else { continue }
                let written = chunk.withUnsafeBytes { Glibc.send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
                if written < 0, errno == EAGAIN { continue }
                guard written > 0 else { break }
                sent += written
            }
            return sent
        }
    }
}
