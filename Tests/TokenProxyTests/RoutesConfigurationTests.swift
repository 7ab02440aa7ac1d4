import Foundation
import Testing

@testable import TokenProxy

/// SPEC §2.4 as the configuration file states it: `identities` and `routes`, their defaults, the
/// errors across them (each naming its key path), token exchange settings, and which identity
/// a command acts on.
@Suite("Routes and identities configuration (SPEC §2.4)")
struct RoutesConfigurationTests {
    static let folder = "/srv/app"

    /// An identity's keys: a client_credentials client of `auth.example.com`, plus `extra`
    /// (`, "store": "…"`).
    static func identity(_ extra: String = "") -> String {
        #"{"endpoint": "https://auth.example.com/token", "grant": "client_credentials", "clientId": "c", "clientSecretFile": "secret"\#(extra)}"#
    }

    /// A route to `https://api.example.com` with `extra` keys.
    static func route(_ extra: String = "") -> String {
        #"{"upstream": {"url": "https://api.example.com"}\#(extra)}"#
    }

    /// A configuration document; `nil` leaves the section out.
    static func document(token: String? = nil, identities: [(String, String)]? = nil, routes: [String]? = nil, upstream: String? = nil, topLevel: String = "") -> String {
        var sections: [String] = []
        if let token { sections.append(#""token": \#(token)"#) }
        if let identities { sections.append(#""identities": {"# + identities.map { #""\#($0)": \#($1)"# }.joined(separator: ", ") + "}") }
        if let routes { sections.append(#""routes": ["# + routes.joined(separator: ", ") + "]") }
        if let upstream { sections.append(#""upstream": \#(upstream)"#) }
        if !topLevel.isEmpty { sections.append(topLevel) }
        return "{" + sections.joined(separator: ", ") + "}"
    }

    static func parse(_ json: String) throws -> Configuration {
        try Configuration.parse(Data(json.utf8), path: folder + "/config.json")
    }

    static func problems(_ json: String) -> [ConfigurationProblem] {
        do {
            _ = try parse(json)
            return []
        } catch {
            return (error as? ConfigurationError)?.problems ?? [.init(keyPath: "?", message: "\(error)")]
        }
    }

    // MARK: (a) a v2 configuration

    @Test func aConfigurationWithTokenAndUpstreamIsTheRouteDefaultOnListenWithPrefixSlash() throws {
        let json = #"""
            {"listen": "127.0.0.1:8800", "upstream": {"url": "https://api.example.com/v1", "readTimeout": "30s"},
             "token": {"endpoint": "https://auth.example.com/token", "grant": "client_credentials", "clientId": "c", "clientSecretFile": "secret"},
             "retry": {"attempts": 5, "backoff": "50ms"}, "requireHeader": "X-TokenProxy-Request"}
            """#
        let configuration = try Self.parse(json)
        #expect(configuration.routes.count == 1)
        let route = try #require(configuration.routes.first)
        #expect(route.name == "default")
        #expect(route.listen == .tcp(host: "127.0.0.1", port: 8800))
        #expect(route.listen == configuration.listen)
        #expect(route.host == nil)
        #expect(route.pathPrefix == "/")
        #expect(route.normalizedPrefix == "")
        #expect(route.stripPrefix == false)
        #expect(route.identity == "default")
        #expect(route.upstream.url.hostHeader == "api.example.com")
        #expect(route.upstream.url.pathPrefix == "/v1")
        #expect(route.upstream.readTimeout == .seconds(30))
        #expect(route.upstream == configuration.upstream)
        #expect(route.retry == Configuration.Retry(attempts: 5, backoff: .milliseconds(50), maxBackoff: .seconds(2), replayBuffer: 1_048_576))
        #expect(route.retry == configuration.retry)
        #expect(route.requireHeader == "X-TokenProxy-Request")
        #expect(configuration.clients.requireHeader == "X-TokenProxy-Request")

        #expect(Array(configuration.identities.keys) == ["default"])
        #expect(configuration.identityNames == ["default"])
        let token = try #require(configuration.identities["default"])
        #expect(token.store == "/var/lib/tokenproxy/token.json")
        #expect(token.lockFile == "/var/lib/tokenproxy/token.lock")
        #expect(token.endpoint == "https://auth.example.com/token")
        #expect(configuration.token == token)
        #expect(configuration.tokenIdentity == "default")
    }

    @Test func aV2ConfigurationWithoutRetryOrRequireHeaderGivesTheRouteTheDefaults() throws {
        let configuration = try Self.parse(Self.document(token: Self.identity(), upstream: #"{"url": "https://api.example.com"}"#))
        let route = try #require(configuration.routes.first)
        #expect(configuration.routes.count == 1)
        #expect(route.retry == Configuration.Retry(attempts: 3, backoff: .milliseconds(100), maxBackoff: .seconds(2), replayBuffer: 1_048_576))
        #expect(route.requireHeader == nil)
        #expect(route.listen == .tcp(host: "127.0.0.1", port: 8787))
    }

    // MARK: (b) defaults

    @Test func routesAndIdentitiesTakeTheirDefaults() throws {
        let json = #"""
            {"listen": "127.0.0.1:8800", "retry": {"attempts": 5, "backoff": "200ms", "replayBuffer": 4096}, "requireHeader": "X-Top",
             "token": \#(Self.identity()),
             "identities": {"graph": \#(Self.identity()), "orders": \#(Self.identity(#", "store": "state/orders.json""#))},
             "routes": [
               {"upstream": {"url": "https://graph.example.com"}, "identity": "graph"},
               {"name": "orders", "listen": "127.0.0.1:8801", "pathPrefix": "/orders/", "stripPrefix": true,
                "upstream": {"url": "https://orders.example.com/api"}, "identity": "orders", "retry": {"attempts": 2}, "requireHeader": "X-Orders"},
               {"host": "Status.Localhost", "upstream": {"url": "https://status.example.com"}, "retry": {"maxBackoff": "5s"}}
             ]}
            """#
        let configuration = try Self.parse(json)
        let top = Configuration.Retry(attempts: 5, backoff: .milliseconds(200), maxBackoff: .seconds(2), replayBuffer: 4096)
        #expect(configuration.retry == top)
        #expect(configuration.routes.map(\.name) == ["route-1", "orders", "route-3"], "no top-level upstream: no route default")

        let graph = configuration.routes[0]
        #expect(graph.listen == .tcp(host: "127.0.0.1", port: 8800), "listen defaults to the top-level listen")
        #expect(graph.host == nil)
        #expect(graph.pathPrefix == "/")
        #expect(graph.stripPrefix == false)
        #expect(graph.identity == "graph")
        #expect(graph.upstream.url.hostHeader == "graph.example.com")
        #expect(graph.retry == top, "no retry of its own: the top-level one")
        #expect(graph.requireHeader == "X-Top", "no requireHeader of its own: the top-level one")

        let orders = configuration.routes[1]
        #expect(orders.listen == .tcp(host: "127.0.0.1", port: 8801))
        #expect(orders.pathPrefix == "/orders/")
        #expect(orders.normalizedPrefix == "/orders")
        #expect(orders.stripPrefix == true)
        #expect(orders.upstream.url.pathPrefix == "/api")
        #expect(orders.retry == Configuration.Retry(attempts: 2, backoff: .milliseconds(200), maxBackoff: .seconds(2), replayBuffer: 4096),
                "a route's retry overrides only the keys it sets")
        #expect(orders.requireHeader == "X-Orders")

        let status = configuration.routes[2]
        #expect(status.host == "status.localhost", "hosts are kept lowercased")
        #expect(status.identity == "default", "identity defaults to default")
        #expect(status.retry == Configuration.Retry(attempts: 5, backoff: .milliseconds(200), maxBackoff: .seconds(5), replayBuffer: 4096))

        #expect(configuration.identityNames == ["default", "graph", "orders"])
        #expect(configuration.identities["default"]?.store == "/var/lib/tokenproxy/token.json")
        #expect(configuration.identities["default"]?.lockFile == "/var/lib/tokenproxy/token.lock")
        #expect(configuration.identities["graph"]?.store == "/var/lib/tokenproxy/graph.json")
        #expect(configuration.identities["graph"]?.lockFile == "/var/lib/tokenproxy/graph.lock")
        #expect(configuration.identities["graph"]?.clientSecret == .file("/srv/app/secret"), "relative paths of an identity are anchored at the config folder")
        #expect(configuration.identities["orders"]?.store == "/srv/app/state/orders.json")
        #expect(configuration.identities["orders"]?.lockFile == "/srv/app/state/orders.lock")
    }

    @Test func withRoutesTheTopLevelUpstreamIsTheRouteDefaultLast() throws {
        let json = Self.document(
            token: Self.identity(), routes: [Self.route(#", "pathPrefix": "/orders""#)], upstream: #"{"url": "https://fallback.example.com"}"#)
        let configuration = try Self.parse(json)
        #expect(configuration.routes.map(\.name) == ["route-1", "default"])
        #expect(configuration.routes[1].pathPrefix == "/")
        #expect(configuration.routes[1].upstream.url.hostHeader == "fallback.example.com")
        #expect(configuration.upstream.url.hostHeader == "fallback.example.com")
    }

    @Test func withRoutesTheTopLevelTokenAndUpstreamAreOptional() throws {
        let json = Self.document(identities: [("api", Self.identity())], routes: [Self.route(#", "identity": "api""#)])
        let configuration = try Self.parse(json)
        #expect(configuration.identityNames == ["api"])
        #expect(configuration.routes.map(\.name) == ["route-1"])
        #expect(configuration.tokenIdentity == "api")
        #expect(configuration.upstream.url.hostHeader == "api.example.com")
    }

    @Test func anIdentityTakesEveryKeyOfToken() throws {
        let identity = #"""
            {"issuer": "https://login.example.com/tenant", "grant": "refresh_token", "clientId": "c", "clientAuth": "none",
             "scope": "a b", "extraParams": {"resource": "https://api.example.com"}, "refreshBefore": "2m", "minValidity": "5s",
             "defaultLifetime": "10m", "lockTimeout": "3s", "minRefreshInterval": "2s", "refreshTokenLifetime": "30d",
             "requestTimeout": "4s", "proxy": "http://127.0.0.1:3128"}
            """#
        let configuration = try Self.parse(Self.document(identities: [("graph", identity)], routes: [Self.route(#", "identity": "graph""#)]))
        let token = try #require(configuration.identities["graph"])
        #expect(token.issuer == "https://login.example.com/tenant")
        #expect(token.endpoint == "")
        #expect(token.scope == "a b")
        #expect(token.extraParams == ["resource": "https://api.example.com"])
        #expect(token.refreshBefore == .seconds(120))
        #expect(token.minValidity == .seconds(5))
        #expect(token.refreshTokenLifetime == .seconds(30 * 86_400))
        #expect(token.requestTimeout == .seconds(4))
        #expect(token.proxy == "http://127.0.0.1:3128")
    }

    // MARK: (c) errors

    struct ErrorRow: Sendable, CustomStringConvertible {
        var description: String
        var json: String
        /// The key path that must be among the problems.
        var keyPath: String
        /// A word of the message that says which check found it.
        var mentions: String
    }

    static let a = ("a", identity())
    static let b = ("b", identity())
    /// A route to the identity `a`.
    static let routeA = route(#", "identity": "a""#)

    static func exchange(_ subject: String) -> String {
        #"{"endpoint": "https://auth.example.com/token", "grant": "token_exchange", \#(subject)}"#
    }

    static let errorRows: [ErrorRow] = [
        // A route naming an unknown identity.
        ErrorRow(description: "a route naming an unknown identity",
                 json: document(identities: [a], routes: [routeA, route(#", "pathPrefix": "/x", "identity": "nope""#)]),
                 keyPath: "routes[1].identity", mentions: "nope"),
        ErrorRow(description: "a route naming default without a top-level token",
                 json: document(identities: [a], routes: [routeA, route(#", "pathPrefix": "/x""#)]),
                 keyPath: "routes[1].identity", mentions: "default"),
        ErrorRow(description: "the top-level upstream without any identity default",
                 json: document(identities: [a], routes: [route(#", "pathPrefix": "/x", "identity": "a""#)], upstream: #"{"url": "https://api.example.com"}"#),
                 keyPath: "token", mentions: "default"),

        // Two routes with the same listener, host and prefix.
        ErrorRow(description: "two routes on the same listener and prefix",
                 json: document(identities: [a], routes: [route(#", "pathPrefix": "/orders", "identity": "a""#), route(#", "pathPrefix": "/orders", "identity": "a""#)]),
                 keyPath: "routes[1]", mentions: "same"),
        ErrorRow(description: "/orders and /orders/ are the same prefix",
                 json: document(identities: [a], routes: [route(#", "pathPrefix": "/orders", "identity": "a""#), route(#", "pathPrefix": "/orders/", "identity": "a""#)]),
                 keyPath: "routes[1]", mentions: "same"),
        ErrorRow(description: "two routes on /, one naming the default listen explicitly",
                 json: document(identities: [a], routes: [routeA, route(#", "listen": "127.0.0.1:8787", "identity": "a""#)]),
                 keyPath: "routes[1]", mentions: "same"),
        ErrorRow(description: "two routes for one host spelled in different cases",
                 json: document(identities: [a], routes: [route(#", "host": "API.example", "identity": "a""#), route(#", "host": "api.example.", "identity": "a""#)]),
                 keyPath: "routes[1]", mentions: "same"),
        ErrorRow(description: "a route on / and the top-level upstream",
                 json: document(token: identity(), routes: [route()], upstream: #"{"url": "https://api.example.com"}"#),
                 keyPath: "upstream", mentions: "same"),

        // Two identities sharing a store or a lock file.
        ErrorRow(description: "two identities sharing a store",
                 json: document(identities: [("a", identity(#", "store": "/var/lib/shared/t.json""#)), ("b", identity(#", "store": "/var/lib/shared/t.json""#))], routes: [routeA]),
                 keyPath: "identities.b.store", mentions: "/var/lib/shared/t.json"),
        ErrorRow(description: "two identities sharing a store through relative paths",
                 json: document(identities: [("a", identity(#", "store": "state/t.json""#)), ("b", identity(#", "store": "/srv/app/state/t.json""#))], routes: [routeA]),
                 keyPath: "identities.b.store", mentions: "/srv/app/state/t.json"),
        ErrorRow(description: "two identities sharing a lock file",
                 json: document(identities: [("a", identity(#", "lockFile": "/var/lib/shared/t.lock""#)), ("b", identity(#", "lockFile": "/var/lib/shared/t.lock""#))], routes: [routeA]),
                 keyPath: "identities.b.lockFile", mentions: "/var/lib/shared/t.lock"),
        ErrorRow(description: "one identity's lock file is another's store",
                 json: document(identities: [("a", identity(#", "store": "/var/lib/shared/t.json""#)), ("b", identity(#", "lockFile": "/var/lib/shared/t.json""#))], routes: [routeA]),
                 keyPath: "identities.b.lockFile", mentions: "/var/lib/shared/t.json"),
        ErrorRow(description: "an identity named token shares the store of default (token.json)",
                 json: document(token: identity(), identities: [("token", identity())], routes: [route()]),
                 keyPath: "identities.token.store", mentions: "/var/lib/tokenproxy/token.json"),

        // subjectIdentity loops and unknown subjects.
        ErrorRow(description: "an identity exchanging its own token",
                 json: document(identities: [a, ("x", exchange(#""subjectIdentity": "x""#))], routes: [routeA]),
                 keyPath: "identities.x.subjectIdentity", mentions: "loop"),
        ErrorRow(description: "a loop of two identities, the first",
                 json: document(identities: [("a", exchange(#""subjectIdentity": "b""#)), ("b", exchange(#""subjectIdentity": "a""#))], routes: [routeA]),
                 keyPath: "identities.a.subjectIdentity", mentions: "loop"),
        ErrorRow(description: "a loop of two identities, the second",
                 json: document(identities: [("a", exchange(#""subjectIdentity": "b""#)), ("b", exchange(#""subjectIdentity": "a""#))], routes: [routeA]),
                 keyPath: "identities.b.subjectIdentity", mentions: "loop"),
        ErrorRow(description: "a loop of three identities",
                 json: document(identities: [("a", exchange(#""subjectIdentity": "b""#)), ("b", exchange(#""subjectIdentity": "c""#)), ("c", exchange(#""subjectIdentity": "a""#))], routes: [routeA]),
                 keyPath: "identities.a.subjectIdentity", mentions: "loop"),
        ErrorRow(description: "the default identity in a loop is named token",
                 json: document(token: exchange(#""subjectIdentity": "b""#), identities: [("b", exchange(#""subjectIdentity": "default""#))], routes: [route()]),
                 keyPath: "token.subjectIdentity", mentions: "loop"),
        ErrorRow(description: "a subjectIdentity naming an unknown identity",
                 json: document(identities: [a, ("x", exchange(#""subjectIdentity": "nope""#))], routes: [routeA]),
                 keyPath: "identities.x.subjectIdentity", mentions: "nope"),

        // A route listen equal to admin.listen.
        ErrorRow(description: "a route on the default admin listener",
                 json: document(identities: [a], routes: [route(#", "listen": "127.0.0.1:8788", "identity": "a""#)]),
                 keyPath: "routes[0].listen", mentions: "admin.listen"),
        ErrorRow(description: "a route on a configured admin listener",
                 json: document(identities: [a], routes: [routeA, route(#", "listen": "127.0.0.1:9900", "identity": "a""#)], topLevel: #""admin": {"listen": "127.0.0.1:9900"}"#),
                 keyPath: "routes[1].listen", mentions: "admin.listen"),
        ErrorRow(description: "a route on the admin unix socket",
                 json: document(identities: [a], routes: [route(#", "listen": "unix:run/t.sock", "identity": "a""#)], topLevel: #""admin": {"listen": "unix:/srv/app/run/t.sock"}"#),
                 keyPath: "routes[0].listen", mentions: "admin.listen"),
        ErrorRow(description: "the top-level listen of a v2 configuration equal to admin.listen",
                 json: document(token: identity(), upstream: #"{"url": "https://api.example.com"}"#, topLevel: #""listen": "127.0.0.1:8788""#),
                 keyPath: "listen", mentions: "admin.listen"),
        // The routes that name no listen inherit the top-level one: the key at fault, the one
        // to change, is the top-level `listen` (the routes have no `listen` key to name).
        ErrorRow(description: "the top-level listen, inherited by a route, equal to admin.listen",
                 json: document(identities: [a], routes: [routeA], topLevel: #""listen": "127.0.0.1:8788""#),
                 keyPath: "listen", mentions: "admin.listen"),

        // Token exchange keys.
        ErrorRow(description: "audience under client_credentials",
                 json: document(identities: [("a", identity(#", "audience": "orders-api""#))], routes: [routeA]),
                 keyPath: "identities.a.audience", mentions: "token_exchange"),
        ErrorRow(description: "subjectTokenFile under client_credentials",
                 json: document(identities: [("a", identity(#", "subjectTokenFile": "sa.jwt""#))], routes: [routeA]),
                 keyPath: "identities.a.subjectTokenFile", mentions: "token_exchange"),
        ErrorRow(description: "subjectIdentity under the top-level refresh_token grant",
                 json: document(token: #"{"endpoint": "https://auth.example.com/token", "subjectIdentity": "a"}"#, identities: [a], routes: [route()]),
                 keyPath: "token.subjectIdentity", mentions: "token_exchange"),
        ErrorRow(description: "resource, requestedTokenType and subjectTokenType under client_credentials",
                 json: document(identities: [("a", identity(#", "requestedTokenType": "urn:x", "subjectTokenType": "urn:y", "resource": "https://r""#))], routes: [routeA]),
                 keyPath: "identities.a.requestedTokenType", mentions: "token_exchange"),
        ErrorRow(description: "token_exchange without a subject",
                 json: document(identities: [a, ("x", #"{"endpoint": "https://auth.example.com/token", "grant": "token_exchange", "audience": "orders-api"}"#)], routes: [routeA]),
                 keyPath: "identities.x.subjectTokenFile", mentions: "subject"),
        ErrorRow(description: "token_exchange with both subjects",
                 json: document(identities: [a, ("x", exchange(#""subjectIdentity": "a", "subjectTokenFile": "sa.jwt""#))], routes: [routeA]),
                 keyPath: "identities.x.subjectIdentity", mentions: "subjectTokenFile"),
        ErrorRow(description: "extraParams setting what a token exchange sets",
                 json: document(identities: [a, ("x", exchange(#""subjectIdentity": "a", "extraParams": {"audience": "x"}"#))], routes: [routeA]),
                 keyPath: "identities.x.extraParams.audience", mentions: "tokenproxy itself"),

        // Identity names.
        ErrorRow(description: "an identity name with a slash",
                 json: document(identities: [a, ("../etc", identity())], routes: [routeA]),
                 keyPath: "identities.../etc", mentions: "../etc"),
        ErrorRow(description: "an identity name with a space",
                 json: document(identities: [a, ("my api", identity())], routes: [routeA]),
                 keyPath: "identities.my api", mentions: "my api"),
        ErrorRow(description: "an identity name starting with a dot",
                 json: document(identities: [a, (".hidden", identity())], routes: [routeA]),
                 keyPath: "identities..hidden", mentions: ".hidden"),
        ErrorRow(description: "an empty identity name",
                 json: document(identities: [a, ("", identity())], routes: [routeA]),
                 keyPath: "identities", mentions: "identity name"),
        ErrorRow(description: "an identity default beside the top-level token",
                 json: document(token: identity(), identities: [("default", identity(#", "store": "/var/lib/tokenproxy/other.json""#))], routes: [route()]),
                 keyPath: "identities.default", mentions: "default"),

        // Routes themselves.
        ErrorRow(description: "two routes with one name",
                 json: document(identities: [a], routes: [route(#", "name": "api", "identity": "a""#), route(#", "name": "api", "pathPrefix": "/x", "identity": "a""#)]),
                 keyPath: "routes[1].name", mentions: "api"),
        ErrorRow(description: "a route name that cannot label metrics",
                 json: document(identities: [a], routes: [route(#", "name": "my \"api\"", "identity": "a""#)]),
                 keyPath: "routes[0].name", mentions: "api"),
        ErrorRow(description: "a route without upstream",
                 json: document(identities: [a], routes: [routeA, #"{"pathPrefix": "/x", "identity": "a"}"#]),
                 keyPath: "routes[1].upstream", mentions: "required"),
        ErrorRow(description: "a route key misspelled",
                 json: document(identities: [a], routes: [route(#", "identity": "a", "pathPrefx": "/x""#)]),
                 keyPath: "routes[0].pathPrefx", mentions: "unknown key"),
        ErrorRow(description: "a pathPrefix without a leading slash",
                 json: document(identities: [a], routes: [route(#", "identity": "a", "pathPrefix": "orders""#)]),
                 keyPath: "routes[0].pathPrefix", mentions: "orders"),
        ErrorRow(description: "a pathPrefix with a dot-segment",
                 json: document(identities: [a], routes: [route(#", "identity": "a", "pathPrefix": "/orders/../admin""#)]),
                 keyPath: "routes[0].pathPrefix", mentions: "dot-segment"),
        ErrorRow(description: "a host with a port",
                 json: document(identities: [a], routes: [route(#", "identity": "a", "host": "api.example:8787""#)]),
                 keyPath: "routes[0].host", mentions: "port"),
        ErrorRow(description: "a route listen not on loopback",
                 json: document(identities: [a], routes: [route(#", "identity": "a", "listen": "0.0.0.0:8787""#)]),
                 keyPath: "routes[0].listen", mentions: "loopback"),
        ErrorRow(description: "a route's retry out of range",
                 json: document(identities: [a], routes: [route(#", "identity": "a", "retry": {"attempts": 0}"#)]),
                 keyPath: "routes[0].retry.attempts", mentions: "1 to 10"),
        ErrorRow(description: "a route upstream key misspelled",
                 json: document(identities: [a], routes: [#"{"identity": "a", "upstream": {"url": "https://api.example.com", "readTimout": "1s"}}"#]),
                 keyPath: "routes[0].upstream.readTimout", mentions: "unknown key"),
        ErrorRow(description: "an empty list of routes",
                 json: document(token: identity(), routes: [], upstream: #"{"url": "https://api.example.com"}"#),
                 keyPath: "routes", mentions: "empty"),
        ErrorRow(description: "neither token nor identities",
                 json: document(routes: [route()]),
                 keyPath: "token", mentions: "identities"),
        ErrorRow(description: "neither upstream nor routes",
                 json: document(token: identity()),
                 keyPath: "upstream", mentions: "routes"),
        ErrorRow(description: "an identity key misspelled",
                 json: document(identities: [("a", identity(#", "scopes": "x""#))], routes: [routeA]),
                 keyPath: "identities.a.scopes", mentions: "unknown key"),
    ]

    @Test("each configuration error names its key path", arguments: errorRows)
    func configurationError(row: ErrorRow) {
        let found = Self.problems(row.json)
        let matching = found.filter { $0.keyPath == row.keyPath }
        #expect(!matching.isEmpty, "no problem at \(row.keyPath); found: \(found)")
        #expect(matching.contains { $0.message.contains(row.mentions) }, "\(row.keyPath) does not mention \(row.mentions): \(matching)")
        #expect(found.allSatisfy { !$0.message.isEmpty })
    }

    /// What the rows above differ from: each of these is valid, so the problem of a row is the
    /// change it makes.
    static let validRows: [(String, String)] = [
        ("one identity and one route", document(identities: [a], routes: [routeA])),
        ("two identities with their default stores", document(identities: [a, b], routes: [routeA, route(#", "pathPrefix": "/b", "identity": "b""#)])),
        ("token and identities", document(token: identity(), identities: [a], routes: [routeA, route(#", "pathPrefix": "/d""#)])),
        ("one prefix on two hosts", document(identities: [a], routes: [route(#", "host": "a.localhost", "identity": "a""#), route(#", "host": "b.localhost", "identity": "a""#)])),
        ("one prefix for a host and without host", document(identities: [a], routes: [route(#", "host": "a.localhost", "identity": "a""#), routeA])),
        ("one prefix on two listeners", document(identities: [a], routes: [routeA, route(#", "listen": "127.0.0.1:8790", "identity": "a""#)])),
        ("/orders and /orders2", document(identities: [a], routes: [route(#", "pathPrefix": "/orders", "identity": "a""#), route(#", "pathPrefix": "/orders2", "identity": "a""#)])),
        ("a route beside the top-level upstream", document(token: identity(), routes: [route(#", "pathPrefix": "/x""#)], upstream: #"{"url": "https://api.example.com"}"#)),
        ("a chain of exchanges", document(identities: [a, ("x", exchange(#""subjectIdentity": "a""#)), ("y", exchange(#""subjectIdentity": "x""#))], routes: [routeA])),
        ("an exchange from default", document(token: identity(), identities: [("x", exchange(#""subjectIdentity": "default""#))], routes: [route()])),
        ("an exchange of a file", document(identities: [a, ("x", exchange(#""subjectTokenFile": "sa.jwt", "audience": "orders-api", "resource": "https://r""#))], routes: [routeA])),
        ("names with dots, dashes and underscores", document(identities: [("a.b-c_d", identity())], routes: [route(#", "name": "x.y-z_1", "identity": "a.b-c_d""#)])),
        ("admin disabled and a route on 8788", document(identities: [a], routes: [route(#", "listen": "127.0.0.1:8788", "identity": "a""#)], topLevel: #""admin": null"#)),
    ]

    @Test("configurations without those errors are valid", arguments: validRows)
    func valid(name: String, json: String) {
        #expect(Self.problems(json).isEmpty, "\(Self.problems(json))")
    }

    // MARK: (d) token exchange

    @Test func aSubjectTokenFileIsAJWTByDefaultAndResolvedAgainstTheConfigFolder() throws {
        let configuration = try Self.parse(Self.document(
            identities: [("x", Self.exchange(#""subjectTokenFile": "tokens/sa.jwt", "audience": "orders-api""#))],
            routes: [Self.route(#", "identity": "x""#)]))
        let token = try #require(configuration.identities["x"])
        #expect(token.grant == .tokenExchange)
        #expect(token.grant.grantType == "urn:ietf:params:oauth:grant-type:token-exchange")
        let exchange = try #require(token.exchange)
        #expect(exchange.subject == .file("/srv/app/tokens/sa.jwt"))
        #expect(exchange.subjectTokenType == "urn:ietf:params:oauth:token-type:jwt")
        #expect(exchange.audience == "orders-api")
        #expect(exchange.requestedTokenType == nil)
        #expect(exchange.resource == nil)
    }

    @Test func anAbsoluteSubjectTokenFileIsKept() throws {
        let configuration = try Self.parse(Self.document(
            identities: [("x", Self.exchange(#""subjectTokenFile": "/var/run/secrets/tokens/sa""#))], routes: [Self.route(#", "identity": "x""#)]))
        #expect(configuration.identities["x"]?.exchange?.subject == .file("/var/run/secrets/tokens/sa"))
    }

    @Test func aSubjectIdentityIsAnAccessTokenByDefault() throws {
        let configuration = try Self.parse(Self.document(
            identities: [Self.a, ("x", Self.exchange(#""subjectIdentity": "a", "resource": "https://orders.example.com", "requestedTokenType": "urn:ietf:params:oauth:token-type:access_token""#))],
            routes: [Self.route(#", "identity": "x""#)]))
        let exchange = try #require(configuration.identities["x"]?.exchange)
        #expect(exchange.subject == .identity("a"))
        #expect(exchange.subjectTokenType == "urn:ietf:params:oauth:token-type:access_token")
        #expect(exchange.resource == "https://orders.example.com")
        #expect(exchange.requestedTokenType == "urn:ietf:params:oauth:token-type:access_token")
        #expect(exchange.audience == nil)
        #expect(configuration.identities["a"]?.exchange == nil, "other grants have no exchange")
    }

    @Test func anExplicitSubjectTokenTypeIsKept() throws {
        let configuration = try Self.parse(Self.document(
            identities: [Self.a, ("x", Self.exchange(#""subjectIdentity": "a", "subjectTokenType": "urn:ietf:params:oauth:token-type:id_token""#)),
                         ("y", Self.exchange(#""subjectTokenFile": "sa", "subjectTokenType": "urn:ietf:params:oauth:token-type:access_token""#))],
            routes: [Self.route(#", "identity": "x""#)]))
        #expect(configuration.identities["x"]?.exchange?.subjectTokenType == "urn:ietf:params:oauth:token-type:id_token")
        #expect(configuration.identities["y"]?.exchange?.subjectTokenType == "urn:ietf:params:oauth:token-type:access_token")
    }

    @Test func theSpecExampleIsValid() throws {
        // SPEC §2.4's example, with its placeholders filled in.
        let json = #"""
            {"identities": {
               "graph":  {"issuer": "https://login.microsoftonline.com/TENANT/v2.0", "grant": "client_credentials",
                          "clientId": "app", "clientSecretFile": "graph-secret", "scope": "https://graph.microsoft.com/.default"},
               "orders": {"endpoint": "https://auth.internal/token", "grant": "token_exchange",
                          "subjectIdentity": "graph", "audience": "orders-api"}},
             "routes": [
               {"name": "graph",  "listen": "127.0.0.1:8790", "upstream": {"url": "https://graph.microsoft.com"}, "identity": "graph"},
               {"name": "orders", "pathPrefix": "/orders/", "stripPrefix": true,
                "upstream": {"url": "https://orders.internal/api"}, "identity": "orders"},
               {"name": "status", "host": "status.localhost", "upstream": {"url": "https://status.internal"}, "identity": "orders"}]}
            """#
        let configuration = try Self.parse(json)
        #expect(configuration.identityNames == ["graph", "orders"])
        #expect(configuration.routes.map(\.name) == ["graph", "orders", "status"])
        #expect(configuration.routes.map(\.listen) == [.tcp(host: "127.0.0.1", port: 8790), .tcp(host: "127.0.0.1", port: 8787), .tcp(host: "127.0.0.1", port: 8787)])
        #expect(configuration.identities["orders"]?.exchange?.subject == .identity("graph"))
        #expect(configuration.identities["graph"]?.clientSecret == .file("/srv/app/graph-secret"))
    }

    // MARK: (e) which identity a command acts on

    struct LookupRow: Sendable, CustomStringConvertible {
        var description: String
        var json: String
        /// `--identity`, or nil.
        var name: String?
        /// The identity chosen; `nil`: refused.
        var expected: String?
        /// For a refusal: whether it says the name is unknown (else: ambiguous).
        var unknown = false
    }

    static let withDefault = document(token: identity(), identities: [a, b], routes: [route()])
    static let onlyX = document(identities: [("x", identity())], routes: [route(#", "identity": "x""#)])
    static let twoWithoutDefault = document(identities: [a, b], routes: [routeA])

    static let lookupRows: [LookupRow] = [
        LookupRow(description: "no name: default", json: withDefault, name: nil, expected: "default"),
        LookupRow(description: "default by name", json: withDefault, name: "default", expected: "default"),
        LookupRow(description: "another by name beside default", json: withDefault, name: "b", expected: "b"),
        LookupRow(description: "no name: the only identity", json: onlyX, name: nil, expected: "x"),
        LookupRow(description: "the only identity by name", json: onlyX, name: "x", expected: "x"),
        LookupRow(description: "default by name when there is none", json: onlyX, name: "default", expected: nil, unknown: true),
        LookupRow(description: "no name, two identities, no default: ambiguous", json: twoWithoutDefault, name: nil, expected: nil),
        LookupRow(description: "a name among two identities", json: twoWithoutDefault, name: "a", expected: "a"),
        LookupRow(description: "an unknown name", json: twoWithoutDefault, name: "nope", expected: nil, unknown: true),
        LookupRow(description: "an unknown name beside default", json: withDefault, name: "nope", expected: nil, unknown: true),
        LookupRow(description: "names are compared with case", json: twoWithoutDefault, name: "A", expected: nil, unknown: true),
    ]

    @Test("the identity a command acts on", arguments: lookupRows)
    func lookup(row: LookupRow) throws {
        let configuration = try Self.parse(row.json)
        switch configuration.identity(named: row.name) {
        case .success(let found):
            #expect(found.name == row.expected)
            #expect(found.token == configuration.identities[found.name])
        case .failure(let error):
            #expect(row.expected == nil, "refused: \(error)")
            switch error {
            case .unknown(let name, let known):
                #expect(row.unknown, "\(error)")
                #expect(name == row.name)
                #expect(known == configuration.identityNames)
                #expect(error.description.contains("\"\(row.name ?? "")\""))
            case .ambiguous(let known):
                #expect(!row.unknown, "\(error)")
                #expect(known == configuration.identityNames)
                #expect(error.description.contains("--identity"))
            }
        }
        switch configuration.selecting(row.name) {
        case .success(let selected):
            #expect(selected.selectedIdentity == row.expected)
            #expect(selected.tokenIdentity == row.expected)
            #expect(selected.token == configuration.identities[row.expected ?? ""])
        case .failure:
            #expect(row.expected == nil)
        }
    }

    @Test func selectingAnIdentityMakesTokenStandForIt() throws {
        let configuration = try Self.parse(Self.withDefault)
        #expect(configuration.tokenIdentity == "default")
        let selected = try configuration.selecting("b").get()
        #expect(selected.token.store == "/var/lib/tokenproxy/b.json")
        #expect(selected.token.lockFile == "/var/lib/tokenproxy/b.lock")
        #expect(selected.identities == configuration.identities)
        #expect(selected.routes == configuration.routes)
        // Changing `token` of the selection changes that identity only.
        var changed = selected
        changed.token.scope = "changed"
        #expect(changed.identities["b"]?.scope == "changed")
        #expect(changed.identities["default"]?.scope == nil)
        #expect(changed.identities["a"]?.scope == nil)
    }
}
