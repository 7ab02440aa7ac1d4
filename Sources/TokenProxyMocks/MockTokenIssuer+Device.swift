import Crypto
import Foundation

/// The device authorization grant (RFC 8628) of the stand-in issuer: `POST /oauth/device` hands
/// out a device code and a user code; the token endpoint answers polls with the scripted errors,
/// then `authorization_pending` until the test approves or denies the user code.
extension MockTokenIssuer {
    public var deviceAuthorizationURL: String { url.replacingOccurrences(of: "/oauth/token", with: "/oauth/device") }

    /// The user approved `userCode` at the verification page.
    public func approveDevice(userCode: String) { decide(userCode, .approved) }

    /// The user declined `userCode`.
    public func denyDevice(userCode: String) { decide(userCode, .denied) }

    /// The user codes handed out so far.
    public var userCodes: [String] { state.withLockedValue { $0.devices.values.map(\.userCode) } }

    /// When each poll for the device code with `userCode` arrived.
    public func devicePolls(userCode: String) -> [Date] {
        state.withLockedValue { $0.devices.values.first { $0.userCode == userCode }?.polls ?? [] }
    }

    private func decide(_ userCode: String, _ decision: DeviceGrant.Decision) {
        state.withLockedValue { state in
            for (code, grant) in state.devices where grant.userCode == userCode { state.devices[code]?.decision = decision }
        }
    }

