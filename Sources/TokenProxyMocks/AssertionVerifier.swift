import Crypto
import Foundation
import _CryptoExtras

/// Checks a `private_key_jwt` client assertion (RFC 7523 §3) as an identity provider does.
enum AssertionVerifier {
    /// Why the assertion in `form` is refused, or `nil` when it is good. A good one's `jti` is
    /// remembered in `seen`, and its header appended to `headers`.
    static func problem(form: [String: String], publicKeyPEM: String, audience: String, seen: inout Set<String>, headers: inout [[String: String]]) -> String? {
        guard form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" else { return "client_assertion_type missing or wrong" }
        guard let assertion = form["client_assertion"] else { return "client_assertion missing" }
        let parts = assertion.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let headerData = decode(parts[0]), let claimsData = decode(parts[1]), let signature = decode(parts[2]),
            let header = try? JSONSerialization.jsonObject(with: headerData) as? [String: Any],
            let claims = try? JSONSerialization.jsonObject(with: claimsData) as? [String: Any]
        else { return "not a JWT" }
        let signed = Data("\(parts[0]).\(parts[1])".utf8)
        switch header["alg"] as? String {
        case "ES256":
            guard let key = try? P256.Signing.PublicKey(pemRepresentation: publicKeyPEM),
                let value = try? P256.Signing.ECDSASignature(rawRepresentation: signature), key.isValidSignature(value, for: signed)
            else { return "bad ES256 signature" }
        case "RS256":
            guard let key = try? _RSA.Signing.PublicKey(pemRepresentation: publicKeyPEM),
                key.isValidSignature(_RSA.Signing.RSASignature(rawRepresentation: signature), for: signed, padding: .insecurePKCS1v1_5)
            else { return "bad RS256 signature" }
        default:
            return "unsupported alg"
        }
        let clientID = form["client_id"]
        guard let issuer = claims["iss"] as? String, issuer == claims["sub"] as? String, clientID == nil || clientID == issuer else { return "iss and sub must both be the client id" }
        guard claims["aud"] as? String == audience else { return "aud must be \(audience)" }
        let now = Date().timeIntervalSince1970
        guard let exp = claims["exp"] as? Double, exp > now, exp <= now + 300 else { return "exp must be in the next 5 minutes" }
        guard let jti = claims["jti"] as? String, !jti.isEmpty, seen.insert(jti).inserted else { return "jti missing or used before" }
        headers.append(header.compactMapValues { $0 as? String })
        return nil
    }

    private static func decode(_ part: Substring) -> Data? {
        var text = part.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while text.count % 4 != 0 { text += "=" }
        return Data(base64Encoded: text)
    }
}
