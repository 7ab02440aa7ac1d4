import FoundationEssentials
import NIOConcurrencyHelpers
import NIOSSL

/// A stand-in OAuth 2.0 token endpoint: issues access tokens of a set lifetime, rotates refresh
/// tokens (each one is accepted once; reuse gets `invalid_grant`), exchanges tokens (RFC 8693,
/// `MockTokenIssuer+TokenExchange.swift`), and records every call.
public final class MockTokenIssuer: Sendable {
    public struct Behavior: Sendable {
        /// `expires_in` of issued access tokens.
        public var lifetime: Duration = .seconds(20)
        /// How long each call takes before it is answered.
        public var delay: Duration = .zero
        /// Issue a new refresh token with every refresh and reject reused ones.
        public var rotateRefreshTokens = true
        /// Leave `expires_in` out of the answer (expiry then comes from a JWT or the default).
        public var omitExpiresIn = false
        /// Issue access tokens as unsigned JWTs carrying `exp`.
        public var issueJWTs = false
        /// The client id and secret that client authentication must present, if any.
        public var expectedClient: (id: String, secret: String)?
        /// Confidential clients besides ``expectedClient``, secrets by client id: a call that names
        /// one of them (as the HTTP Basic user, else as `client_id`) must present its secret, in the
        /// same way, or is answered `invalid_client`. Calls naming another client are judged by
        /// ``expectedClient`` as before (with neither set, any client is accepted).
        public var clients: [String: String] = [:]
        /// Every `failEvery`-th call is answered with 503 (0: never).
        public var failEvery = 0
        /// Invalidate every access token issued before the moment a new one is issued, as real
        /// servers do at rotation.
        public var revokePreviousAccessTokens = false
        /// A refresh token presented a second time revokes its whole family, every refresh and
        /// access token issued from it (as Auth0, Okta and Entra ID do with rotation on).
        public var revokeFamilyOnReuse = false
        /// Whether a call whose client went away during `delay` is still carried out. `false`
        /// models a server that rolls back a request whose client disconnected.
        public var processesAbandonedCalls = true
        /// When set, clients must authenticate with `private_key_jwt` (RFC 7523) signed by the
        /// private key of this PEM public key (EC P-256 or RSA): signature, `iss` = `sub` =
        /// `client_id`, `aud` = the token endpoint URL, `exp` at most 5 minutes ahead, a `jti`
        /// never seen before. Anything else is answered `invalid_client`.
        public var expectedAssertionKey: String?
        /// Device authorization grant (RFC 8628): the `interval` handed out, in seconds (the RFC
        /// says whole seconds; tests use less), and how long a device code lives.
        public var deviceInterval: Double = 5
        public var deviceCodeLifetime: Double = 600
        /// Errors the token endpoint answers to the first polls of each device code, in order
        /// (`authorization_pending`, `slow_down`), before the user's decision counts.
        public var devicePollScript: [String] = []
        /// Which metadata documents the issuer serves (`openid`: OpenID Connect Discovery,
        /// `oauth`: RFC 8414), and the endpoints the OpenID document leaves out.
        public var metadataDocuments: Set<String> = ["openid", "oauth"]
        public var openIDOmits: Set<String> = []
        /// When set, every response that carries a refresh token says how long it lives, as
        /// Keycloak's `refresh_expires_in` does.
        public var refreshTokenLifetime: Double?
        /// The scopes a request may ask for (`invalid_scope` otherwise); `nil` allows any.
        public var allowedScopes: Set<String>?
        /// Token exchange (RFC 8693): the `subject_token_type` a subject token must have
        /// (`invalid_request` otherwise); `nil` accepts any type.
        public var acceptedSubjectTokenType: String? = MockTokenIssuer.accessTokenType
        /// Token exchange: whether an access token this issuer issued, still live, is a valid
        /// subject token. Tokens given to ``MockTokenIssuer/acceptSubjectToken(_:)`` always are.
        public var acceptsOwnAccessTokensAsSubject = true
        /// Token exchange: other issuers whose live access tokens are valid subject tokens (a
        /// subject identity with an issuer of its own).
        public var subjectTokenIssuers: [MockTokenIssuer] = []

        public init() {}
    }

    /// One call the endpoint received.
    public struct Call: Sendable {
        public var at: Date
        public var form: [String: String]
        public var authorization: String?
        public var status: Int
    }

