import Crypto
import FoundationEssentials
import _CryptoExtras

/// `private_key_jwt` client authentication (RFC 7523 §2.2, SPEC §2.1): a JWT signed with the
/// client's private key, `iss` = `sub` = the client id, `aud` = the token endpoint, a fresh `jti`
/// and a short `exp` for every call, so that an assertion seen once cannot be replayed later.
///
/// swift-crypto, already a dependency for fleet sealing, signs both kinds of key: `Crypto` for
/// ES256 and `_CryptoExtras` for RS256 (jwt-kit would add a package for two signatures).
enum ClientAssertion {
    /// A key read from `token.clientKeyFile`: PEM, as PKCS#8, SEC1 (EC) or PKCS#1 (RSA).
    enum SigningKey {
        case es256(P256.Signing.PrivateKey)
        case rs256(_RSA.Signing.PrivateKey)

        var algorithm: String {
            switch self {
            case .es256: "ES256"
            case .rs256: "RS256"
            }
        }
    }

    /// How long an assertion is valid: short, since each is used at once and only once.
    static let lifetime: Double = 60

    static func parseKey(pem: String) -> SigningKey? {
        if let key = try? P256.Signing.PrivateKey(pemRepresentation: pem) { return .es256(key) }
        if let key = try? _RSA.Signing.PrivateKey(pemRepresentation: pem), key.keySizeInBits >= 2048 { return .rs256(key) }
        return nil
    }

    /// Why `pem` cannot sign assertions, or `nil` (for `check-config` and the first call).
    static func problem(with pem: String, path: String) -> String? {
        guard parseKey(pem: pem) == nil else { return nil }
        return "\(path) is not a PEM private key tokenproxy can sign with: an EC P-256 key (ES256) or an RSA key of at least 2048 bits (RS256), as PKCS#8, SEC1 or PKCS#1"
    }

    /// A signed assertion for one call to `audience` (the token endpoint URL).
    static func make(key: SigningKey, clientID: String, audience: String, keyID: String?, now: Date) throws -> String {
        var header: [(String, JSONValue)] = [("alg", .string(key.algorithm)), ("typ", .string("JWT"))]
        if let keyID { header.append(("kid", .string(keyID))) }
        let issuedAt = now.timeIntervalSince1970.rounded(.down)
        var nonce = [UInt8](repeating: 0, count: 16)
        for index in nonce.indices { nonce[index] = UInt8.random(in: 0...255) }
        let claims: [(String, JSONValue)] = [
            ("iss", .string(clientID)), ("sub", .string(clientID)), ("aud", .string(audience)),
            ("iat", .number(issuedAt)), ("exp", .number(issuedAt + lifetime)),
            ("jti", .string(nonce.hexadecimal)),
        ]
        let signingInput = base64URL(Data(encode(header).utf8)) + "." + base64URL(Data(encode(claims).utf8))
        let signature: Data
        switch key {
        case .es256(let key):
            signature = try key.signature(for: Data(signingInput.utf8)).rawRepresentation
        case .rs256(let key):
            signature = try key.signature(for: Data(signingInput.utf8), padding: .insecurePKCS1v1_5).rawRepresentation
        }
        return signingInput + "." + base64URL(signature)
    }

    /// A JSON object with its members in the given order.
    private static func encode(_ members: [(String, JSONValue)]) -> String {
        "{" + members.map { name, value in
            let text: String
            switch value {
            case .string(let string): text = JSONValue.quote(string)
            case .number(let number): text = String(Int64(number))
            default: text = "null"
            }
            return JSONValue.quote(name) + ":" + text
        }.joined(separator: ",") + "}"
    }

    static func base64URL(_ data: Data) -> String {
        var text = data.base64EncodedString()
        text = text.replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        while text.hasSuffix("=") { text.removeLast() }
        return text
    }
}
