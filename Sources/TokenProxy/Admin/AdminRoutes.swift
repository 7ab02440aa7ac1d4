import FoundationEssentials
import NIOHTTP1

/// What the admin API answers (SPEC §7), decided without sockets: health, readiness, status
/// and metrics, forced refresh and expiry, and fault settings.
public struct AdminRoutes: Sendable {
    let broker: TokenBroker
    let faults: FaultSettings
    let statistics: ProxyStatistics
    /// The upstream the data path forwards to now: read from the proxy's reloadable context
    /// at each answer, so that a reload shows at once.
    let upstream: @Sendable () -> UpstreamURL
    /// `admin.tokenFile`: when set, `POST` and `PUT` need its content as a bearer token.
    let tokenFile: String?

    public init(broker: TokenBroker, faults: FaultSettings, statistics: ProxyStatistics, upstream: @escaping @Sendable () -> UpstreamURL, tokenFile: String? = nil) {
        self.broker = broker
        self.faults = faults
        self.statistics = statistics
        self.upstream = upstream
        self.tokenFile = tokenFile
    }

    public struct Request: Sendable {
        public var method: HTTPMethod
        public var path: String
        public var body: String
        public var headers: HTTPHeaders

        public init(method: HTTPMethod, path: String, body: String = "", headers: HTTPHeaders = ["Host": "127.0.0.1"]) {
            self.method = method
            self.path = path
            self.body = body
            self.headers = headers
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
            if let seconds = broker.publisher.latest().map({ Double($0.expiresAtNanoseconds) / 1e9 - Date().timeIntervalSince1970 }) {
                statistics.tokenSecondsLeft.record(max(seconds, 0))
            }
            if let expiresAt = await broker.status().refreshTokenExpiresAt {
                statistics.refreshTokenSecondsLeft.record(max(expiresAt.timeIntervalSinceNow.rounded(.down), 0))
            }
            return Response(status: .ok, body: statistics.render(), contentType: "text/plain; version=0.0.4; charset=utf-8")
        case (.POST, "/token/refresh"):
            do {
                let tokens = try await broker.token(for: .forced)
                return .json(.ok, ["refreshed": .bool(true), "expiresAt": tokens.expiresAt.map { .string(RFC3339.format($0)) } ?? .null])
            } catch {
                return Self.failure(error)
            }
        case (.POST, "/token/expire"):
            do {
                try await broker.expireCurrentToken()
                return .json(.ok, ["expired": .bool(true)])
            } catch {
                return Self.failure(error)
            }
        case (.PUT, "/faults"):
            return updateFaults(request.body)
        case (_, "/healthz"), (_, "/readyz"), (_, "/status"), (_, "/metrics"), (_, "/token/refresh"), (_, "/token/expire"), (_, "/faults"):
            return .error(.methodNotAllowed, "method_not_allowed", "\(request.method.rawValue) is not allowed on \(request.path)")
        default:
            return .error(.notFound, "not_found", "no admin route \(request.path); see /healthz, /readyz, /status, /metrics, /token/refresh, /token/expire, /faults")
        }
    }

    /// SPEC §7: no web page can drive the admin API (loopback `Host` only, no `Origin`, no
    /// cross-site `Sec-Fetch-Site`, JSON bodies only), and with `admin.tokenFile` a change needs
    /// the bearer token.
    private func refusal(of request: Request) async -> Response? {
        let headers = request.headers
        if let refusal = ClientGuard.admin.refusal(
            host: headers.first(name: "Host"), origin: headers.first(name: "Origin"), fetchSite: headers.first(name: "Sec-Fetch-Site"), carries: { headers.contains(name: $0) }
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

    private func readiness() async -> Response {
        do {
            _ = try await broker.tokenForRequest()
        } catch {
            return .json(.serviceUnavailable, ["ready": .bool(false), "reason": .string(error.description)])
        }
        // Ready while a valid token is held; a fleet database that cannot be reached is said, not fatal.
        guard let problem = await broker.status().storeProblem else { return .json(.ok, ["ready": .bool(true)]) }
        return .json(.ok, ["ready": .bool(true), "storeProblem": .string(problem)])
    }

    private func status() async -> Response {
        let status = await broker.status()
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
        let counters: [String: JSONValue] = [
            "requests": .number(Double(statistics.requests)),
            "retries": .number(Double(statistics.retries)),
            "replaysAfter401": .number(Double(statistics.replaysAfter401)),
            "faultsInjected": .number(Double(statistics.faultsInjected)),
            "proxyErrors": .number(Double(statistics.proxyErrors)),
            "aborted": .number(Double(statistics.aborted)),
        ]
        return .json(.ok, [
            "token": .object(token), "store": .object(store), "counters": .object(counters), "faults": faultFields, "upstream": .string(upstream().description),
            "version": .string(TokenProxyVersion.current),
        ])
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
