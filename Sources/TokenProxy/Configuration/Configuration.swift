/// A validated tokenproxy configuration (SPEC §2). Build one with ``Configuration/load(path:environment:)``.
///
/// Paths are absolute: relative paths in the file were resolved against the file's folder.
public struct Configuration: Sendable, Equatable {
    /// The top-level `listen`: the listener of the route `default`, and of every route that
    /// names none.
    public var listen: ListenAddress
    public var allowNonLoopback: Bool
    /// Every identity by name (SPEC §2.4): `identities`, and the top-level `token` as `default`.
    /// Never empty.
    public var identities: [String: Token]
    /// Every route, in the order of the file; the top-level `upstream` is the route `default`,
    /// last. Never empty.
    public var routes: [Route]
    /// The top-level `retry`: what a route without its own uses.
    public var retry: Retry
    /// `nil` when the configuration sets `"admin": null`.
    public var admin: Admin?
    public var faults: Faults
    public var log: Log
    /// Which clients may use the proxy (SPEC §2.2).
    public var clients: Clients
    public var limits: Limits
    /// `nil` unless the store and lock live in PostgreSQL, shared by a fleet (SPEC §2.3).
    public var fleet: Fleet?
    /// How long a graceful stop (SIGTERM) waits for in-flight requests before closing them.
    public var drainTimeout: Duration
    /// The file this configuration was read from.
    public var sourcePath: String
    /// Token files the running proxy keeps fresh for programs that read a token from a file
    /// (SPEC §2.5).
    public var sinks: [Sink] = []
    /// Traces (SPEC §2.6); off unless `telemetry.otlp` or the `OTEL_*` variables ask.
    public var telemetry = Telemetry()

    /// The identity that the top-level `token` defines, and that routes and commands use when
    /// they name none.
    public static let defaultIdentity = "default"

    /// The identity a command acts on (`--identity`), set by ``selecting(_:)``.
    public private(set) var selectedIdentity: String?

    /// The name of the identity ``token`` is: the selected one, else `default`, else the first.
    public var tokenIdentity: String {
        if let selectedIdentity, identities[selectedIdentity] != nil { return selectedIdentity }
        return identities[Self.defaultIdentity] != nil ? Self.defaultIdentity : identityNames[0]
    }

    /// The selected identity, else `default`, else the only one (commands check with
    /// ``identity(named:)`` that there is no doubt which).
    public var token: Token {
        get { identities[tokenIdentity]! }
        set { identities[tokenIdentity] = newValue }
    }

    /// This configuration with ``token`` standing for the identity a command names (SPEC §1).
    public func selecting(_ name: String?) -> Result<Configuration, IdentityLookupError> {
        identity(named: name).map { found in
            var selected = self
            selected.selectedIdentity = found.name
            return selected
        }
    }

    /// Identity names, `default` first, then in alphabetical order.
    public var identityNames: [String] {
        identities.keys.sorted { ($0 == Self.defaultIdentity ? 0 : 1, $0) < ($1 == Self.defaultIdentity ? 0 : 1, $1) }
    }

    /// The upstream of the route `default` (the top-level `upstream`), else of the first route.
    public var upstream: Upstream {
        (routes.first { $0.name == Self.defaultIdentity } ?? routes[0]).upstream
    }

    /// The identity a command acts on (SPEC §1): `name`, else `default`, else the only one.
    public func identity(named name: String?) -> Result<(name: String, token: Token), IdentityLookupError> {
        if let name {
            guard let token = identities[name] else { return .failure(.unknown(name, known: identityNames)) }
            return .success((name, token))
        }
        if let token = identities[Self.defaultIdentity] { return .success((Self.defaultIdentity, token)) }
        if identities.count == 1, let only = identityNames.first { return .success((only, identities[only]!)) }
        return .failure(.ambiguous(known: identityNames))
    }

    public enum IdentityLookupError: Error, Sendable, CustomStringConvertible {
        case unknown(String, known: [String])
        case ambiguous(known: [String])

        public var description: String {
            switch self {
            case .unknown(let name, let known): "no identity \"\(name)\" in the configuration; it has \(known.joined(separator: ", "))"
            case .ambiguous(let known): "the configuration has several identities and no \"default\"; name one with --identity (\(known.joined(separator: ", ")))"
            }
        }
    }

