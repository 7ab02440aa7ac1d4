import FoundationEssentials
import Logging
import NIOConcurrencyHelpers

extension TokenBroker {
    /// What the user is shown to sign in on another device (RFC 8628 §3.3).
    public struct DeviceAuthorization: Sendable {
        public var userCode: String
        public var verificationURI: String
        public var verificationURIComplete: String?
        public var expiresIn: Duration
    }

    /// `tokenproxy login --device` (RFC 8628): asks the device authorization endpoint for a code,
    /// hands it to `show`, polls the token endpoint as ``DevicePolling`` says, and stores the
    /// tokens through the lock, so that a running proxy sharing the store picks them up.
    public func loginWithDevice(show: @Sendable (DeviceAuthorization) -> Void) async throws(LoginError) -> TokenSet {
        let (deviceEndpoint, credentials) = try await prepareLogin(\.deviceEndpoint, key: "token.deviceEndpoint", naming: "device authorization endpoint")
        var fields: [(String, String)] = []
        if let scope = configuration.scope { fields.append(("scope", scope)) }
        for name in configuration.extraParams.keys.sorted() { fields.append((name, configuration.extraParams[name]!)) }
        // RFC 8628 §3.1 asks for client_id in the form; the other client authentications add it.
        if configuration.clientAuth == .basic, let clientID = configuration.clientID { fields.append(("client_id", clientID)) }
        let answer: TokenEndpointClient.FormAnswer
        switch await endpoint.post(fields, to: deviceEndpoint, credentials: credentials) {
        case .failure(let failure): throw .unavailable("the device authorization endpoint \(deviceEndpoint) \(failure.reason)")
        case .success(let reply): answer = reply
        }
        let object = answer.object ?? [:]
        func text(_ key: String) -> String? {
            if case .string(let value)? = object[key], !value.isEmpty { value } else { nil }
        }
        func seconds(_ key: String) -> Double? {
            if case .number(let value)? = object[key], value.isFinite, value > 0 { value } else { nil }
        }
        guard answer.status == 200, let deviceCode = text("device_code"), let userCode = text("user_code"),
            let verificationURI = text("verification_uri") ?? text("verification_url")
        else {
            let said = text("error").map { "refused the request with \($0)\(text("error_description").map { " (\($0))" } ?? "")" } ?? "answered HTTP \(answer.status) without a device code"
            throw answer.status >= 500 ? .unavailable("the device authorization endpoint \(deviceEndpoint) \(said)") : .misconfigured("the device authorization endpoint \(deviceEndpoint) \(said); check token.clientId, token.scope and token.deviceEndpoint")
        }
        let lifetime = min(seconds("expires_in") ?? 600, 3600)
        show(DeviceAuthorization(
            userCode: userCode, verificationURI: verificationURI, verificationURIComplete: text("verification_uri_complete"),
            expiresIn: Duration(timeInterval: lifetime)
        ))
        var polling = DevicePolling(interval: Duration(timeInterval: min(seconds("interval") ?? 5, 60)), expiresAt: now() + lifetime)
        var action = polling.start()
        let grant = [("grant_type", "urn:ietf:params:oauth:grant-type:device_code"), ("device_code", deviceCode)]
        while true {
            switch action {
            case .finished(let tokens):
                try await storeLogin(tokens)
                return tokens
            case .fail(let error):
                throw error
            case .poll(let pause):
                do {
                    try await Task.sleep(for: pause)
                } catch {
                    throw .unavailable("the login was cancelled")
                }
                let answer = await pollDevice(grant, credentials: credentials)
                if case .unanswered(let reason) = answer { logger.warning("device login: polling failed; trying again", metadata: ["reason": "\(reason)"]) }
                action = polling.next(after: answer, now: now())
            }
        }
    }