    static func authorizeDevice(_ request: MockHTTPRequest, form: [String: String], baseURL: String, state: inout State) -> MockHTTPResponse {
        guard request.method == "POST", form["client_id"] != nil else {
            return .json(400, #"{"error":"invalid_request","error_description":"client_id is required"}"#)
        }
        let deviceCode = "dc-\(UInt64.random(in: 0...UInt64.max))"
        let letters = Array("BCDFGHJKLMNPQRSTVWXZ")
        let userCode = String((0..<4).map { _ in letters.randomElement()! }) + "-" + String((0..<4).map { _ in letters.randomElement()! })
        let behavior = state.behavior
        state.devices[deviceCode] = DeviceGrant(userCode: userCode, expiresAt: Date() + behavior.deviceCodeLifetime, script: behavior.devicePollScript)
        let body = """
            {"device_code":"\(deviceCode)","user_code":"\(userCode)","verification_uri":"\(baseURL)/device",\
            "verification_uri_complete":"\(baseURL)/device?user_code=\(userCode)","expires_in":\(behavior.deviceCodeLifetime),"interval":\(behavior.deviceInterval)}
            """
        return .json(200, body)
    }

    /// The answer to a poll, or `nil` when the user approved (tokens are then issued).
    static func pollDevice(_ deviceCode: String?, state: inout State) -> MockHTTPResponse? {
        guard let deviceCode, var grant = state.devices[deviceCode] else {
            return .json(400, #"{"error":"invalid_grant","error_description":"unknown device code"}"#)
        }
        grant.polls.append(Date())
        defer { state.devices[deviceCode] = grant }
        if Date() > grant.expiresAt { return .json(400, #"{"error":"expired_token"}"#) }
        if !grant.script.isEmpty { return .json(400, "{\"error\":\"\(grant.script.removeFirst())\"}") }
        switch grant.decision {
        case .pending: return .json(400, #"{"error":"authorization_pending"}"#)
        case .denied: return .json(400, #"{"error":"access_denied"}"#)
        case .approved:
            grant.expiresAt = .distantPast  // a device code is good for one token response
            return nil
        }
    }
}

/// Token revocation (RFC 7009) at `POST /oauth/revoke`: a revoked refresh token is no longer
/// accepted; the answer is 200 whether or not the token was known.
extension MockTokenIssuer {
    public var revocationURL: String { url.replacingOccurrences(of: "/oauth/token", with: "/oauth/revoke") }

    /// The tokens revoked so far, in order.
    public var revoked: [String] { state.withLockedValue { $0.revoked } }

    static func revoke(form: [String: String], state: inout State) -> MockHTTPResponse {
        guard let token = form["token"] else { return .json(400, #"{"error":"invalid_request"}"#) }
        state.revoked.append(token)
        state.validRefreshTokens.remove(token)
        state.issued.removeValue(forKey: token)
        return MockHTTPResponse(status: 200)
    }
}

/// Issuer metadata: OpenID Connect Discovery and RFC 8414, as ``Behavior/metadataDocuments`` says.
extension MockTokenIssuer {
    /// The issuer identifier (the base URL).
    public var issuerURL: String { url.replacingOccurrences(of: "/oauth/token", with: "") }

    /// How many metadata documents were served.
    public var metadataRequests: Int { state.withLockedValue { $0.metadataRequests } }

    static func metadata(_ request: MockHTTPRequest, baseURL: String, behavior: Behavior) -> MockHTTPResponse {
        let kind = request.uri.hasPrefix("/.well-known/openid-configuration") ? "openid" : request.uri.hasPrefix("/.well-known/oauth-authorization-server") ? "oauth" : ""
        guard behavior.metadataDocuments.contains(kind) else { return .json(404, #"{"error":"not_found"}"#) }
        var fields = [
            "token_endpoint": baseURL + "/oauth/token", "device_authorization_endpoint": baseURL + "/oauth/device",
            "revocation_endpoint": baseURL + "/oauth/revoke", "authorization_endpoint": baseURL + "/oauth/authorize",
        ]
        if kind == "openid" { for key in behavior.openIDOmits { fields.removeValue(forKey: key) } }
        let members = ["\"issuer\":\"\(baseURL)\""] + fields.sorted { $0.key < $1.key }.map { "\"\($0.key)\":\"\($0.value)\"" }
        return .json(200, "{" + members.joined(separator: ",") + "}")
    }
}

/// The authorization endpoint with PKCE (RFC 6749 §4.1, RFC 7636): `GET /oauth/authorize` shows a
/// consent page naming a pending request; `POST /oauth/authorize` with `request` and `decision`
/// redirects to the client's loopback `redirect_uri` with a code (or `error=access_denied`); the
/// token endpoint exchanges the code only with the `code_verifier` whose S256 is the challenge.
extension MockTokenIssuer {
    public var authorizationURL: String { url.replacingOccurrences(of: "/oauth/token", with: "/oauth/authorize") }

    /// How many code exchanges passed the PKCE check.
    public var pkceVerified: Int { state.withLockedValue { $0.pkceVerified } }

    struct PendingAuthorization {
        var clientID: String
        var redirectURI: String
        var state: String
        var challenge: String
    }

    static func authorize(_ request: MockHTTPRequest, form: [String: String], state: inout State) -> MockHTTPResponse {
        if request.method == "GET" {
            let query = parseForm(String(request.uri.drop { $0 != "?" }.dropFirst()))
            guard query["response_type"] == "code", let clientID = query["client_id"], let redirect = query["redirect_uri"],
                redirect.hasPrefix("http://127.0.0.1:"), query["code_challenge_method"] == "S256", let challenge = query["code_challenge"],
                let clientState = query["state"]
            else { return .json(400, #"{"error":"invalid_request","error_description":"a PKCE S256 request with a loopback redirect is required"}"#) }
            let id = "req-\(UInt32.random(in: 0...UInt32.max))"
            state.pendingAuthorizations[id] = PendingAuthorization(clientID: clientID, redirectURI: redirect, state: clientState, challenge: challenge)
            var page = MockHTTPResponse(status: 200, headers: [("Content-Type", "text/html")], body: "<form method=post action=/oauth/authorize><input name=\"request\" value=\"\(id)\"><button name=decision value=approve>Allow</button></form>")
            page.headers.append(("X-Consent-Request", id))
            return page
        }
        guard let id = form["request"], let pending = state.pendingAuthorizations.removeValue(forKey: id) else {
            return .json(400, #"{"error":"invalid_request"}"#)
        }
        let separator = pending.redirectURI.contains("?") ? "&" : "?"
        guard form["decision"] == "approve" else {
            return MockHTTPResponse(status: 302, headers: [("Location", "\(pending.redirectURI)\(separator)error=access_denied&state=\(pending.state)")])
        }
        let code = "code-\(UInt64.random(in: 0...UInt64.max))"
        state.authorizationCodes[code] = pending
        return MockHTTPResponse(status: 302, headers: [("Location", "\(pending.redirectURI)\(separator)code=\(code)&state=\(pending.state)")])
    }

    /// The answer to a code exchange, or `nil` when the code and verifier are good.
    static func exchange(form: [String: String], state: inout State) -> MockHTTPResponse? {
        guard let code = form["code"], let pending = state.authorizationCodes.removeValue(forKey: code) else {
            return .json(400, #"{"error":"invalid_grant","error_description":"unknown or used code"}"#)
        }
        guard form["redirect_uri"] == pending.redirectURI, form["client_id"] == nil || form["client_id"] == pending.clientID else {
            return .json(400, #"{"error":"invalid_grant","error_description":"redirect_uri or client differs"}"#)
        }
        guard let verifier = form["code_verifier"], Self.s256(verifier) == pending.challenge else {
            return .json(400, #"{"error":"invalid_grant","error_description":"PKCE verification failed"}"#)
        }
        state.pkceVerified += 1
        return nil
    }

    static func s256(_ verifier: String) -> String {
        var text = Data(SHA256.hash(data: Data(verifier.utf8))).base64EncodedString()
        text = text.replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        while text.hasSuffix("=") { text.removeLast() }
        return text
    }
}
