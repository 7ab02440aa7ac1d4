import AsyncHTTPClient
import FoundationEssentials
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Glibc
import NIOConcurrencyHelpers

/// Calls the OAuth 2.0 token endpoint (RFC 6749 §4.4, §6) with async-http-client.
///
/// Few calls, TLS with certificate verification, redirects refused (a token endpoint that
/// redirects is misconfigured, and following it could hand the credentials to another host).
public final class TokenEndpointClient: Sendable {
    private let client: HTTPClient
    /// The client that goes through the egress proxy, when one is configured or in the
    /// environment; each call picks one of the two by its address (`NO_PROXY`).
    private let proxiedClient: HTTPClient?
    private let settings: NIOLockedValueBox<Configuration.Token>
    /// The token settings, with the endpoints that discovery found (``adopt(_:)``).
    var configuration: Configuration.Token { settings.withLockedValue { $0 } }
    private let environment: [String: String]
    /// Why no call can be made, when `token.tls` could not be loaded.
    private let tlsProblem: String?

    public init(configuration: Configuration.Token, environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.settings = NIOLockedValueBox(configuration)
        self.environment = environment
        // A certificate or key that cannot be read fails every call with a message naming it
        // (check-config reports it first); verification is never turned off instead.
        var tls = TLSConfiguration.makeClientConfiguration()
        do {
            tls = try configuration.tls.clientConfiguration()
            tlsProblem = nil
        } catch {
            tlsProblem = "was not called: token.tls: the client certificate or key cannot be read as PEM (\(error))"
        }
        var clientConfiguration = HTTPClient.Configuration(
            tlsConfiguration: tls,
            redirectConfiguration: .disallow,
            timeout: .init(connect: .milliseconds(configuration.requestTimeout.milliseconds))
        )
        clientConfiguration.connectionPool.idleTimeout = .seconds(30)
        // A refused connection fails the call at once (SPEC §4): retrying the connect until the
        // deadline would hold the refresh lock for all of token.requestTimeout.
        clientConfiguration.connectionPool.retryConnectionEstablishment = false
        self.client = HTTPClient(eventLoopGroupProvider: .shared(MultiThreadedEventLoopGroup.singleton), configuration: clientConfiguration)
        let anyProxy = configuration.proxy.flatMap(EgressProxy.parse) ?? (environment["HTTPS_PROXY"] ?? environment["https_proxy"]).flatMap(EgressProxy.parse)
        if let anyProxy {
            clientConfiguration.proxy = .server(
                host: anyProxy.host, port: anyProxy.port,
                authorization: anyProxy.credentials.map { .basic(username: $0.user, password: $0.password) }
            )
            proxiedClient = HTTPClient(eventLoopGroupProvider: .shared(MultiThreadedEventLoopGroup.singleton), configuration: clientConfiguration)
        } else {
            proxiedClient = nil
        }
    }

    /// Takes the endpoints discovery found (SPEC §2.1) in place of the configured settings.
    func adopt(_ resolved: Configuration.Token) {
        settings.withLockedValue { $0 = resolved }
    }

    /// GETs a JSON document (an issuer's metadata), within `token.requestTimeout`.
    func fetchJSON(_ url: String) async -> Result<[String: JSONValue], CallFailure> {
        if let tlsProblem { return .failure(CallFailure(reason: tlsProblem)) }
        var request = HTTPClientRequest(url: url)
        request.headers.add(name: "Accept", value: "application/json")
        request.headers.add(name: "User-Agent", value: "tokenproxy/\(TokenProxyVersion.current)")
        let timeout = configuration.requestTimeout
        do {
            let answer = try await client(for: url).execute(request, deadline: .now() + .milliseconds(timeout.milliseconds))
            let body = try await answer.body.collect(upTo: 1 << 20)
            guard answer.status == .ok else { return .failure(CallFailure(reason: "answered HTTP \(answer.status.code)")) }
            guard case .object(let fields)? = try? JSONValue.parse(Data(body.readableBytesView)) else {
                return .failure(CallFailure(reason: "answered with something that is not a JSON object"))
            }
            return .success(fields)
        } catch {
            return .failure(CallFailure(reason: "could not be reached (\(Self.describe(error)))"))
        }
    }