    /// One API behind the proxy (SPEC §2.4): which requests it takes (listener, host, path
    /// prefix), where they go, and with whose token.
    public struct Route: Sendable, Equatable {
        public var name: String
        public var listen: ListenAddress
        /// A `Host` name, lowercased, without port; `nil`: any host.
        public var host: String?
        /// Starts with `/`; matched on a segment boundary.
        public var pathPrefix: String
        /// Whether the prefix is removed before the path is appended to `upstream.url`.
        public var stripPrefix: Bool
        public var upstream: Upstream
        /// The name of the identity whose token the requests carry.
        public var identity: String
        /// The route's own `retry`, or the top-level one.
        public var retry: Retry
        /// The route's own `requireHeader`, or the top-level one.
        public var requireHeader: String?

        /// The prefix as routes are compared and matched: without a trailing `/` (`""` for `/`),
        /// so that `/orders` and `/orders/` are one prefix.
        public var normalizedPrefix: String {
            var prefix = Substring(pathPrefix)
            while prefix.hasSuffix("/") { prefix = prefix.dropLast() }
            return String(prefix)
        }
    }

    public struct Upstream: Sendable, Equatable {
        /// Scheme, host, port and an optional path prefix; never a query or fragment.
        public var url: UpstreamURL
        public var connectTimeout: Duration
        public var readTimeout: Duration
        /// `upstream.tls`: a private CA, a client certificate, the name to verify.
        public var tls: TLS?
        /// `upstream.protocol` (SPEC §5): what the proxy speaks to it.
        public var `protocol`: UpstreamProtocol = .http1
    }

    /// `upstream.protocol` (SPEC §5).
    public enum UpstreamProtocol: String, Sendable, CaseIterable {
        case http1
        /// HTTP/2: by ALPN `h2` over TLS, with prior knowledge over plain http.
        case http2
        /// ALPN picks over TLS; plain http means `http1`.
        case auto
    }

    /// `tls` under `token` and `upstream` (SPEC §2.1). Verification is never turned off: these
    /// only say what to trust instead of the system store, and which certificate to present.
    public struct TLS: Sendable, Equatable {
        /// A PEM bundle trusted instead of the system's trust store.
        public var caFile: String?
        /// The client certificate (PEM chain) and its key, for mutual TLS.
        public var certificateFile: String?
        public var keyFile: String?
        /// The name the server's certificate must carry, when it is not the URL's host
        /// (`upstream` only).
        public var serverName: String?
    }

    public struct Token: Sendable, Equatable {
        public enum Grant: String, Sendable, CaseIterable {
            case refreshToken = "refresh_token", clientCredentials = "client_credentials"
            /// RFC 8693: a subject token (a file's, or another identity's) exchanged for this one.
            case tokenExchange = "token_exchange"

            /// The `grant_type` a token request sends.
            public var grantType: String {
                switch self {
                case .refreshToken, .clientCredentials: rawValue
                case .tokenExchange: "urn:ietf:params:oauth:grant-type:token-exchange"
                }
            }
        }

        /// Where a token exchange's `subject_token` comes from (SPEC §2.4).
        public enum Subject: Sendable, Equatable {
            /// A file read at every call (a projected service-account token, say).
            case file(String)
            /// Another identity's current access token, refreshed first when needed.
            case identity(String)
        }
        public enum ClientAuth: String, Sendable, CaseIterable {
            case basic, body, none
            /// RFC 7523 §2.2: a JWT signed with `clientKeyFile` for every call.
            case privateKeyJWT = "private_key_jwt"
            /// A ready-made assertion read from `clientAssertionFile` at every call (a projected
            /// Kubernetes service-account token, for workload identity federation).
            case clientAssertion = "client_assertion"
            /// RFC 8705: the client certificate of `token.tls` identifies the client.
            case tlsClientAuth = "tls_client_auth"
        }

        /// The token endpoint; empty until discovery finds it when only `issuer` is configured.
        public var endpoint: String
        /// The issuer whose metadata (OpenID Connect discovery, RFC 8414) names the endpoints
        /// the configuration leaves out.
        public var issuer: String?
        /// The authorization endpoint, for `tokenproxy login --browser`.
        public var authorizationEndpoint: String?
        /// RFC 8628's device authorization endpoint, for `tokenproxy login --device`.
        public var deviceEndpoint: String?
        /// RFC 7009's revocation endpoint, for `tokenproxy logout`.
        public var revocationEndpoint: String?
        public var grant: Grant
        public var clientID: String?
        public var clientSecret: ClientSecretSource?
        public var clientAuth: ClientAuth
        /// `private_key_jwt`: the PEM private key, read at every call, and the `kid` to name.
        public var clientKeyFile: String?
        public var clientKeyID: String?
        /// `client_assertion`: the file holding the assertion, read at every call.
        public var clientAssertionFile: String?
        public var scope: String?
        public var extraParams: [String: String]
        public var refreshBefore: Duration
        public var minValidity: Duration
        public var defaultLifetime: Duration
        public var store: String
        public var lockFile: String
        public var lockTimeout: Duration
        public var minRefreshInterval: Duration
        /// The refresh token's lifetime when the token response does not say (SPEC §2.1).
        public var refreshTokenLifetime: Duration?
        /// From this long before the refresh token expires, `/status`, `/metrics`, the log and
        /// systemd warn that a login will be needed.
        public var refreshTokenWarning: Duration
        /// An `http://` proxy for the calls to the issuer (CONNECT for https); else
        /// `HTTPS_PROXY` and `NO_PROXY` as curl reads them.
        public var proxy: String?
        /// `token.tls`: what the calls to the issuer trust and present (`tls_client_auth`).
        public var tls: TLS?
        /// How long one call to the token endpoint may take (connect included).
        public var requestTimeout: Duration
        /// The user name `tokenproxy credential git get` answers (SPEC §2.5); the token is the
        /// password.
        public var gitUsername = "oauth2"
        /// `grant: "token_exchange"` (RFC 8693): the subject and what is asked for.
        public var exchange: Exchange?