    struct State {
        var behavior: Behavior
        var calls: [Call] = []
        var validRefreshTokens: Set<String> = []
        var scripted: [MockHTTPResponse] = []
        var counter = 0
        var received = 0
        var issued: [String: Date] = [:]
        var usedRefreshTokens: Set<String> = []
        var seenAssertionIDs: Set<String> = []
        var assertionHeaders: [[String: String]] = []
        var familyRevocations = 0
        var devices: [String: DeviceGrant] = [:]
        var revoked: [String] = []
        var metadataRequests = 0
        var pendingAuthorizations: [String: PendingAuthorization] = [:]
        var authorizationCodes: [String: PendingAuthorization] = [:]
        var pkceVerified = 0
        var acceptedSubjectTokens: Set<String> = []
        var exchanges: [Exchange] = []
        /// The position in `exchanges` of the exchange that issued each access token.
        var exchangeIssuing: [String: Int] = [:]
    }

    /// One device authorization (RFC 8628 §3.2) and what the user decided.
    struct DeviceGrant {
        enum Decision { case pending, approved, denied }
        var userCode: String
        var expiresAt: Date
        var script: [String]
        var decision = Decision.pending
        var polls: [Date] = []
    }

    let state: NIOLockedValueBox<State>
    private let server: MockHTTPServer

    public var url: String { server.baseURL + "/oauth/token" }
    public var port: Int { server.port }

    public static func start(behavior: Behavior = Behavior(), port: Int = 0, tls: NIOSSLContext? = nil) async throws -> MockTokenIssuer {
        let state = NIOLockedValueBox(State(behavior: behavior))
        let server = try await MockHTTPServer.start(port: port, tls: tls) { request in
            await Self.handle(request, state: state)
        }
        return MockTokenIssuer(state: state, server: server)
    }

    private init(state: NIOLockedValueBox<State>, server: MockHTTPServer) {
        self.state = state
        self.server = server
    }

    public func shutdown() async { await server.shutdown() }

    /// Invalidates every access token issued so far, as a server does when it revokes a session
    /// early; the refresh tokens stay valid.
    public func revokeAccessTokens() {
        state.withLockedValue { $0.issued.removeAll() }
    }

    /// Invalidates every refresh token issued or granted so far (a revoked login).
    public func revokeRefreshTokens() {
        state.withLockedValue { $0.validRefreshTokens.removeAll() }
    }

    /// Makes `token` a refresh token the issuer accepts (as a login would).
    public func grantRefreshToken(_ token: String) {
        state.withLockedValue { _ = $0.validRefreshTokens.insert(token) }
    }

    /// Answers the next calls with these responses, in order, before normal behaviour resumes.
    public func script(_ responses: [MockHTTPResponse]) {
        state.withLockedValue { $0.scripted += responses }
    }

    public func update(_ change: @Sendable (inout Behavior) -> Void) {
        state.withLockedValue { change(&$0.behavior) }
    }

    public var calls: [Call] { state.withLockedValue { $0.calls } }

    /// Whether `accessToken` was issued here and has not expired: what a resource server checks.
    public func isValid(accessToken: String) -> Bool {
        state.withLockedValue { $0.issued[accessToken].map { $0 > Date() } ?? false }
    }
    public var callCount: Int { state.withLockedValue { $0.calls.count } }
    /// The JOSE headers of the client assertions accepted so far (`alg`, `kid`, `typ`).
    public var assertionHeaders: [[String: String]] { state.withLockedValue { $0.assertionHeaders } }
    /// How many times a reused refresh token revoked its family (``Behavior/revokeFamilyOnReuse``).
    public var familyRevocations: Int { state.withLockedValue { $0.familyRevocations } }
    /// Calls received, including those still being answered.
    public var receivedCount: Int { state.withLockedValue { $0.received } }
    /// How many calls were refused because the refresh token had already been used or was unknown.
    public var invalidGrantCount: Int {
        state.withLockedValue { $0.calls.filter { $0.status == 400 }.count }
    }

    private static func handle(_ request: MockHTTPRequest, state: NIOLockedValueBox<State>) async -> MockHTTPResponse {
        let delay = state.withLockedValue {
            $0.received += 1
            return $0.behavior.delay
        }
        if delay > .zero { try? await Task.sleep(for: delay) }
        if !request.isClientConnected(), !state.withLockedValue({ $0.behavior.processesAbandonedCalls }) { return .drop }
        let form = parseForm(request.bodyText)
        if request.uri.hasPrefix("/.well-known/") {
            return state.withLockedValue {
                $0.metadataRequests += 1
                return metadata(request, baseURL: "http://" + (request.header("Host") ?? ""), behavior: $0.behavior)
            }
        }
        if request.uri.hasPrefix("/oauth/authorize") {
            return state.withLockedValue { authorize(request, form: form, state: &$0) }
        }
        if request.uri.hasPrefix("/oauth/revoke") {
            return state.withLockedValue { revoke(form: form, state: &$0) }
        }
        if request.uri.hasPrefix("/oauth/device") {
            return state.withLockedValue { authorizeDevice(request, form: form, baseURL: "http://" + (request.header("Host") ?? ""), state: &$0) }
        }
        let isExchange = form["grant_type"] == tokenExchangeGrant
        // Other issuers are asked before this issuer's lock is taken: one of them may be this
        // issuer, or may be asking this one at the same moment.
        let subjectIssuers = isExchange ? state.withLockedValue({ $0.behavior.subjectTokenIssuers }) : []
        let vouchedElsewhere = form["subject_token"].map { subject in subjectIssuers.contains { $0.isValid(accessToken: subject) } } ?? false
        return state.withLockedValue { state in
            let (response, accessToken) = respond(to: request, form: form, subjectVouchedElsewhere: vouchedElsewhere, state: &state)
            state.calls.append(Call(at: Date(), form: form, authorization: request.header("Authorization"), status: response.status))
            if isExchange { recordExchange(request, form: form, status: response.status, issued: accessToken, state: &state) }
            return response
        }
    }

