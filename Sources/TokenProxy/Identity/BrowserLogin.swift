import Crypto
import FoundationEssentials

/// The authorization code grant with PKCE (RFC 7636) for a native app (RFC 8252 §7.3): the
/// parts that decide nothing about I/O — the verifier and its S256 challenge, the authorization
/// URL, and what a redirect to the loopback listener means.
struct BrowserLogin: Sendable {
    let codeVerifier: String
    let state: String
    let redirectURI: String

    /// A fresh verifier (32 random bytes, 43 characters) and state for a redirect to `port`.
    init(redirectPort: Int) {
        self.codeVerifier = Self.randomToken()
        self.state = Self.randomToken()
        self.redirectURI = "http://127.0.0.1:\(redirectPort)/callback"
    }

    init(codeVerifier: String, state: String, redirectURI: String) {
        self.codeVerifier = codeVerifier
        self.state = state
        self.redirectURI = redirectURI
    }

    /// `BASE64URL(SHA256(code_verifier))` (RFC 7636 §4.2).
    var codeChallenge: String {
        ClientAssertion.base64URL(Data(SHA256.hash(data: Data(codeVerifier.utf8))))
    }

    /// The address the user opens: the authorization endpoint with the request in its query.
    func authorizationURL(endpoint: String, configuration: Configuration.Token) -> String {
        var query: [(String, String)] = [
            ("response_type", "code"), ("client_id", configuration.clientID ?? ""), ("redirect_uri", redirectURI),
            ("state", state), ("code_challenge", codeChallenge), ("code_challenge_method", "S256"),
        ]
        if let scope = configuration.scope { query.append(("scope", scope)) }
        for name in configuration.extraParams.keys.sorted() { query.append((name, configuration.extraParams[name]!)) }
        let encoded = query.map { "\(TokenEndpointClient.formEncode($0.0))=\(TokenEndpointClient.formEncode($0.1))" }.joined(separator: "&")
        return endpoint + (endpoint.contains("?") ? "&" : "?") + encoded
    }

    /// What a request that reached the loopback listener means.
    enum Redirect: Equatable {
        /// The issuer sent the code: exchange it.
        case code(String)
        /// The issuer reports an error (`access_denied`): the login ends.
        case error(String)
        /// Not our redirect (wrong path, wrong or missing `state`): answered 400 and ignored.
        case ignored(String)
    }

    func interpret(path: String, query: [String: String]) -> Redirect {
        guard path == "/callback" else { return .ignored("no such page") }
        guard query["state"] == state else { return .ignored("the state does not match this login; it is ignored") }
        if let error = query["error"] {
            return .error("the issuer refused the sign-in with \(error)\(query["error_description"].map { " (\($0))" } ?? "")")
        }
        guard let code = query["code"], !code.isEmpty else { return .ignored("the redirect carries no code") }
        return .code(code)
    }

    /// The token request that exchanges `code` (RFC 6749 §4.1.3, RFC 7636 §4.5).
    func exchange(code: String) -> [(String, String)] {
        [("grant_type", "authorization_code"), ("code", code), ("redirect_uri", redirectURI), ("code_verifier", codeVerifier)]
    }

    private static func randomToken() -> String {
        var bytes = [UInt8](repeating: 0, count: 32)
        for index in bytes.indices { bytes[index] = UInt8.random(in: 0...255) }
        return ClientAssertion.base64URL(Data(bytes))
    }

    /// The query of a request target, percent-decoded.
    static func query(of target: String) -> (path: String, fields: [String: String]) {
        let path = String(target.prefix { $0 != "?" })
        guard let mark = target.firstIndex(of: "?") else { return (path, [:]) }
        var fields: [String: String] = [:]
        for pair in target[target.index(after: mark)...].split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let decode = { (text: Substring) in (String(text).replacingOccurrences(of: "+", with: " ")).removingPercentEncoding ?? String(text) }
            fields[decode(parts[0])] = parts.count > 1 ? decode(parts[1]) : ""
        }
        return (path, fields)
    }
}
