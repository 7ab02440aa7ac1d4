import FoundationEssentials
import NIOHTTP1

/// What the admin API answers (SPEC §7), decided without sockets: health, readiness, status
/// and metrics, forced refresh and expiry, and fault settings.
public struct AdminRoutes: Sendable {
    /// Every identity's broker (SPEC §2.4); `default` is the one the top-level fields show.
    let identities: IdentityBrokers
    let faults: FaultSettings
    let statistics: ProxyStatistics
    /// The upstream the data path forwards to now: read from the proxy's reloadable context
    /// at each answer, so that a reload shows at once.
    let upstream: @Sendable () -> UpstreamURL
    /// The routes in force, read at each answer (a reload shows at once).
    let routes: @Sendable () -> [Configuration.Route]
    /// The token sinks and how their writes went (SPEC §2.5).
    let sinks: @Sendable () async -> [TokenSinks.Status]
    /// `admin.tokenFile`: when set, `POST` and `PUT` need its content as a bearer token.
    let tokenFile: String?

    /// The admin API of a proxy with one identity, `default`.
    public init(broker: TokenBroker, faults: FaultSettings, statistics: ProxyStatistics, upstream: @escaping @Sendable () -> UpstreamURL, tokenFile: String? = nil) {
        self.init(identities: IdentityBrokers(single: broker), faults: faults, statistics: statistics, upstream: upstream, routes: { [] }, tokenFile: tokenFile)
    }

    init(
        identities: IdentityBrokers, faults: FaultSettings, statistics: ProxyStatistics, upstream: @escaping @Sendable () -> UpstreamURL,
        routes: @escaping @Sendable () -> [Configuration.Route], sinks: @escaping @Sendable () async -> [TokenSinks.Status] = { [] }, tokenFile: String?
    ) {
        self.sinks = sinks
        self.identities = identities
        self.faults = faults
        self.statistics = statistics
        self.upstream = upstream
        self.routes = routes
        self.tokenFile = tokenFile
    }

    /// The identity the top-level fields describe: `default`, or the first.
    private var primary: (name: String, broker: TokenBroker)? { identities.all.first }

    public struct Request: Sendable {
        public var method: HTTPMethod
        public var path: String
        /// The query's fields (`identity=NAME`).
        public var query: [String: String]
        public var body: String
        public var headers: HTTPHeaders

        public init(method: HTTPMethod, path: String, query: [String: String] = [:], body: String = "", headers: HTTPHeaders = ["Host": "127.0.0.1"]) {
            self.method = method
            self.path = path
            self.query = query
            self.body = body
            self.headers = headers
        }

        /// The fields of `uri`'s query, percent-decoded; the first of a repeated name wins.
        public static func query(of uri: String) -> [String: String] {
            guard let start = uri.firstIndex(of: "?") else { return [:] }
            var fields: [String: String] = [:]
            for pair in uri[uri.index(after: start)...].split(separator: "&") {
                let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let name = String(parts[0]).removingPercentEncoding ?? String(parts[0])
                let value = parts.count > 1 ? (String(parts[1]).removingPercentEncoding ?? String(parts[1])) : ""
                if fields[name] == nil { fields[name] = value }
            }
            return fields
        }
    }

    public struct Response: Sendable {
        public var status: HTTPResponseStatus
        public var body: String
        public var contentType = "application/json"
        public var headers: [(String, String)] = []

        static func json(_ status: HTTPResponseStatus, _ fields: [String: JSONValue]) -> Response {
            Response(status: status, body: JSONValue.object(fields).serialized + "\n")
        }

        /// The admin's errors carry their code twice, as the proxy's do (SPEC §5, §7): in the
        /// JSON body and in `X-TokenProxy-Error`, so that scripts can branch on the header alone.
        static func error(_ status: HTTPResponseStatus, _ code: String, _ message: String) -> Response {
            var response = json(status, ["error": .string(code), "message": .string(message)])
            response.headers.append(("X-TokenProxy-Error", code))
            return response
        }
    }