    /// The answer, and the access token it carries when one was issued.
    private static func respond(
        to request: MockHTTPRequest, form: [String: String], subjectVouchedElsewhere: Bool, state: inout State
    ) -> (MockHTTPResponse, accessToken: String?) {
        state.counter += 1
        if !state.scripted.isEmpty { return (state.scripted.removeFirst(), nil) }
        let behavior = state.behavior
        if behavior.failEvery > 0, state.counter % behavior.failEvery == 0 {
            return (.json(503, #"{"error":"temporarily_unavailable"}"#), nil)
        }
        guard request.method == "POST", request.header("Content-Type")?.hasPrefix("application/x-www-form-urlencoded") == true else {
            return (.json(400, #"{"error":"invalid_request","error_description":"expected a form POST"}"#), nil)
        }
        if let refusal = clientRefusal(request, form: form, behavior: behavior) { return (refusal, nil) }
        if let publicKey = behavior.expectedAssertionKey {
            if let problem = AssertionVerifier.problem(form: form, publicKeyPEM: publicKey, audience: endpointURL(request), seen: &state.seenAssertionIDs, headers: &state.assertionHeaders) {
                return (.json(401, "{\"error\":\"invalid_client\",\"error_description\":\"\(problem)\"}"), nil)
            }
        }
        if let allowed = behavior.allowedScopes, let scope = form["scope"], !allowed.contains(scope) {
            return (.json(400, #"{"error":"invalid_scope","error_description":"the requested scope is not allowed for this client"}"#), nil)
        }
        var refreshToken: String?
        // `issued_token_type` (RFC 8693 §2.2.1), for an exchange only.
        var issuedTokenType: String?
        switch form["grant_type"] {
        case "refresh_token":
            guard let presented = form["refresh_token"], state.validRefreshTokens.contains(presented) else {
                if behavior.revokeFamilyOnReuse, let presented = form["refresh_token"], state.usedRefreshTokens.contains(presented) {
                    state.validRefreshTokens.removeAll()
                    state.issued.removeAll()
                    state.familyRevocations += 1
                }
                return (.json(400, #"{"error":"invalid_grant","error_description":"refresh token unknown or already used"}"#), nil)
            }
            if behavior.rotateRefreshTokens {
                state.usedRefreshTokens.insert(presented)
                state.validRefreshTokens.remove(presented)
                refreshToken = "rt-\(state.counter)-\(UInt32.random(in: 0...UInt32.max))"
                state.validRefreshTokens.insert(refreshToken!)
            }
        case "client_credentials":
            break
        case "authorization_code":
            if let refusal = exchange(form: form, state: &state) { return (refusal, nil) }
            refreshToken = "rt-browser-\(state.counter)-\(UInt32.random(in: 0...UInt32.max))"
            state.validRefreshTokens.insert(refreshToken!)
        case "urn:ietf:params:oauth:grant-type:device_code":
            if let refusal = pollDevice(form["device_code"], state: &state) { return (refusal, nil) }
            refreshToken = "rt-device-\(state.counter)-\(UInt32.random(in: 0...UInt32.max))"
            state.validRefreshTokens.insert(refreshToken!)
        case "urn:ietf:params:oauth:grant-type:token-exchange":
            if let refusal = exchangeRefusal(form: form, subjectVouchedElsewhere: subjectVouchedElsewhere, state: &state) { return (refusal, nil) }
            issuedTokenType = form["requested_token_type"] ?? accessTokenType
        default:
            return (.json(400, #"{"error":"unsupported_grant_type"}"#), nil)
        }
        let seconds = Double(behavior.lifetime.components.seconds) + Double(behavior.lifetime.components.attoseconds) / 1e18
        var accessToken = "at-\(state.counter)-\(UInt32.random(in: 0...UInt32.max))"
        if behavior.issueJWTs {
            let exp = Int(Date().timeIntervalSince1970 + seconds)
            // An exchanged token names the audience it was asked for, as issuers put it in `aud`.
            let audience = issuedTokenType == nil ? "" : form["audience"].map { ",\"aud\":\(String(reflecting: $0))" } ?? ""
            accessToken = [#"{"alg":"none"}"#, "{\"exp\":\(exp),\"jti\":\"\(accessToken)\"\(audience)}"]
                .map { base64URL(Data($0.utf8)) }.joined(separator: ".") + ".sig"
        }
        if behavior.revokePreviousAccessTokens { state.issued.removeAll() }
        state.issued[accessToken] = Date() + seconds
        var fields = ["\"access_token\":\"\(accessToken)\"", "\"token_type\":\"Bearer\""]
        if !behavior.omitExpiresIn { fields.append("\"expires_in\":\(seconds)") }
        if let refreshToken { fields.append("\"refresh_token\":\"\(refreshToken)\"") }
        if refreshToken != nil, let lifetime = behavior.refreshTokenLifetime { fields.append("\"refresh_expires_in\":\(lifetime)") }
        if let issuedTokenType { fields.append("\"issued_token_type\":\(String(reflecting: issuedTokenType))") }
        if let scope = form["scope"] { fields.append("\"scope\":\"\(scope)\"") }
        return (.json(200, "{" + fields.joined(separator: ",") + "}"), accessToken)
    }

    /// `invalid_client` unless the call authenticates as ``Behavior/clients`` and
    /// ``Behavior/expectedClient`` require.
    private static func clientRefusal(_ request: MockHTTPRequest, form: [String: String], behavior: Behavior) -> MockHTTPResponse? {
        let basic = basicCredentials(request)
        // A registered client is held to its own secret, presented the way it named itself.
        if let basic, let secret = behavior.clients[basic.id] {
            return basic.secret == secret ? nil : .json(401, #"{"error":"invalid_client","error_description":"wrong client secret"}"#)
        }
        if basic == nil, let id = form["client_id"], let secret = behavior.clients[id] {
            return form["client_secret"] == secret ? nil : .json(401, #"{"error":"invalid_client","error_description":"wrong client secret"}"#)
        }
        if let expected = behavior.expectedClient {
            let expectedBasic = "Basic " + Data("\(expected.id):\(expected.secret)".utf8).base64EncodedString()
            let viaBasic = request.header("Authorization") == expectedBasic
            let viaBody = form["client_id"] == expected.id && form["client_secret"] == expected.secret
            guard viaBasic || viaBody else { return .json(401, #"{"error":"invalid_client"}"#) }
        }
        return nil
    }

    /// The client id and secret of an HTTP Basic `Authorization` header (RFC 6749 §2.3.1: each
    /// form-encoded before the pair is Base64-encoded).
    static func basicCredentials(_ request: MockHTTPRequest) -> (id: String, secret: String)? {
        guard let header = request.header("Authorization"), header.hasPrefix("Basic "),
            let decoded = Data(base64Encoded: String(header.dropFirst(6)))
        else { return nil }
        let parts = String(decoding: decoded, as: UTF8.self).split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2 else { return nil }
        return (percentDecoded(parts[0]) ?? String(parts[0]), percentDecoded(parts[1]) ?? String(parts[1]))
    }

    /// The URL the request was sent to, as a client names the token endpoint (`aud`).
    private static func endpointURL(_ request: MockHTTPRequest) -> String {
        (request.isTLS ? "https://" : "http://") + (request.header("Host") ?? "") + String(request.uri.prefix { $0 != "?" })
    }

    private static func base64URL(_ data: Data) -> String {
        String(data.base64EncodedString().compactMap { character -> Character? in
            switch character {
            case "+": "-"
            case "/": "_"
            case "=": nil
            default: character
            }
        })
    }

    /// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
    private static func percentDecoded(_ text: Substring) -> String? {
        var bytes: [UInt8] = []
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            switch byte {
            case UInt8(ascii: "+"): bytes.append(UInt8(ascii: " "))
            case UInt8(ascii: "%"):
                guard let high = iterator.next(), let low = iterator.next(),
                    let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16)
                else { return nil }
                bytes.append(value)
            default: bytes.append(byte)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }

    static func parseForm(_ text: String) -> [String: String] {
        var form: [String: String] = [:]
        for pair in text.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ part: Substring) -> String {
                percentDecoded(part) ?? String(part)
            }
            form[decode(parts[0])] = parts.count > 1 ? decode(parts[1]) : ""
        }
        return form
    }
}