    private func pollDevice(_ grant: [(String, String)], credentials: TokenCredentials) async -> DevicePolling.Answer {
        switch await endpoint.post(grant, to: configuration.endpoint, credentials: credentials) {
        case .failure(let failure):
            return .unanswered("the token endpoint \(configuration.endpoint) \(failure.reason)")
        case .success(let answer):
            if answer.status == 200 {
                switch TokenResponse.interpret(status: 200, retryAfter: nil, body: answer.body, receivedAt: now(), defaultLifetime: configuration.defaultLifetime) {
                case .granted(let tokens): return .granted(tokens)
                case .transient(let reason, _): return .unanswered("the token endpoint \(configuration.endpoint) \(reason)")
                case .refused(let refusal): return .refused(refusal.message(configuration))
                }
            }
            let error: String? = if case .string(let code)? = answer.object?["error"] { code } else { nil }
            switch error {
            case "authorization_pending": return .authorizationPending
            case "slow_down": return .slowDown
            case "access_denied": return .accessDenied
            case "expired_token": return .expiredToken
            case let code? where (400...499).contains(answer.status):
                return .refused("the token endpoint \(configuration.endpoint) refused the device code with \(code)")
            default:
                return .unanswered("the token endpoint \(configuration.endpoint) answered HTTP \(answer.status)")
            }
        }
    }

    /// What every login needs first: the endpoint it starts at (configured or discovered), a
    /// client id, and the client's credentials.
    private func prepareLogin(
        _ endpointKey: KeyPath<Configuration.Token, String?>, key: String, naming: String
    ) async throws(LoginError) -> (String, TokenCredentials) {
        do {
            try await discoverEndpoints()
        } catch {
            throw .unavailable(error.description)
        }
        guard let url = configuration[keyPath: endpointKey] else {
            throw .misconfigured("\(key) is not set\(configuration.issuer.map { " and the metadata of \($0) names none" } ?? ""): name the issuer's \(naming)")
        }
        guard configuration.clientID != nil else { throw .misconfigured("token.clientId is required for a login") }
        do {
            return (url, try endpoint.credentials(refreshToken: nil))
        } catch {
            throw .misconfigured(error.description)
        }
    }

    /// Stores what a login obtained, through the lock, in place of whatever the store held.
    func storeLogin(_ obtained: TokenSet) async throws(LoginError) {
        var tokens = obtained
        configuration.stampRefreshExpiry(&tokens, now: now())
        await finishWrites()
        do throws(TokenBrokerError) {
            let lock = try await takeLock()
            defer { lock.release() }
            let stored = try await readStoreVersion(authoritative: true)
            guard case .written = try await write(tokens, replacing: stored.version) else {
                throw TokenBrokerError.unavailable(reason: "the token store \(storage.name) changed while it was being written; log in again", retryAfter: nil)
            }
        } catch {
            if case .misconfigured(let reason) = error { throw .misconfigured(reason) }
            throw .unavailable(error.description)
        }
        gate.replaced(by: tokens)
        publishCurrent()
        logger.info("login stored a new refresh token", metadata: ["store": "\(storage.name)"])
    }
}