    public func answer(_ request: Request) async -> Response {
        if let refusal = await refusal(of: request) { return refusal }
        switch (request.method, request.path) {
        case (.GET, "/healthz"), (.HEAD, "/healthz"):
            return .json(.ok, ["status": .string("ok")])
        case (.GET, "/readyz"):
            return await readiness()
        case (.GET, "/status"):
            return await status()
        case (.GET, "/metrics"):
            for (name, broker) in identities.all {
                let status = await broker.status()
                // No token is no time left (a gauge left at its last value would look alive).
                let seconds = status.expiresAt == nil ? 0 : broker.publisher.latest().map { Double($0.expiresAtNanoseconds) / 1e9 - Date().timeIntervalSince1970 } ?? 0
                let refreshSeconds = status.refreshTokenExpiresAt.map { $0.timeIntervalSinceNow.rounded(.down) }
                statistics.recordTokenExpiry(
                    secondsLeft: seconds, refreshTokenSecondsLeft: refreshSeconds, reauthenticationRequired: status.reauthenticationRequired, identity: name)
            }
            return Response(status: .ok, body: statistics.render(), contentType: "text/plain; version=0.0.4; charset=utf-8")
        case (.POST, "/token/refresh"):
            guard let broker = identity(request) else { return unknownIdentity(request) }
            do {
                let tokens = try await broker.token(for: .forced)
                return .json(.ok, ["refreshed": .bool(true), "expiresAt": tokens.expiresAt.map { .string(RFC3339.format($0)) } ?? .null])
            } catch {
                return Self.failure(error)
            }
        case (.POST, "/token/expire"):
            guard let broker = identity(request) else { return unknownIdentity(request) }
            do {
                try await broker.expireCurrentToken()
                return .json(.ok, ["expired": .bool(true)])
            } catch {
                return Self.failure(error)
            }
        case (.PUT, "/faults"):
            return updateFaults(request.body)
        case (.GET, "/"), (.HEAD, "/"):
            // The page for a person; a script asking for `/` is told where the API is.
            guard request.headers[canonicalForm: "Accept"].contains(where: { $0.lowercased().hasPrefix("text/html") }) else {
                return .json(.ok, ["statusPage": .string("send Accept: text/html"), "api": .array(Self.apiPaths.map(JSONValue.string))])
            }
            return Self.page(StatusPage.html, type: "text/html; charset=utf-8")
        case (.GET, "/ui/app.js"):
            return Self.page(StatusPage.script, type: "text/javascript; charset=utf-8")
        case (.GET, "/ui/app.css"):
            return Self.page(StatusPage.style, type: "text/css; charset=utf-8")
        case (_, "/healthz"), (_, "/readyz"), (_, "/status"), (_, "/metrics"), (_, "/token/refresh"), (_, "/token/expire"), (_, "/faults"), (_, "/"),
            (_, "/events"), (_, "/ui/app.js"), (_, "/ui/app.css"):
            return .error(.methodNotAllowed, "method_not_allowed", "\(request.method.rawValue) is not allowed on \(request.path)")
        default:
            return .error(.notFound, "not_found", "no admin route \(request.path); see \(Self.apiPaths.joined(separator: ", "))")
        }
    }

    /// The request's `Origin`, unless it is the admin's own (`http://` + the request's `Host`,
    /// which the guard requires to be a loopback name): the status page's buttons send their
    /// own origin (SPEC §7), every other page's is refused.
    static func foreignOrigin(of headers: HTTPHeaders) -> String? {
        guard let origin = headers.first(name: "Origin") else { return nil }
        guard let host = headers.first(name: "Host"), origin.lowercased() == "http://" + host.lowercased() else { return origin }
        return nil
    }

    static let apiPaths = ["/", "/healthz", "/readyz", "/status", "/metrics", "/events", "/token/refresh", "/token/expire", "/faults"]

    /// Whether `GET /events` may stream to this request (the same rules as every admin request,
    /// SPEC §7); the refusal to send otherwise.
    public func eventsRefusal(_ request: Request) async -> Response? {
        if let refusal = await refusal(of: request) { return refusal }
        guard request.method == .GET else { return .error(.methodNotAllowed, "method_not_allowed", "\(request.method.rawValue) is not allowed on /events") }
        return nil
    }