    /// Closes the client's connections; call once before the process exits.
    public func shutdown() async {
        try? await client.shutdown()
        try? await proxiedClient?.shutdown()
    }

    /// The credentials a request would use now, the client secret read afresh.
    func credentials(refreshToken: String?) throws(TokenBrokerError) -> TokenCredentials {
        let secret: String?
        switch configuration.clientAuth {
        case .basic, .body: secret = try TokenCredentials.readSecret(configuration.clientSecret, environment: environment)
        case .privateKeyJWT:
            let path = configuration.clientKeyFile ?? ""
            let pem = try TokenCredentials.readFile(path, key: "token.clientKeyFile")
            if let problem = ClientAssertion.problem(with: pem, path: path) { throw .misconfigured(reason: "token.clientKeyFile: \(problem)") }
            secret = pem
        case .clientAssertion: secret = try TokenCredentials.readFile(configuration.clientAssertionFile ?? "", key: "token.clientAssertionFile")
        case .none, .tlsClientAuth: secret = nil
        }
        var credentials = TokenCredentials(
            grant: configuration.grant,
            clientID: configuration.clientID,
            clientSecret: secret,
            refreshToken: configuration.grant == .refreshToken ? refreshToken : nil
        )
        // A subject token file is read at every call (a projected service-account token is
        // rotated under the proxy); another identity's token is the broker's to get.
        if case .file(let path)? = configuration.exchange?.subject {
            credentials.subjectToken = try TokenCredentials.readFile(path, key: "subjectTokenFile")
        }
        return credentials
    }

    /// Sends one token request and interprets the answer. Never throws: failures are transient.
    /// `grant` replaces the fields of the configured grant (the device code grant of a login).
    func requestToken(_ credentials: TokenCredentials, grant: [(String, String)]? = nil) async -> TokenResponse {
        var form: [(String, String)]
        if let grant {
            form = grant
        } else {
            form = [("grant_type", credentials.grant.grantType)]
            if let refreshToken = credentials.refreshToken { form.append(("refresh_token", refreshToken)) }
            if let exchange = configuration.exchange {
                // RFC 8693 §2.1.
                form.append(("subject_token", credentials.subjectToken ?? ""))
                form.append(("subject_token_type", exchange.subjectTokenType))
                if let type = exchange.requestedTokenType { form.append(("requested_token_type", type)) }
                if let audience = exchange.audience { form.append(("audience", audience)) }
                if let resource = exchange.resource { form.append(("resource", resource)) }
            }
            if let scope = configuration.scope { form.append(("scope", scope)) }
        }
        for name in configuration.extraParams.keys.sorted() { form.append((name, configuration.extraParams[name]!)) }
        switch await post(form, to: configuration.endpoint, credentials: credentials) {
        case .failure(let failure):
            return .transient(reason: "the token endpoint \(configuration.endpoint) \(failure.reason)", retryAfter: nil)
        case .success(let answer):
            let response = TokenResponse.interpret(
                status: answer.status, retryAfter: answer.retryAfter, body: answer.body, receivedAt: Date(), defaultLifetime: configuration.defaultLifetime
            )
            if case .transient(let reason, let retryAfter) = response {
                return .transient(reason: "the token endpoint \(configuration.endpoint) \(reason)", retryAfter: retryAfter)
            }
            return response
        }
    }

    /// An endpoint's HTTP answer, read whole (at most 1 MiB).
    struct FormAnswer: Sendable {
        var status: Int
        var retryAfter: String?
        var body: Data

        /// The answer's JSON object, if it is one.
        var object: [String: JSONValue]? {
            if case .object(let fields)? = try? JSONValue.parse(body) { fields } else { nil }
        }
    }

    /// Why a call got no answer, in words that follow the endpoint's name.
    struct CallFailure: Error, Sendable {
        var reason: String
    }

