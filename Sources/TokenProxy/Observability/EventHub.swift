import FoundationEssentials
import NIOConcurrencyHelpers

/// The live events of `GET /events` (SPEC §7): `refresh`, `adopted`, `refresh_failed`,
/// `recovered_401`, `faults` and `login_needed`, each one JSON object with its `type`, `time`,
/// and `identity` or `route`; never a token. Published from anywhere (a broker, an event loop
/// of the data path, the admin API): with nobody listening a publish is one lock and a count;
/// each subscriber gets the Server-Sent Events text and decides itself what to do with a
/// backlog (``EventStreamWriter`` drops a slow reader).
public final class EventHub: Sendable {
    public typealias Subscriber = @Sendable (String) -> Void

    private struct State {
        var nextID: UInt64 = 0
        var subscribers: [UInt64: Subscriber] = [:]
        /// The latest events, so that a page that just opened shows some history.
        var recent: [String] = []
    }

    /// How many recent events a new subscriber is sent first.
    static let recentKept = 20

    private let state = NIOLockedValueBox(State())

    public init() {}

    /// The event types of SPEC §7.
    public enum EventType: String, Sendable, CaseIterable {
        case refresh, adopted, refreshFailed = "refresh_failed", recovered401 = "recovered_401", faults, loginNeeded = "login_needed"
    }

    /// Publishes one event; `fields` must name the identity or the route, and never a secret.
    public func publish(_ type: EventType, _ fields: [String: JSONValue], at time: Date = Date()) {
        var fields = fields
        fields["type"] = .string(type.rawValue)
        fields["time"] = .string(RFC3339.format(time))
        let text = "event: \(type.rawValue)\ndata: \(JSONValue.object(fields).serialized)\n\n"
        let subscribers = state.withLockedValue { state in
            state.recent.append(text)
            if state.recent.count > Self.recentKept { state.recent.removeFirst(state.recent.count - Self.recentKept) }
            return Array(state.subscribers.values)
        }
        for deliver in subscribers { deliver(text) }
    }

    /// Adds a subscriber, which is first sent the recent events; returns its id for
    /// ``unsubscribe(_:)``.
    public func subscribe(_ deliver: @escaping Subscriber) -> UInt64 {
        let (id, recent) = state.withLockedValue { state in
            state.nextID += 1
            state.subscribers[state.nextID] = deliver
            return (state.nextID, state.recent)
        }
        for text in recent { deliver(text) }
        return id
    }

    public func unsubscribe(_ id: UInt64) {
        _ = state.withLockedValue { $0.subscribers.removeValue(forKey: id) }
    }

    public var subscriberCount: Int { state.withLockedValue { $0.subscribers.count } }
}
