import FoundationEssentials
import Glibc
import NIOSSL

extension Configuration {
    /// The configuration path that `--config` falls back to: `$TOKENPROXY_CONFIG`, then
    /// `/etc/tokenproxy/config.json`.
    public static func defaultPath(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let path = environment["TOKENPROXY_CONFIG"], !path.isEmpty { return path }
        return "/etc/tokenproxy/config.json"
    }

    /// Reads and validates the file at `path`.
    /// - Throws: ``ConfigurationError`` listing every problem found.
    public static func load(path: String) throws(ConfigurationError) -> Configuration {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw ConfigurationError(path: path, problems: [
                .init(keyPath: "", message: "cannot read \(path): \(Self.reason(error)); pass --config PATH or set TOKENPROXY_CONFIG"),
            ])
        }
        return try parse(data, path: path)
    }

    /// Validates configuration JSON; `path` names the file in messages and anchors relative paths.
    public static func parse(_ data: Data, path: String) throws(ConfigurationError) -> Configuration {
        let document: JSONValue
        do {
            document = try JSONValue.parse(data)
        } catch let error as DecodingError {
            throw ConfigurationError(path: path, problems: [.init(keyPath: "", message: "not valid JSON: \(error.shortDescription)")])
        } catch {
            throw ConfigurationError(path: path, problems: [.init(keyPath: "", message: "not valid JSON")])
        }
        guard case .object(let root) = document else {
            throw ConfigurationError(path: path, problems: [.init(keyPath: "", message: "the top level must be a JSON object")])
        }
        let problems = ConfigurationReader.ProblemList()
        let reader = ConfigurationReader(object: root, problems: problems)
        let folder = URL(fileURLWithPath: path).deletingLastPathComponent().path
        let configuration = read(reader, folder: folder, sourcePath: path)
        reader.finish()
        guard problems.items.isEmpty else { throw ConfigurationError(path: path, problems: problems.items) }
        return configuration
    }

    private static func read(_ root: ConfigurationReader, folder: String, sourcePath: String) -> Configuration {
        func resolve(_ path: String) -> String {
            path.hasPrefix("/") ? path : URL(fileURLWithPath: folder).appendingPathComponent(path).standardized.path
        }
        func listenAddress(_ reader: ConfigurationReader, _ key: String, default defaultValue: String, mayBeExposed: Bool) -> ListenAddress {
            let text = reader.string(key, default: defaultValue) ?? defaultValue
            switch ListenAddress.parse(text) {
            case .failure(let error):
                reader.report(key, "\"\(text)\": \(error.reason)")
                return .tcp(host: "127.0.0.1", port: 0)
            case .success(.unix(let socketPath)):
                return .unix(path: resolve(socketPath))
            case .success(let address):
                if !address.isLoopback, !mayBeExposed {
                    reader.report(key, "\"\(text)\" is not a loopback address; tokenproxy attaches credentials to every request it forwards, so it listens on 127.0.0.1, [::1] or a unix socket unless \"allowNonLoopback\": true is set")
                }
                return address
            }
        }

        let allowNonLoopback = root.bool("allowNonLoopback", default: false)
        let listen = listenAddress(root, "listen", default: "127.0.0.1:8787", mayBeExposed: allowNonLoopback)

        let hasRoutes = root.isPresent("routes")
        let topUpstream = root.object("upstream").map { readUpstream($0, resolve: resolve) }
        if topUpstream == nil, !root.isPresent("upstream"), !hasRoutes {
            root.report("upstream", "is required: an object with at least \"url\" (or set routes)")
        }
        var identities: [String: Token] = [:]
        if let reader = root.object("token") {
            identities[defaultIdentity] = readToken(reader, name: defaultIdentity, resolve: resolve)
        } else if !root.isPresent("token"), !root.isPresent("identities") {
            root.report("token", "is required: an object with at least \"endpoint\" (or set identities)")
        }
        if let reader = root.object("identities") {
            if reader.keys.isEmpty, !root.isPresent("token") {
                root.report("identities", "is empty and there is no token: no request could get a token; add an identity")
            }
            for name in reader.keys {
                guard let identity = reader.object(name) else { continue }
                if !Self.isValidName(name) {
                    identity.report("", "the identity name \"\(name)\" must be 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'; it names the identity's store file")
                } else if name == defaultIdentity, identities[name] != nil {
                    identity.report("", "the top-level token is already the identity \"default\"; set one or the other")
                }
                identities[name] = readToken(identity, name: name, resolve: resolve)
            }
        }
        let retry = readRetry(root)
        let clients = readClients(root)
        var routes: [Route] = []
        if let upstream = topUpstream {
            routes.append(Route(
                name: defaultIdentity, listen: listen, host: nil, pathPrefix: "/", stripPrefix: false, upstream: upstream, identity: defaultIdentity,
                retry: retry, requireHeader: clients.requireHeader))
        }
        let (fileRoutes, positions, explicitListens) = readRoutes(
            root, listen: listen, allowNonLoopback: allowNonLoopback, retry: retry, requireHeader: clients.requireHeader, resolve: resolve, listenAddress: listenAddress)
        routes.insert(contentsOf: fileRoutes, at: 0)

        var admin: Admin? = Admin(listen: .tcp(host: "127.0.0.1", port: 8788), tokenFile: nil)
        if case .null? = root.value("admin") {
            admin = nil
        } else if let reader = root.object("admin") {
            admin = Admin(listen: listenAddress(reader, "listen", default: "127.0.0.1:8788", mayBeExposed: false), tokenFile: reader.string("tokenFile").map(resolve))
            reader.finish()
        }

        var faults = Faults(enabled: false, upstream401Percent: 0)
        if let reader = root.object("faults") {
            faults.enabled = reader.bool("enabled", default: false)
            faults.upstream401Percent = reader.number("upstream401Percent", default: 0, range: 0...100)
            reader.finish()
        }

        var log = Log(level: "info", format: .json)
        if let reader = root.object("log") {
            let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
            if let level = reader.string("level") {
                if levels.contains(level) { log.level = level } else {
                    reader.report("level", "\"\(level)\" is not one of \(levels.joined(separator: ", "))")
                }
            }
            log.format = reader.choice("format", default: .json)
            reader.finish()
        }

        let drainTimeout = root.duration("drainTimeout", default: .seconds(10))
        let fleet = readFleet(root, resolve: resolve)
        checkRoutesAndIdentities(root, routes: routes, positions: positions, explicitListens: explicitListens, identities: identities, admin: admin, fleet: fleet)
        if routes.isEmpty {
            // Only after a problem was reported: a configuration always has a route.
            routes.append(Route(
                name: defaultIdentity, listen: listen, host: nil, pathPrefix: "/", stripPrefix: false,
                upstream: Upstream(url: UpstreamURL(scheme: .http, host: "127.0.0.1", port: 80, pathPrefix: ""), connectTimeout: .seconds(2), readTimeout: .seconds(60), tls: nil),
                identity: defaultIdentity, retry: retry, requireHeader: nil))
        }
        var otherFiles = [sourcePath: "the configuration file"]
        if let tokenFile = admin?.tokenFile { otherFiles[tokenFile] = "admin.tokenFile" }
        if let fleet {
            if let passwordFile = fleet.passwordFile { otherFiles[passwordFile] = "fleet.passwordFile" }
            for keyFile in [fleet.encryptionKeyFile] + fleet.previousEncryptionKeyFiles { otherFiles[keyFile] = "a fleet encryption key file" }
        }
        let sinks = readSinks(root, identities: identities, otherFiles: otherFiles, resolve: resolve)
        if identities.isEmpty { identities[defaultIdentity] = readToken(nil, name: defaultIdentity, resolve: resolve) }
        var configuration = Configuration(
            listen: listen, allowNonLoopback: allowNonLoopback, identities: identities, routes: routes, retry: retry,
            admin: admin, faults: faults, log: log, clients: clients, limits: readLimits(root),
            fleet: fleet, drainTimeout: drainTimeout, sourcePath: sourcePath, sinks: sinks
        )
        configuration.telemetry = readTelemetry(root)
        return configuration
    }

    /// `upstream`, top-level or a route's.
    static func readUpstream(_ reader: ConfigurationReader, resolve: (String) -> String) -> Upstream {
        var upstream = Upstream(
            url: UpstreamURL(scheme: .http, host: "127.0.0.1", port: 80, pathPrefix: ""),
            connectTimeout: .seconds(2),
            readTimeout: .seconds(60),
            tls: nil
        )
        if let text = reader.string("url", required: true) {
            switch UpstreamURL.parse(text) {
            case .success(let url): upstream.url = url
            case .failure(let error): reader.report("url", "\"\(text)\" \(error.reason)")
            }
        }
        upstream.connectTimeout = reader.duration("connectTimeout", default: .seconds(2), atLeast: .milliseconds(1))
        upstream.readTimeout = reader.duration("readTimeout", default: .seconds(60), atLeast: .milliseconds(1))
        upstream.tls = readTLS(reader, serverName: true, resolve: resolve)
        upstream.protocol = reader.choice("protocol", default: .http1)
        reader.finish()
        return upstream
    }

    /// `token`, or one of `identities` (SPEC §2.4): `reader` is its object, `nil` for defaults only.
    static func readToken(_ reader: ConfigurationReader?, name: String, resolve: (String) -> String) -> Token {
        let storeBase = name == defaultIdentity ? "token" : name
        var token = Token(
            endpoint: "", issuer: nil, authorizationEndpoint: nil, deviceEndpoint: nil, revocationEndpoint: nil, grant: .refreshToken, clientID: nil, clientSecret: nil, clientAuth: .basic,
            clientKeyFile: nil, clientKeyID: nil, clientAssertionFile: nil, scope: nil,
            extraParams: [:], refreshBefore: .seconds(300), minValidity: .seconds(10), defaultLifetime: .seconds(1800),
            store: "/var/lib/tokenproxy/\(storeBase).json", lockFile: "/var/lib/tokenproxy/\(storeBase).lock",
            lockTimeout: .seconds(15), minRefreshInterval: .seconds(1), refreshTokenLifetime: nil, refreshTokenWarning: .seconds(86_400),
            proxy: nil, tls: nil, requestTimeout: .seconds(10), exchange: nil
        )
        guard let reader else { return token }
        /// Messages name the identity's keys as the file spells them.
        let keys = reader.keyPath
        /// An endpoint of the issuer: https, or http to a loopback host.
        func endpointURL(_ key: String, required: Bool) -> String? {
            guard let text = reader.string(key, required: required) else { return nil }
            switch UpstreamURL.parse(text) {
            case .failure(let error): reader.report(key, "\"\(text)\" \(error.reason)")
            case .success(let url):
                let loopback = ListenAddress.tcp(host: url.host, port: url.port).isLoopback
                if url.scheme == .http, !loopback {
                    reader.report(key, "plain http would send credentials in clear text; use https (http is accepted for loopback hosts only)")
                }
            }
            return text
        }
        token.issuer = endpointURL("issuer", required: false).map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
        if let endpoint = endpointURL("endpoint", required: false) {
            token.endpoint = endpoint
        } else if token.issuer == nil {
            reader.report("endpoint", "is required (or set token.issuer, and the endpoints are discovered)")
        }
        token.authorizationEndpoint = endpointURL("authorizationEndpoint", required: false)
        token.deviceEndpoint = endpointURL("deviceEndpoint", required: false)
        token.revocationEndpoint = endpointURL("revocationEndpoint", required: false)
        token.grant = reader.choice("grant", default: .refreshToken)
        token.clientID = reader.string("clientId")
        let secretFile = reader.string("clientSecretFile")
        let secretEnv = reader.string("clientSecretEnv")
        switch (secretFile, secretEnv) {
        case (let file?, nil): token.clientSecret = .file(resolve(file))
        case (nil, let name?): token.clientSecret = .environment(name)
        case (let file?, _?):
            token.clientSecret = .file(resolve(file))
            reader.report("clientSecretEnv", "set either token.clientSecretFile or token.clientSecretEnv, not both")
        case (nil, nil): break
        }
        token.tls = readTLS(reader, serverName: false, resolve: resolve)
        if let proxy = reader.string("proxy") {
            if EgressProxy.parse(proxy) == nil { reader.report("proxy", "\"\(proxy)\" is not an http://HOST:PORT proxy address") }
            token.proxy = proxy
        }
        token.clientKeyFile = reader.string("clientKeyFile").map(resolve)
        token.clientKeyID = reader.string("clientKeyId")
        token.clientAssertionFile = reader.string("clientAssertionFile").map(resolve)
        token.clientAuth = reader.choice("clientAuth", default: token.clientSecret == nil ? .none : .basic)
        let auth = "\(keys).clientAuth \"\(token.clientAuth.rawValue)\""
        if token.clientAuth != .none, token.clientID == nil { reader.report("clientId", "is required when \(auth)") }
        switch token.clientAuth {
        case .basic, .body:
            if token.clientSecret == nil { reader.report("clientSecretFile", "\(auth) needs a secret: set token.clientSecretFile or token.clientSecretEnv") }
        case .privateKeyJWT:
            if let path = token.clientKeyFile {
                // The key's form is checked now; a key that cannot be read yet may be mounted later.
                if let pem = try? String(contentsOfFile: path, encoding: .utf8), let problem = ClientAssertion.problem(with: pem, path: path) {
                    reader.report("clientKeyFile", problem)
                }
            } else {
                reader.report("clientKeyFile", "\(auth) needs the PEM private key that signs the assertions")
            }
        case .clientAssertion:
            if token.clientAssertionFile == nil { reader.report("clientAssertionFile", "\(auth) needs the file that holds the assertion") }
        case .tlsClientAuth:
            if token.tls?.certificateFile == nil { reader.report("tls", "\(auth) needs the client certificate: set token.tls.certificateFile and token.tls.keyFile") }
        case .none:
            break
        }
        if token.clientAuth != .privateKeyJWT, token.clientKeyFile != nil { reader.report("clientKeyFile", "is used only with \(keys).clientAuth \"private_key_jwt\"") }
        if token.clientAuth != .clientAssertion, token.clientAssertionFile != nil { reader.report("clientAssertionFile", "is used only with \(keys).clientAuth \"client_assertion\"") }
        if token.grant == .clientCredentials, token.clientAuth == .none {
            reader.report("clientAuth", "the client_credentials grant needs client authentication: \"basic\", \"body\", \"private_key_jwt\" or \"client_assertion\"")
        }
        token.scope = reader.string("scope")
        token.extraParams = reader.stringMap("extraParams")
        let reserved = token.grant == .tokenExchange ? Token.reservedParams.union(Token.exchangeParams) : Token.reservedParams
        for name in token.extraParams.keys.sorted() where reserved.contains(name) {
            reader.report("extraParams.\(name)", "is set by tokenproxy itself and may not be overridden")
        }
        token.refreshBefore = reader.duration("refreshBefore", default: token.refreshBefore, atLeast: .seconds(1))
        token.minValidity = reader.duration("minValidity", default: token.minValidity)
        if token.minValidity >= token.refreshBefore {
            reader.report("minValidity", "(\(token.minValidity.configString)) must be shorter than \(keys).refreshBefore (\(token.refreshBefore.configString)), or no request could be served while the token is refreshed ahead of time")
        }
        token.defaultLifetime = reader.duration("defaultLifetime", default: token.defaultLifetime, atLeast: .seconds(1))
        if let store = reader.string("store") {
            token.store = resolve(store)
            token.lockFile = (token.store.hasSuffix(".json") ? String(token.store.dropLast(5)) : token.store) + ".lock"
        }
        if let lockFile = reader.string("lockFile") { token.lockFile = resolve(lockFile) }
        if token.lockFile == token.store { reader.report("lockFile", "must not be the store file itself") }
        token.lockTimeout = reader.duration("lockTimeout", default: token.lockTimeout, atLeast: .milliseconds(1))
        token.minRefreshInterval = reader.duration("minRefreshInterval", default: token.minRefreshInterval)
        if reader.isPresent("refreshTokenLifetime") {
            token.refreshTokenLifetime = reader.duration("refreshTokenLifetime", default: .seconds(86_400), atLeast: .seconds(1))
        }
        token.refreshTokenWarning = reader.duration("refreshTokenWarning", default: token.refreshTokenWarning)
        token.requestTimeout = reader.duration("requestTimeout", default: token.requestTimeout, atLeast: .milliseconds(100))
        token.exchange = readExchange(reader, grant: token.grant, resolve: resolve)
        if let username = reader.string("gitUsername") {
            // git's credential protocol is one key=value per line.
            if username.isEmpty || username.contains(where: { $0 == "\n" || $0 == "\r" || $0 == "\0" }) {
                reader.report("gitUsername", "must be a non-empty name without line breaks or NUL (git's credential protocol is line based)")
            }
            token.gitUsername = username
        }
        reader.finish()
        return token
    }

    private static func readClients(_ root: ConfigurationReader) -> Clients {
        let clients = Clients(
            allowedHosts: root.stringList("allowedHosts")?.map { $0.lowercased() },
            browserRequests: root.choice("browserRequests", default: .refuse),
            allowedOrigins: (root.stringList("allowedOrigins") ?? []).map { $0.lowercased() },
            requireHeader: readRequireHeader(root)
        )
        if clients.allowedHosts?.isEmpty == true { root.report("allowedHosts", "an empty list would refuse every request; leave the key out for the default") }
        return clients
    }

    /// `requireHeader`, top-level or a route's: a header name.
    static func readRequireHeader(_ reader: ConfigurationReader) -> String? {
        guard let name = reader.string("requireHeader") else { return nil }
        guard name.utf8.allSatisfy({ HeaderName.isTokenCharacter($0) }) else {
            reader.report("requireHeader", "\"\(name)\" is not a valid header name")
            return nil
        }
        return name
    }

    private static func readLimits(_ root: ConfigurationReader) -> Limits {
        var limits = Limits(
            headerTimeout: .seconds(10), idleTimeout: .seconds(75), maxConnections: 4096, maxHeaderBytes: 65_536, maxUriBytes: 8192,
            maxConcurrentStreams: 100, maxResetsPerSecond: 100)
        guard let reader = root.object("limits") else { return limits }
        limits.headerTimeout = reader.duration("headerTimeout", default: limits.headerTimeout, atLeast: .milliseconds(10))
        limits.idleTimeout = reader.duration("idleTimeout", default: limits.idleTimeout, atLeast: .milliseconds(10))
        limits.maxConnections = reader.integer("maxConnections", default: limits.maxConnections, range: 1...1_000_000)
        limits.maxHeaderBytes = reader.integer("maxHeaderBytes", default: limits.maxHeaderBytes, range: 1024...(1 << 20))
        limits.maxUriBytes = reader.integer("maxUriBytes", default: limits.maxUriBytes, range: 64...(1 << 20))
        limits.maxConcurrentStreams = reader.integer("maxConcurrentStreams", default: limits.maxConcurrentStreams, range: 1...10_000)
        limits.maxResetsPerSecond = reader.integer("maxResetsPerSecond", default: limits.maxResetsPerSecond, range: 1...100_000)
        reader.finish()
        return limits
    }

    /// `tls` (SPEC §2.1): files checked for their form now, so that a wrong file is a
    /// configuration error rather than a failed handshake later.
    private static func readTLS(_ parent: ConfigurationReader, serverName allowServerName: Bool, resolve: (String) -> String) -> TLS? {
        guard let reader = parent.object("tls") else { return nil }
        var tls = TLS(
            caFile: reader.string("caFile").map(resolve), certificateFile: reader.string("certificateFile").map(resolve),
            keyFile: reader.string("keyFile").map(resolve), serverName: allowServerName ? reader.string("serverName") : nil
        )
        if let caFile = tls.caFile, (try? NIOSSLCertificate.fromPEMFile(caFile))?.isEmpty != false {
            reader.report("caFile", "\(caFile) is not a readable PEM file of certificates")
        }
        switch (tls.certificateFile, tls.keyFile) {
        case (let certificate?, let key?):
            if (try? NIOSSLCertificate.fromPEMFile(certificate))?.isEmpty != false { reader.report("certificateFile", "\(certificate) is not a readable PEM certificate") }
            if (try? NIOSSLPrivateKey(file: key, format: .pem)) == nil { reader.report("keyFile", "\(key) is not a readable PEM private key") }
        case (nil, nil):
            break
        default:
            reader.report(tls.certificateFile == nil ? "certificateFile" : "keyFile", "a client certificate needs both certificateFile and keyFile")
            tls.certificateFile = nil
            tls.keyFile = nil
        }
        if tls.serverName?.isEmpty == true { reader.report("serverName", "must not be empty") }
        reader.finish()
        return tls
    }

    /// `fleet` (SPEC §2.3). The password and key files are read and their form checked (a key
    /// that is not 32 bytes is a configuration error), but nothing connects.
    private static func readFleet(_ root: ConfigurationReader, resolve: (String) -> String) -> Fleet? {
        guard let reader = root.object("fleet") else { return nil }
        var fleet = Fleet(
            postgres: PostgresURL(endpoint: .tcp(host: "127.0.0.1", port: 5432), username: "tokenproxy", database: "tokenproxy"),
            passwordFile: nil, name: "", encryptionKeyFile: "", previousEncryptionKeyFiles: [], tls: nil
        )
        if let text = reader.string("postgres", required: true) {
            switch PostgresURL.parse(text) {
            case .success(let url): fleet.postgres = url
            case .failure(let error): reader.report("postgres", "\"\(PostgresURL.redacted(text))\" \(error.reason)")
            }
        }
        if let name = reader.string("name", required: true) {
            if name.isEmpty || name.utf8.count > 200 || !name.utf8.allSatisfy({ (0x21...0x7E).contains($0) }) {
                reader.report("name", "must be 1 to 200 visible ASCII characters (the fleet's row; every host sharing the token names the same)")
            }
            fleet.name = name
        }
        if let path = reader.string("passwordFile").map(resolve) {
            fleet.passwordFile = path
            if case .failure(let problem) = PostgresConnector.readPassword(path: path) { reader.report("passwordFile", problem.message) }
        }
        func checkKey(_ key: String, _ path: String) {
            if case .failure(let problem) = TokenSealing.readKey(path: path) { reader.report(key, problem.message) }
        }
        if let path = reader.string("encryptionKeyFile", required: true).map(resolve) {
            fleet.encryptionKeyFile = path
            checkKey("encryptionKeyFile", path)
        }
        fleet.previousEncryptionKeyFiles = (reader.stringList("previousEncryptionKeyFiles") ?? []).map(resolve)
        for (index, path) in fleet.previousEncryptionKeyFiles.enumerated() {
            checkKey("previousEncryptionKeyFiles[\(index)]", path)
        }
        if let tls = reader.object("tls") {
            fleet.tls = Fleet.TLS(caFile: tls.string("caFile").map(resolve))
            if let caFile = fleet.tls?.caFile, access(caFile, R_OK) != 0 {
                tls.report("caFile", "cannot read \(caFile): \(String(cString: strerror(errno)))")
            }
            tls.finish()
        }
        reader.finish()
        return fleet
    }

    private static func readRetry(_ root: ConfigurationReader) -> Retry {
        let defaults = Retry(attempts: 3, backoff: .milliseconds(100), maxBackoff: .seconds(2), replayBuffer: 1_048_576)
        guard let reader = root.object("retry") else { return defaults }
        return readRetry(reader, defaults: defaults)
    }

    /// A `retry` object; keys it leaves out keep `defaults` (a route's: the top-level values).
    static func readRetry(_ reader: ConfigurationReader, defaults: Retry) -> Retry {
        var retry = defaults
        retry.attempts = reader.integer("attempts", default: defaults.attempts, range: 1...10)
        retry.backoff = reader.duration("backoff", default: retry.backoff)
        retry.maxBackoff = reader.duration("maxBackoff", default: retry.maxBackoff)
        if retry.maxBackoff < retry.backoff {
            reader.report("maxBackoff", "(\(retry.maxBackoff.configString)) must not be shorter than retry.backoff (\(retry.backoff.configString))")
        }
        retry.replayBuffer = reader.integer("replayBuffer", default: retry.replayBuffer, range: 0...(64 << 20))
        reader.finish()
        return retry
    }

    static func reason(_ error: any Error) -> String {
        if let posix = error as? POSIXError { return String(cString: strerror(posix.code.rawValue)) }
        guard let cocoa = error as? CocoaError else { return "\(error)" }
        switch cocoa.code {
        case .fileReadNoSuchFile: return "no such file"
        case .fileReadNoPermission: return "permission denied"
        default:
            if let posix = cocoa.underlying as? POSIXError { return String(cString: strerror(posix.code.rawValue)) }
            return "\(cocoa.code)"
        }
    }
}