    /// A file of the status page: only from this origin, never framed, never sniffed.
    private static func page(_ body: String, type: String) -> Response {
        Response(
            status: .ok, body: body, contentType: type,
            headers: [("Content-Security-Policy", "default-src 'self'"), ("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"), ("Referrer-Policy", "no-referrer")])
    }

    /// SPEC §7: no web page can drive the admin API (loopback `Host` only, no `Origin`, no
    /// cross-site `Sec-Fetch-Site`, JSON bodies only), and with `admin.tokenFile` a change needs
    /// the bearer token.
    private func refusal(of request: Request) async -> Response? {
        let headers = request.headers
        if let refusal = ClientGuard.admin.refusal(
            host: headers.first(name: "Host"), origin: Self.foreignOrigin(of: headers), fetchSite: headers.first(name: "Sec-Fetch-Site"), carries: { headers.contains(name: $0) }
        ) {
            return .error(.forbidden, refusal.code.rawValue, refusal.message)
        }
        if headers.first(name: "Host") == nil {
            return .error(.forbidden, ProxyError.Code.forbiddenRequest.rawValue, "a request without Host is refused")
        }
        guard request.method == .POST || request.method == .PUT else { return nil }
        if !request.body.isEmpty {
            let type = headers.first(name: "Content-Type")?.split(separator: ";").first?.trimmingWhitespace().lowercased()
            guard type == "application/json" else {
                return .error(.unsupportedMediaType, "unsupported_media_type", "admin requests with a body must send it as Content-Type: application/json")
            }
        }
        if let tokenFile {
            let expected = await BlockingIO.run { try? String(contentsOfFile: tokenFile, encoding: .utf8) }
            let token = expected.map { $0.hasSuffix("\n") ? String($0.dropLast()) : $0 }
            guard let token, !token.isEmpty else {
                return .error(.serviceUnavailable, "admin_token_unavailable", "admin.tokenFile \(tokenFile) cannot be read or is empty; changes are refused until it can")
            }
            guard let presented = headers.first(name: "Authorization"), presented == "Bearer \(token)" else {
                var response = Response.error(.unauthorized, "unauthorized", "this admin request needs Authorization: Bearer <the content of admin.tokenFile>")
                response.headers.append(("WWW-Authenticate", #"Bearer realm="tokenproxy-admin""#))
                return response
            }
        }
        return nil
    }

    /// The broker `?identity=` names (default `default`); `nil` when there is no such identity.
    private func identity(_ request: Request) -> TokenBroker? {
        if let name = request.query["identity"] { return identities[name] }
        return identities[Configuration.defaultIdentity] ?? primary?.broker
    }

    private func unknownIdentity(_ request: Request) -> Response {
        .error(.notFound, "unknown_identity", "no identity \"\(request.query["identity"] ?? "")\"; the configuration has \(identities.names.joined(separator: ", "))")
    }

    /// Ready when every identity a route uses has a token or can get one (SPEC §7), asked of all
    /// of them at once, so that one slow issuer does not add to the others' time.
    private func readiness() async -> Response {
        let used = Set(routes().map(\.identity))
        let checked = identities.all.filter { used.isEmpty || used.contains($0.name) }
        let failures = await withTaskGroup(of: (String, String?).self) { group in
            for (name, broker) in checked {
                group.addTask {
                    do throws(TokenBrokerError) {
                        _ = try await broker.tokenForRequest()
                        return (name, nil)
                    } catch {
                        return (name, error.description)
                    }
                }
            }
            var failures: [(String, String)] = []
            for await (name, failure) in group { if let failure { failures.append((name, failure)) } }
            return failures.sorted { $0.0 < $1.0 }
        }
        if let (name, reason) = failures.first {
            // One identity's reason as before (a single identity reads as it always did), and each named.
            let named = checked.count > 1 ? "identity \(name): \(reason)" : reason
            return .json(.serviceUnavailable, [
                "ready": .bool(false), "reason": .string(named), "identity": .string(name),
                "identities": .object(Dictionary(uniqueKeysWithValues: failures.map { ($0.0, JSONValue.string($0.1)) })),
            ])
        }
        // Ready while a valid token is held; a fleet database that cannot be reached is said, not fatal.
        var problems: [String] = []
        for (_, broker) in checked { if let problem = await broker.status().storeProblem { problems.append(problem) } }
        guard let problem = problems.first else { return .json(.ok, ["ready": .bool(true)]) }
        return .json(.ok, ["ready": .bool(true), "storeProblem": .string(problem)])
    }

    private func status() async -> Response {
        guard let (_, broker) = primary else { return .error(.internalServerError, "no_identity", "no identity is configured") }
        var fields = await Self.tokenFields(broker.status())
        let sinks = await self.sinks()
        var described: [String: JSONValue] = [:]
        for (name, broker) in identities.all {
            var identity = await Self.tokenFields(broker.status())
            if case .object(var token) = identity["token"] {
                token["store"] = identity["store"]
                identity = token
            }
            identity["sinks"] = .array(sinks.filter { $0.sink.identity == name }.map(Self.sinkFields))
            let status = await broker.status()
            identity["state"] = .string(Self.state(status))
            identity["refreshes"] = .array(status.refreshes.map(Self.refreshFields))
            described[name] = .object(identity)
        }
        fields["sinks"] = .array(sinks.map(Self.sinkFields))
        var routeFields: [String: JSONValue] = [:]
        for route in routes() {
            let figures = statistics.figures(route: route.name)
            routeFields[route.name] = .object([
                "listen": .string(route.listen.description), "host": route.host.map(JSONValue.string) ?? .null, "pathPrefix": .string(route.pathPrefix),
                "stripPrefix": .bool(route.stripPrefix), "upstream": .string(route.upstream.url.description), "identity": .string(route.identity),
                "requests": .number(Double(figures.requests)), "recovered401": .number(Double(figures.recovered401)),
                "errors": .object(figures.errors.mapValues { .number(Double($0)) }),
                "latencyMs": figures.latencyMilliseconds.map { .object(["p50": .number(Self.rounded($0.p50)), "p99": .number(Self.rounded($0.p99))]) } ?? .null,
            ])
        }
        let counters: [String: JSONValue] = [
            "requests": .number(Double(statistics.requests)),
            "retries": .number(Double(statistics.retries)),
            "replaysAfter401": .number(Double(statistics.replaysAfter401)),
            "faultsInjected": .number(Double(statistics.faultsInjected)),
            "proxyErrors": .number(Double(statistics.proxyErrors)),
            "aborted": .number(Double(statistics.aborted)),
        ]
        fields["counters"] = .object(counters)
        fields["faults"] = faultFields
        fields["upstream"] = .string(upstream().description)
        fields["version"] = .string(TokenProxyVersion.current)
        // The page counts down from the server's clock, not the browser's.
        fields["time"] = .string(RFC3339.format(Date()))
        fields["identities"] = .object(described)
        fields["routes"] = .object(routeFields)
        return .json(.ok, fields)
    }

    /// One identity's state in a word, for the page: `login_needed`, `failing`, `refreshing`,
    /// `valid` or `no_token`.
    static func state(_ status: TokenBroker.Status, now: Date = Date()) -> String {
        if status.reauthenticationRequired { return "login_needed" }
        if status.failure != nil { return "failing" }
        if status.refreshing { return "refreshing" }
        if let expiresAt = status.expiresAt, expiresAt > now { return "valid" }
        return "no_token"
    }

    private static func refreshFields(_ entry: TokenBroker.RefreshHistoryEntry) -> JSONValue {
        var fields: [String: JSONValue] = [
            "at": .string(RFC3339.format(entry.at)), "trigger": .string(entry.trigger), "result": .string(entry.result.rawValue),
            "durationMs": .number(Double(entry.duration.milliseconds)),
        ]
        if let expiresAt = entry.expiresAt { fields["expiresAt"] = .string(RFC3339.format(expiresAt)) }
        if let detail = entry.detail { fields["detail"] = .string(detail) }
        return .object(fields)
    }

    private static func rounded(_ milliseconds: Double) -> Double { (milliseconds * 10).rounded() / 10 }

    /// One sink: where, whose, how, and how its last write went (never the token).
    private static func sinkFields(_ status: TokenSinks.Status) -> JSONValue {
        var fields: [String: JSONValue] = [
            "path": .string(status.sink.path), "identity": .string(status.sink.identity), "format": .string(status.sink.format.rawValue),
            "mode": .string("0" + String(status.sink.mode, radix: 8)), "writes": .number(Double(status.writes)),
            "ok": .bool(status.error == nil && status.writtenAt != nil),
        ]
        if let writtenAt = status.writtenAt { fields["writtenAt"] = .string(RFC3339.format(writtenAt)) }
        if let expiresAt = status.expiresAt { fields["expiresAt"] = .string(RFC3339.format(expiresAt)) }
        if let error = status.error { fields["error"] = .string(error) }
        return .object(fields)
    }

    /// `token` and `store` of one identity's status.
    private static func tokenFields(_ status: TokenBroker.Status) -> [String: JSONValue] {
        var token: [String: JSONValue] = ["refreshTokenHeld": .bool(status.hasRefreshToken), "refreshing": .bool(status.refreshing)]
        if let expiresAt = status.expiresAt {
            token["expiresAt"] = .string(RFC3339.format(expiresAt))
            token["expiresIn"] = .number(expiresAt.timeIntervalSinceNow.rounded(.down))
        }
        if let failure = status.failure {
            token["failure"] = .string(failure)
            token["reauthenticationRequired"] = .bool(status.reauthenticationRequired)
        }
        if let expiresAt = status.refreshTokenExpiresAt {
            token["refreshTokenExpiresAt"] = .string(RFC3339.format(expiresAt))
            token["refreshTokenExpiresIn"] = .number(expiresAt.timeIntervalSinceNow.rounded(.down))
        }
        token["refreshTokenWarning"] = .bool(status.refreshTokenWarning)
        var store: [String: JSONValue] = ["name": .string(status.store)]
        if let problem = status.storeProblem { store["problem"] = .string(problem) }
        if let last = status.lastRefresh {
            token["lastRefresh"] = .object(["at": .string(RFC3339.format(last.at)), "succeeded": .bool(last.succeeded), "detail": .string(last.detail)])
        }
        return ["token": .object(token), "store": .object(store)]
    }

    private var faultFields: JSONValue {
        .object(["enabled": .bool(faults.enabled), "upstream401Percent": .number(faults.upstream401Percent)])
    }

    private func updateFaults(_ body: String) -> Response {
        guard case .object(let fields)? = try? JSONValue.parse(Data(body.utf8)) else {
            return .error(.badRequest, "bad_request", "expected a JSON object like {\"enabled\": true, \"upstream401Percent\": 10}")
        }
        var enabled = faults.enabled
        var percent = faults.upstream401Percent
        for (key, value) in fields {
            switch (key, value) {
            case ("enabled", .bool(let flag)): enabled = flag
            case ("upstream401Percent", .number(let number)) where (0...100).contains(number): percent = number
            case ("upstream401Percent", _): return .error(.badRequest, "bad_request", "upstream401Percent must be a number from 0 to 100")
            case ("enabled", _): return .error(.badRequest, "bad_request", "enabled must be true or false")
            default: return .error(.badRequest, "bad_request", "unknown key \(key); expected enabled and upstream401Percent")
            }
        }
        faults.update(enabled: enabled, upstream401Percent: percent)
        statistics.events.publish(.faults, ["enabled": .bool(enabled), "upstream401Percent": .number(percent)])
        return .json(.ok, ["faults": faultFields])
    }

    private static func failure(_ error: TokenBrokerError) -> Response {
        switch error {
        case .reauthenticationRequired(let reason):
            return .error(.unauthorized, ProxyError.Code.reauthenticationRequired.rawValue, reason)
        case .unavailable, .misconfigured:
            return .error(.serviceUnavailable, ProxyError.Code.tokenUnavailable.rawValue, RefreshGate.reason(error))
        case .rateLimited(let retryAfter):
            var response = Response.error(.tooManyRequests, "too_many_requests", error.description)
            response.headers.append(("Retry-After", String(max(1, Int(retryAfter.timeInterval.rounded(.up))))))
            return response
        }
    }
}
