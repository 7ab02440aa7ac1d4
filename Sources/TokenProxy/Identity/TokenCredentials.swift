import FoundationEssentials

/// What one token request authenticates with: the grant, the client and, for the
/// `refresh_token` grant, the refresh token.
struct TokenCredentials: Sendable, Equatable {
    var grant: Configuration.Token.Grant
    var clientID: String?
    /// What the client authenticates with, as `token.clientAuth` says: the secret, the PEM
    /// private key that signs assertions, or the ready-made assertion.
    var clientSecret: String?
    var refreshToken: String?
    /// A token exchange's `subject_token` (RFC 8693): a file's, or another identity's token.
    var subjectToken: String? = nil

    /// A non-reversible tag of these credentials, stored with a permanent rejection so that other
    /// processes skip exactly the credentials that were refused, and try again once the secret or
    /// the refresh token changes.
    var fingerprint: String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for part in [grant.rawValue, clientID ?? "", clientSecret ?? "", refreshToken ?? "", subjectToken ?? ""] {
            for byte in part.utf8 + [0] {
                hash ^= UInt64(byte)
                hash &*= 0x100_0000_01b3
            }
        }
        return String(hash, radix: 16)
    }

    /// The fingerprint of the client's part alone (no refresh token): what a permanent refusal
    /// watches for a changed secret.
    var clientFingerprint: String {
        var client = self
        client.refreshToken = nil
        return client.fingerprint
    }

    /// Reads `key`'s file (a client key, an assertion, a subject token), trailing white space
    /// removed.
    static func readFile(_ path: String, key: String) throws(TokenBrokerError) -> String {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw .unavailable(reason: "\(key): cannot read \(path): \(Configuration.reason(error))", retryAfter: nil)
        }
        let trimmed = String(text.reversed().drop { $0 == "\n" || $0 == "\r" || $0 == " " || $0 == "\t" }.reversed())
        guard !trimmed.isEmpty else { throw .unavailable(reason: "\(key): \(path) is empty", retryAfter: nil) }
        return trimmed
    }

    /// Reads the client secret from its source (SPEC §2: a trailing newline is stripped).
    static func readSecret(_ source: ClientSecretSource?, environment: [String: String]) throws(TokenBrokerError) -> String? {
        switch source {
        case nil:
            return nil
        case .environment(let name)?:
            guard let value = environment[name], !value.isEmpty else {
                throw .unavailable(reason: "token.clientSecretEnv: the environment variable \(name) is not set", retryAfter: nil)
            }
            return value
        case .file(let path)?:
            let text: String
            do {
                text = try String(contentsOfFile: path, encoding: .utf8)
            } catch {
                throw .unavailable(reason: "token.clientSecretFile: cannot read \(path): \(Configuration.reason(error))", retryAfter: nil)
            }
            var secret = Substring(text)
            if secret.hasSuffix("\r\n") { secret = secret.dropLast(2) } else if secret.hasSuffix("\n") { secret = secret.dropLast() }
            guard !secret.isEmpty else {
                throw .unavailable(reason: "token.clientSecretFile: \(path) is empty", retryAfter: nil)
            }
            return String(secret)
        }
    }
}