extension Configuration {
    /// Problems that do not make the file invalid but will stop tokenproxy from working as it is
    /// now (a secret file that cannot be read, a store folder that does not exist).
    public func environmentWarnings(environment: [String: String] = ProcessInfo.processInfo.environment) -> [ConfigurationProblem] {
        var warnings: [ConfigurationProblem] = []
        for name in identityNames {
            let token = identities[name]!
            let keys = name == Self.defaultIdentity ? "token" : "identities.\(name)"
            switch token.clientSecret {
            case .file(let path)?:
                if !FileManager.default.isReadableFile(atPath: path) {
                    warnings.append(.init(keyPath: "\(keys).clientSecretFile", message: "\(path) cannot be read now; create it (mode 0600) before starting tokenproxy"))
                }
            case .environment(let variable)?:
                if environment[variable] == nil {
                    warnings.append(.init(keyPath: "\(keys).clientSecretEnv", message: "the environment variable \(variable) is not set in this shell"))
                }
            case nil:
                break
            }
            if case .file(let path)? = token.exchange?.subject, !FileManager.default.isReadableFile(atPath: path) {
                warnings.append(.init(keyPath: "\(keys).subjectTokenFile", message: "\(path) cannot be read now; the token exchange reads it at every call"))
            }
            let storeFolder = URL(fileURLWithPath: token.store).deletingLastPathComponent().path
            if !FileManager.default.fileExists(atPath: storeFolder) {
                warnings.append(.init(keyPath: "\(keys).store", message: "the folder \(storeFolder) does not exist yet; tokenproxy creates it (mode 0700) on first use"))
            }
        }
        return warnings
    }
}
