/// Which route of a listener takes a request (SPEC §2.4), decided from its `Host` and path
/// alone: built once from the configuration, resolved per request without allocating.
///
/// Routes naming the request's host are considered first, and only when none of them matches,
/// the routes without a host. A route matches when its prefix is a prefix of the path on a
/// segment boundary (`/orders` and `/orders/` both take `/orders` and `/orders/1`, never
/// `/ordersX`); the longest prefix wins.
struct RouteTable: Sendable, Equatable {
    struct Entry: Sendable, Equatable {
        /// Lowercased, without port; `nil`: any host.
        var host: [UInt8]?
        /// Without a trailing `/`; empty for `/`.
        var prefix: [UInt8]
        /// What a match resolves to (the route's position in the listener's list).
        var route: Int
    }

    /// Host entries first, then the others; within each, longest prefix first.
    private let entries: [Entry]
    /// The one route that takes every request (a single route on `/` without host): no lookup.
    private let everything: Int?

    init(_ entries: [Entry]) {
        self.entries = entries.sorted { ($0.host == nil ? 1 : 0, -$0.prefix.count, $0.route) < ($1.host == nil ? 1 : 0, -$1.prefix.count, $1.route) }
        everything = entries.count == 1 && entries[0].host == nil && entries[0].prefix.isEmpty ? entries[0].route : nil
    }

    /// The entry for a route's host and `pathPrefix` as the configuration spells them.
    static func entry(host: String?, pathPrefix: String, route: Int) -> Entry {
        var prefix = Array(pathPrefix.utf8)
        while prefix.last == UInt8(ascii: "/") { prefix.removeLast() }
        return Entry(host: host.map { Array($0.lowercased().utf8) }, prefix: prefix, route: route)
    }

    /// Whether no request needs its host or path looked at.
    var takesEverything: Bool { everything != nil }

    /// The route for a request: `host` is its `Host` value (any case, with or without port),
    /// `path` its target's path (the query, if still attached, ends it).
    func resolve(host: UnsafeRawBufferPointer?, path: UnsafeRawBufferPointer) -> Int? {
        if let everything { return everything }
        let hostName = host.map(Self.hostName)
        // Entries are ordered so that the first match is the answer: the host's own routes
        // (longest prefix first), then those without a host.
        for entry in entries {
            if let entryHost = entry.host {
                guard let hostName, Self.equalsIgnoringCase(hostName, entryHost) else { continue }
            }
            if Self.matches(path: path, prefix: entry.prefix) { return entry.route }
        }
        return nil
    }

    /// `Example.com:8787` → `Example.com`; `[::1]:8787` → `[::1]`; a trailing dot dropped.
    static func hostName(_ host: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        var end = host.count
        if host.first == UInt8(ascii: "[") {
            if let close = host.firstIndex(of: UInt8(ascii: "]")) { end = close + 1 }
        } else if let colon = host.lastIndex(of: UInt8(ascii: ":")) {
            end = colon
        }
        if end > 0, host[end - 1] == UInt8(ascii: ".") { end -= 1 }
        return UnsafeRawBufferPointer(rebasing: host[0..<end])
    }

    /// `prefix` starts `path` and ends at a segment boundary: the path's end, a `/` or a `?`.
    static func matches(path: UnsafeRawBufferPointer, prefix: [UInt8]) -> Bool {
        guard path.count >= prefix.count else { return false }
        for index in 0..<prefix.count where path[index] != prefix[index] { return false }
        if path.count == prefix.count { return true }
        let next = path[prefix.count]
        return next == UInt8(ascii: "/") || next == UInt8(ascii: "?") || prefix.isEmpty
    }

    private static func equalsIgnoringCase(_ bytes: UnsafeRawBufferPointer, _ lowercased: [UInt8]) -> Bool {
        guard bytes.count == lowercased.count else { return false }
        for index in 0..<lowercased.count {
            var byte = bytes[index]
            if byte >= UInt8(ascii: "A"), byte <= UInt8(ascii: "Z") { byte += 32 }
            if byte != lowercased[index] { return false }
        }
        return true
    }
}
