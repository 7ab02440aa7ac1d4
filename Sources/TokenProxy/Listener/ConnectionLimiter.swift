import NIOConcurrencyHelpers
import NIOCore

/// The client connections of a proxy listener, counted against `limits.maxConnections` in the
/// order the listener accepted them (SPEC §2.2).
///
/// The count is taken on the listening channel's loop, as each connection is accepted: counted
/// where connections are set up (on their own loops, in parallel), connection N+1 could be set
/// up before connection N and take its place, so that a limit of 4 served a fifth.
final class ClientConnections: Sendable {
    private struct State {
        var open: [ObjectIdentifier: any Channel] = [:]
        /// Accepted over the limit: closed, without an answer, as soon as they are set up.
        var refused: Set<ObjectIdentifier> = []
    }

    private let state = NIOLockedValueBox(State())

    /// Connections now open.
    var count: Int { state.withLockedValue { $0.open.count } }
    var all: [any Channel] { state.withLockedValue { Array($0.open.values) } }

    /// Counts an accepted connection; returns the number open, or `nil` when it is over `limit`.
    func admit(_ channel: any Channel, limit: Int) -> Int? {
        let id = ObjectIdentifier(channel)
        return state.withLockedValue { state in
            guard state.open.count < limit else {
                state.refused.insert(id)
                return nil
            }
            state.open[id] = channel
            return state.open.count
        }
    }

    /// Whether `channel` was accepted over the limit (asked once, where it is set up).
    func wasRefused(_ channel: any Channel) -> Bool {
        state.withLockedValue { $0.refused.remove(ObjectIdentifier(channel)) != nil }
    }

    /// Forgets a closed connection; returns the number still open.
    func remove(_ channel: any Channel) -> Int {
        state.withLockedValue { state in
            state.open.removeValue(forKey: ObjectIdentifier(channel))
            return state.open.count
        }
    }
}

/// Sits in the listening channel's pipeline and counts each accepted connection as it comes.
final class ConnectionLimiter: ChannelInboundHandler {
    typealias InboundIn = any Channel
    typealias InboundOut = any Channel

    private let connections: ClientConnections
    private let limit: @Sendable () -> Int
    private let changed: @Sendable (Int) -> Void

    /// `limit` is read per connection (a reload may change it); `changed` hears the number open.
    init(connections: ClientConnections, limit: @escaping @Sendable () -> Int, changed: @escaping @Sendable (Int) -> Void) {
        self.connections = connections
        self.limit = limit
        self.changed = changed
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let channel = unwrapInboundIn(data)
        if let open = connections.admit(channel, limit: limit()) {
            changed(open)
            let connections = self.connections
            let changed = self.changed
            channel.closeFuture.whenComplete { _ in changed(connections.remove(channel)) }
        }
        // Passed on either way: the bootstrap sets it up, and a refused one is closed there.
        context.fireChannelRead(data)
    }
}
