import Testing

@testable import TokenProxy

/// SPEC §2.4's matching rules as a table: which route of a listener a request goes to, from its
/// `Host` and path alone. No sockets.
@Suite("Route matching (SPEC §2.4)")
struct RouteTableTests {
    struct Row: Sendable, CustomStringConvertible {
        var description: String
        /// The listener's routes, in the order of the file: `host` (as the configuration spells
        /// it, `nil`: any host) and `pathPrefix`.
        var routes: [(host: String?, prefix: String)]
        /// The request's `Host` value, as the client sent it; `nil`: no `Host` header.
        var host: String?
        /// The request target's path (with its query, when it has one).
        var path: String
        /// The position of the route that takes the request; `nil`: no route (404 `no_route`).
        var expected: Int?
    }

    /// A listener with an API on `/`, one on `/orders` and one on `/orders/items`.
    static let nested: [(host: String?, prefix: String)] = [(nil, "/"), (nil, "/orders"), (nil, "/orders/items")]
    /// The routes of SPEC §2.4's example listener: a host of its own, and prefixes without host.
    static let hosts: [(host: String?, prefix: String)] = [(nil, "/orders/"), ("status.localhost", "/"), (nil, "/"), ("api.example", "/v2")]

    static let rows: [Row] = [
        // The longest prefix wins, whatever the order of the file.
        Row(description: "the longest prefix wins", routes: nested, path: "/orders/items/7", expected: 2),
        Row(description: "the longest prefix wins when it comes first in the file", routes: [(nil, "/orders/items"), (nil, "/orders"), (nil, "/")], path: "/orders/items/7", expected: 0),
        Row(description: "a shorter prefix takes what the longer does not", routes: nested, path: "/orders/1", expected: 1),
        Row(description: "a prefix that is not on a segment boundary falls back to a shorter one", routes: nested, path: "/orders/itemsX", expected: 1),
        Row(description: "a prefix that is not on a segment boundary falls back to /", routes: nested, path: "/ordersX", expected: 0),

        // Segment boundaries: /orders and /orders/ are the same prefix.
        Row(description: "/orders takes /orders", routes: [(nil, "/orders")], path: "/orders", expected: 0),
        Row(description: "/orders takes /orders/", routes: [(nil, "/orders")], path: "/orders/", expected: 0),
        Row(description: "/orders takes /orders/1", routes: [(nil, "/orders")], path: "/orders/1", expected: 0),
        Row(description: "/orders takes /orders?x=1", routes: [(nil, "/orders")], path: "/orders?x=1", expected: 0),
        Row(description: "/orders never takes /ordersX", routes: [(nil, "/orders")], path: "/ordersX", expected: nil),
        Row(description: "/orders never takes /orders-archive", routes: [(nil, "/orders")], path: "/orders-archive/1", expected: nil),
        Row(description: "/orders never takes /order", routes: [(nil, "/orders")], path: "/order", expected: nil),
        Row(description: "/orders never takes /", routes: [(nil, "/orders")], path: "/", expected: nil),
        Row(description: "/orders never takes /api/orders", routes: [(nil, "/orders")], path: "/api/orders", expected: nil),
        Row(description: "/orders/ takes /orders", routes: [(nil, "/orders/")], path: "/orders", expected: 0),
        Row(description: "/orders/ takes /orders/1", routes: [(nil, "/orders/")], path: "/orders/1", expected: 0),
        Row(description: "/orders/ takes /orders?x=1", routes: [(nil, "/orders/")], path: "/orders?x=1", expected: 0),
        Row(description: "/orders/ never takes /ordersX", routes: [(nil, "/orders/")], path: "/ordersX", expected: nil),
        Row(description: "prefixes are compared with case", routes: [(nil, "/orders")], path: "/Orders/1", expected: nil),
        Row(description: "a prefix of several segments", routes: [(nil, "/api/v1"), (nil, "/api")], path: "/api/v1/orders", expected: 0),
        Row(description: "a prefix of several segments, on a boundary only", routes: [(nil, "/api/v1"), (nil, "/api")], path: "/api/v10", expected: 1),

        // `/` takes everything (here beside another route, so that the table is searched).
        Row(description: "/ takes /", routes: [(nil, "/"), (nil, "/orders")], path: "/", expected: 0),
        Row(description: "/ takes any path", routes: [(nil, "/"), (nil, "/orders")], path: "/users/42", expected: 0),
        Row(description: "/ takes a bare query", routes: [(nil, "/"), (nil, "/orders")], path: "/?q=1", expected: 0),
        Row(description: "/ takes a request without Host", routes: [(nil, "/"), ("api.example", "/")], host: nil, path: "/x", expected: 0),

        // A host's own routes come first, whatever their prefix's length.
        Row(description: "a host's route beats a longer prefix without host", routes: [(nil, "/api/v1"), ("api.example", "/")], host: "api.example", path: "/api/v1/x", expected: 1),
        Row(description: "the host's longest prefix wins among its routes", routes: [("api.example", "/"), ("api.example", "/v2"), (nil, "/v2/items")], host: "api.example", path: "/v2/items", expected: 1),
        Row(description: "no route of the host matches: the routes without host are tried", routes: hosts, host: "api.example", path: "/orders/1", expected: 0),
        Row(description: "no route of the host matches: / without host takes it", routes: hosts, host: "api.example", path: "/v1/x", expected: 2),
        Row(description: "the host's route takes its prefix", routes: hosts, host: "api.example", path: "/v2/x", expected: 3),
        Row(description: "a host route on / takes every path of the host", routes: hosts, host: "status.localhost", path: "/orders/1", expected: 1),
        Row(description: "a host with routes and no fallback: no route", routes: [("api.example", "/v2"), (nil, "/orders")], host: "api.example", path: "/v1", expected: nil),

        // Hosts are matched without regard to case or port.
        Row(description: "the host in another case", routes: hosts, host: "Status.LOCALHOST", path: "/", expected: 1),
        Row(description: "the host with a port", routes: hosts, host: "status.localhost:8787", path: "/", expected: 1),
        Row(description: "the host in another case with a port", routes: [("api.example", "/"), (nil, "/")], host: "API.Example:8787", path: "/x", expected: 0),
        Row(description: "the host with a trailing dot", routes: [("api.example", "/"), (nil, "/")], host: "api.example.", path: "/x", expected: 0),
        Row(description: "the host with a trailing dot and a port", routes: [("api.example", "/"), (nil, "/")], host: "api.example.:8787", path: "/x", expected: 0),
        Row(description: "the route's host in another case", routes: [("API.Example", "/"), (nil, "/")], host: "api.example", path: "/x", expected: 0),
        Row(description: "an IPv6 host with a port", routes: [("[::1]", "/"), (nil, "/")], host: "[::1]:8787", path: "/x", expected: 0),
        Row(description: "an IPv6 host without a port", routes: [("[::1]", "/"), (nil, "/")], host: "[::1]", path: "/x", expected: 0),
        Row(description: "an IPv4 host with a port", routes: [("127.0.0.1", "/"), (nil, "/")], host: "127.0.0.1:8787", path: "/x", expected: 0),

        // A host route never takes another host's requests.
        Row(description: "another host falls back to the routes without host", routes: hosts, host: "other.example", path: "/v2/x", expected: 2),
        Row(description: "another host with only host routes: no route", routes: [("api.example", "/")], host: "other.example", path: "/x", expected: nil),
        Row(description: "no Host header with only host routes: no route", routes: [("api.example", "/")], host: nil, path: "/x", expected: nil),
        Row(description: "a longer name that ends with the host", routes: [("api.example", "/")], host: "evil-api.example", path: "/x", expected: nil),
        Row(description: "a longer name that starts with the host", routes: [("api.example", "/")], host: "api.example.evil", path: "/x", expected: nil),
        Row(description: "a subdomain of the host", routes: [("api.example", "/")], host: "www.api.example:8787", path: "/x", expected: nil),
        Row(description: "an empty Host", routes: [("api.example", "/")], host: "", path: "/x", expected: nil),
        Row(description: "a different IPv6 host", routes: [("[::1]", "/")], host: "[::2]:8787", path: "/x", expected: nil),

        // No route at all.
        Row(description: "no prefix matches: no route", routes: [(nil, "/orders"), (nil, "/users")], path: "/billing", expected: nil),
        Row(description: "no prefix matches with a host: no route", routes: [(nil, "/orders"), ("api.example", "/users")], host: "api.example", path: "/billing", expected: nil),
    ]