    /// POSTs `form` to `url` (the token, device authorization or revocation endpoint) with the
    /// client authentication of `token.clientAuth`, within `token.requestTimeout`.
    func post(_ fields: [(String, String)], to url: String, credentials: TokenCredentials) async -> Result<FormAnswer, CallFailure> {
        if let tlsProblem { return .failure(CallFailure(reason: tlsProblem)) }
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
        request.headers.add(name: "Accept", value: "application/json")
        request.headers.add(name: "User-Agent", value: "tokenproxy/\(TokenProxyVersion.current)")
        var form = fields
        switch configuration.clientAuth {
        case .basic:
            // RFC 6749 §2.3.1: the id and secret are form-encoded before they are Base64-encoded.
            let pair = "\(Self.formEncode(credentials.clientID ?? "")):\(Self.formEncode(credentials.clientSecret ?? ""))"
            request.headers.add(name: "Authorization", value: "Basic \(Data(pair.utf8).base64EncodedString())")
        case .body:
            form.append(("client_id", credentials.clientID ?? ""))
            form.append(("client_secret", credentials.clientSecret ?? ""))
        case .none, .tlsClientAuth:
            // RFC 8705 §2: the client names itself; the TLS client certificate authenticates it.
            if let clientID = credentials.clientID { form.append(("client_id", clientID)) }
        case .privateKeyJWT, .clientAssertion:
            form.append(("client_id", credentials.clientID ?? ""))
            form.append(("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"))
            var assertion = credentials.clientSecret ?? ""
            if configuration.clientAuth == .privateKeyJWT {
                // `aud` is the token endpoint, whichever endpoint of the issuer is called.
                guard let key = ClientAssertion.parseKey(pem: assertion),
                    let signed = try? ClientAssertion.make(key: key, clientID: credentials.clientID ?? "", audience: configuration.endpoint, keyID: configuration.clientKeyID, now: Date())
                else {
                    return .failure(CallFailure(reason: "was not called: the client assertion could not be signed with token.clientKeyFile"))
                }
                assertion = signed
            }
            form.append(("client_assertion", assertion))
        }
        request.body = .bytes(ByteBuffer(string: form.map { "\(Self.formEncode($0.0))=\(Self.formEncode($0.1))" }.joined(separator: "&")))

        let timeout = TimeAmount.milliseconds(configuration.requestTimeout.milliseconds)
        do {
            let answer = try await client(for: url).execute(request, deadline: .now() + timeout)
            let body = try await answer.body.collect(upTo: 1 << 20)
            return .success(FormAnswer(status: Int(answer.status.code), retryAfter: answer.headers.first(name: "Retry-After"), body: Data(body.readableBytesView)))
        } catch let error as HTTPClientError where error == .deadlineExceeded || error == .readTimeout || error == .connectTimeout {
            return .failure(CallFailure(reason: "did not answer within token.requestTimeout (\(configuration.requestTimeout.configString))"))
        } catch is NIOTooManyBytesError {
            return .failure(CallFailure(reason: "answered with more than 1 MiB"))
        } catch {
            return .failure(CallFailure(reason: "could not be reached (\(Self.describe(error))); check the URL and that the issuer is up"))
        }
    }

    /// The client for a call to `url`: through the egress proxy unless `NO_PROXY` exempts it.
    private func client(for url: String) -> HTTPClient {
        guard let proxiedClient, EgressProxy.choose(for: url, configured: configuration.proxy, environment: environment) != nil else { return client }
        return proxiedClient
    }

    /// A connection error in a few words (`connection refused`), not a type dump.
    private static func describe(_ error: any Error) -> String {
        if let problem = TLSProblem.describe(error) { return problem }
        if let error = error as? IOError { return String(cString: strerror(error.errnoCode)).lowercased() }
        if let error = error as? NIOConnectionError {
            if let first = error.connectionErrors.first?.error { return describe(first) }
            if let dns = error.dnsAError ?? error.dnsAAAAError { return "name lookup failed: \(dns)" }
        }
        let text = String(describing: error)
        return text.count > 200 ? String(text.prefix(200)) + "…" : text
    }

    /// `application/x-www-form-urlencoded` per the WHATWG URL standard.
    static func formEncode(_ text: String) -> String {
        var result = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "*"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"):
                result.unicodeScalars.append(Unicode.Scalar(byte))
            case UInt8(ascii: " "):
                result += "+"
            default:
                result += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return result
    }
}

/// The version that `tokenproxy --version` prints and the token endpoint sees as User-Agent.
public enum TokenProxyVersion {
    public static let current = "0.1.0"
}