        public struct Exchange: Sendable, Equatable {
            public var subject: Subject
            public var subjectTokenType: String
            public var requestedTokenType: String?
            public var audience: String?
            public var resource: String?
        }

        /// The form fields that `extraParams` may not set, because the proxy sets them itself.
        public static let reservedParams: Set<String> = ["grant_type", "refresh_token", "client_id", "client_secret", "scope"]
        /// The form fields a token exchange sets from its own keys.
        public static let exchangeParams: Set<String> = ["subject_token", "subject_token_type", "requested_token_type", "audience", "resource"]
    }

    public struct Retry: Sendable, Equatable {
        public var attempts: Int
        public var backoff: Duration
        public var maxBackoff: Duration
        public var replayBuffer: Int
    }

    public struct Admin: Sendable, Equatable {
        public var listen: ListenAddress
        /// When set, `POST` and `PUT` need `Authorization: Bearer <this file's content>`.
        public var tokenFile: String?
    }

    /// SPEC §2.2: the guard against web pages in a browser on the same host (cross-site
    /// requests, DNS rebinding) and against callers that do not identify themselves.
    public struct Clients: Sendable, Equatable {
        public enum BrowserRequests: String, Sendable, CaseIterable { case refuse, allow }
        /// `Host` values accepted, lowercased; `nil` for the default (loopback names and the
        /// `listen` host, with or without the port).
        public var allowedHosts: [String]?
        public var browserRequests: BrowserRequests
        /// `Origin` values accepted while browser requests are refused, lowercased.
        public var allowedOrigins: [String]
        /// A header every request must carry, with any value.
        public var requireHeader: String?
    }

    public struct Limits: Sendable, Equatable {
        public var headerTimeout: Duration
        public var idleTimeout: Duration
        public var maxConnections: Int
        public var maxHeaderBytes: Int
        public var maxUriBytes: Int
        /// HTTP/2 streams one client connection may have open (SPEC §5), announced in SETTINGS.
        public var maxConcurrentStreams: Int
        /// Stream resets a client may cause per second before it gets `GOAWAY(ENHANCE_YOUR_CALM)`.
        public var maxResetsPerSecond: Int
    }

    /// SPEC §2.3: the store and lock of every host naming the same database and `name`.
    public struct Fleet: Sendable, Equatable {
        public var postgres: PostgresURL
        /// The database password, read at each connection; `nil`: none (trust or peer auth).
        public var passwordFile: String?
        /// The row that hosts sharing one token set share.
        public var name: String
        /// The AES-256 key that seals the row (base64 of 32 bytes).
        public var encryptionKeyFile: String
        /// Keys rotated out: they still open rows sealed before the rotation, never seal.
        public var previousEncryptionKeyFiles: [String]
        /// TLS to the database: present means required and verified (against `caFile`, else
        /// the system's trust store).
        public var tls: TLS?

        public struct TLS: Sendable, Equatable {
            public var caFile: String?
        }
    }

    public struct Faults: Sendable, Equatable {
        public var enabled: Bool
        public var upstream401Percent: Double
    }

    public struct Log: Sendable, Equatable {
        public enum Format: String, Sendable, CaseIterable { case json, text }
        public var level: String
        public var format: Format
    }
}

/// Where the client secret comes from. It is read when the token endpoint is called, so that a
/// rotated secret file is picked up without a restart.
public enum ClientSecretSource: Sendable, Equatable, CustomStringConvertible {
    case file(String)
    case environment(String)

    public var description: String {
        switch self {
        case .file(let path): "file \(path) (token.clientSecretFile)"
        case .environment(let name): "environment variable \(name) (token.clientSecretEnv)"
        }
    }
}