    @Test("which route takes a request", arguments: rows)
    func resolve(row: Row) {
        let table = RouteTable(row.routes.enumerated().map { RouteTable.entry(host: $1.host, pathPrefix: $1.prefix, route: $0) })
        #expect(Self.resolve(table, host: row.host, path: row.path) == row.expected)
    }

    static func resolve(_ table: RouteTable, host: String?, path: String) -> Int? {
        Array(path.utf8).withUnsafeBytes { path in
            guard let host else { return table.resolve(host: nil, path: path) }
            return Array(host.utf8).withUnsafeBytes { host in table.resolve(host: host, path: path) }
        }
    }

    struct FastPathRow: Sendable, CustomStringConvertible {
        var description: String
        var routes: [(host: String?, prefix: String)]
        var takesEverything: Bool
    }

    static let fastPathRows: [FastPathRow] = [
        FastPathRow(description: "a single route on / without host", routes: [(nil, "/")], takesEverything: true),
        FastPathRow(description: "a single route on /orders", routes: [(nil, "/orders")], takesEverything: false),
        FastPathRow(description: "a single route on / with a host", routes: [("api.example", "/")], takesEverything: false),
        FastPathRow(description: "two routes, one on /", routes: [(nil, "/"), (nil, "/orders")], takesEverything: false),
        FastPathRow(description: "two routes on / for different hosts", routes: [(nil, "/"), ("api.example", "/")], takesEverything: false),
    ]

    @Test("only a single route on / without host skips the lookup", arguments: fastPathRows)
    func fastPath(row: FastPathRow) {
        let table = RouteTable(row.routes.enumerated().map { RouteTable.entry(host: $1.host, pathPrefix: $1.prefix, route: $0) })
        #expect(table.takesEverything == row.takesEverything)
    }

    @Test func theSingleRootRouteTakesEveryRequestItsPositionSays() {
        // The route's position need not be 0: the table answers what the entry names.
        let table = RouteTable([RouteTable.entry(host: nil, pathPrefix: "/", route: 7)])
        #expect(table.takesEverything)
        for (host, path) in [(nil, "/"), ("api.example:8787", "/orders/1"), ("other", "/ordersX?y=2"), ("", "*")] as [(String?, String)] {
            #expect(Self.resolve(table, host: host, path: path) == 7, "\(host ?? "no host") \(path)")
        }
    }

    @Test func entriesNormalizeHostAndPrefixAsTheConfigurationSpellsThem() {
        #expect(RouteTable.entry(host: "API.Example", pathPrefix: "/orders/", route: 3) == RouteTable.Entry(host: Array("api.example".utf8), prefix: Array("/orders".utf8), route: 3))
        #expect(RouteTable.entry(host: nil, pathPrefix: "/", route: 0) == RouteTable.Entry(host: nil, prefix: [], route: 0))
        #expect(RouteTable.entry(host: nil, pathPrefix: "/orders", route: 1) == RouteTable.entry(host: nil, pathPrefix: "/orders/", route: 1))
    }
}