extension TokenBroker {
    /// `tokenproxy login --browser`: the authorization code grant with PKCE S256 and a loopback
    /// redirect on an ephemeral port (RFC 7636, RFC 8252 §7.3). `show` gets the address to open;
    /// a redirect whose `state` does not match is answered 400 and the wait goes on, at most
    /// `timeout`. The tokens are stored through the lock.
    public func loginWithBrowser(timeout: Duration, show: @Sendable (String) -> Void) async throws(LoginError) -> TokenSet {
        let (authorizationEndpoint, credentials) = try await prepareLogin(\.authorizationEndpoint, key: "token.authorizationEndpoint", naming: "authorization endpoint")
        let (redirects, delivery) = AsyncStream<BrowserLogin.Redirect>.makeStream()
        let current = NIOLockedValueBox<BrowserLogin?>(nil)
        let listener: LoopbackRedirectListener
        do {
            listener = try await LoopbackRedirectListener.start { target in
                guard let login = current.withLockedValue({ $0 }) else { return .init(status: .serviceUnavailable, page: "not ready") }
                let (path, query) = BrowserLogin.query(of: target)
                let redirect = login.interpret(path: path, query: query)
                switch redirect {
                case .code:
                    delivery.yield(redirect)
                    return .init(status: .ok, page: "Signed in to tokenproxy. You may close this tab.")
                case .error(let reason):
                    delivery.yield(redirect)
                    return .init(status: .ok, page: "The sign-in did not complete: \(reason)")
                case .ignored(let reason):
                    return .init(status: .badRequest, page: reason)
                }
            }
        } catch {
            throw .unavailable("cannot listen on 127.0.0.1 for the redirect: \(error)")
        }
        let login = BrowserLogin(redirectPort: listener.port)
        current.withLockedValue { $0 = login }
        show(login.authorizationURL(endpoint: authorizationEndpoint, configuration: configuration))
        let redirect: BrowserLogin.Redirect? = await withTaskGroup(of: BrowserLogin.Redirect?.self) { group in
            group.addTask {
                for await redirect in redirects { return redirect }
                return nil
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        delivery.finish()
        await listener.stop()
        switch redirect {
        case nil:
            throw .unavailable("no sign-in reached http://127.0.0.1:\(listener.port)/callback within \(timeout.configString); run `tokenproxy login --browser` again")
        case .error(let reason)?, .ignored(let reason)?:
            throw .refused(reason)
        case .code(let code)?:
            switch await endpoint.requestToken(credentials, grant: login.exchange(code: code)) {
            case .granted(let tokens):
                try await storeLogin(tokens)
                return tokens
            case .refused(let refusal):
                throw .refused(refusal.message(configuration))
            case .transient(let reason, _):
                throw .unavailable(reason)
            }
        }
    }
}

extension TokenBroker {
    /// Puts a refresh token obtained elsewhere into the store, through the lock, in place of
    /// whatever it held (`tokenproxy login --refresh-token-file`). No endpoint call is made; a
    /// running proxy sharing the store picks it up at its next need.
    public func importRefreshToken(_ refreshToken: String) async throws(TokenBrokerError) {
        await finishWrites()
        let lock = try await takeLock()
        defer { lock.release() }
        let stored = try await readStoreVersion(authoritative: true)
        var imported = TokenSet(refreshToken: refreshToken)
        configuration.stampRefreshExpiry(&imported, now: now())
        try await writeReplacingByHand(imported, replacing: stored.version)
        logger.info("refresh token imported into the store", metadata: ["store": "\(storage.name)"])
    }

    /// `tokenproxy logout`: revokes the refresh token at the issuer (RFC 7009) when it has a
    /// revocation endpoint, then empties the store through the lock whatever the issuer said, so
    /// that a running proxy sharing it needs a new login. Returns why the revocation failed, if
    /// it did (the store is empty all the same).
    public func logout() async throws(TokenBrokerError) -> String? {
        await finishWrites()
        let lock = try await takeLock()
        defer { lock.release() }
        let stored = try await readStoreVersion(authoritative: true)
        var problem: String?
        do {
            try await discoverEndpoints()
        } catch {
            problem = "\(error); the token was not revoked"
        }
        if let revocationEndpoint = configuration.revocationEndpoint, let tokens = stored.contents.tokens {
            problem = await revoke(tokens, at: revocationEndpoint)
        }
        try await writeReplacingByHand(TokenSet(), replacing: stored.version)
        logger.info("tokens removed from the store", metadata: ["store": "\(storage.name)", "revoked": "\(problem == nil)"])
        return problem
    }

    /// Revokes the refresh token (which ends the grant, RFC 7009 §2.1), else the access token.
    private func revoke(_ tokens: TokenSet, at url: String) async -> String? {
        guard let (token, hint) = tokens.refreshToken.map({ ($0, "refresh_token") }) ?? tokens.accessToken.map({ ($0, "access_token") }) else { return nil }
        let credentials: TokenCredentials
        do {
            credentials = try endpoint.credentials(refreshToken: nil)
        } catch {
            return "not revoked: \(error)"
        }
        switch await endpoint.post([("token", token), ("token_type_hint", hint)], to: url, credentials: credentials) {
        case .failure(let failure):
            return "the revocation endpoint \(url) \(failure.reason); the token was not revoked"
        case .success(let answer) where answer.status == 200:
            return nil
        case .success(let answer):
            let error: String = if case .string(let code)? = answer.object?["error"] { ", error \(code)" } else { "" }
            return "the revocation endpoint \(url) answered HTTP \(answer.status)\(error); the token was not revoked"
        }
    }
}
