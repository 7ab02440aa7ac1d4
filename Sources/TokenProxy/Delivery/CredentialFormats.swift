import FoundationEssentials

/// The token in the formats of the tools that do not send HTTP through the proxy (SPEC §2.5):
/// pure formatting, so that every `tokenproxy credential` command and every sink hands out
/// the same document for the same token. Times are UTC.
public enum CredentialFormats {
    /// The `ExecCredential` API versions client-go speaks; a plugin answers in the one it was
    /// asked in.
    static let execCredentialVersions: Set<String> = ["client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1"]
    static let defaultExecCredentialVersion = "client.authentication.k8s.io/v1"

    /// A client-go exec credential plugin's answer. `execInfo` is `$KUBERNETES_EXEC_INFO`: its
    /// `apiVersion`, when it is one client-go speaks, is the answer's.
    public static func execCredential(token: String, expiresAt: Date, execInfo: String?) -> String {
        var version = defaultExecCredentialVersion
        if let execInfo, case .object(let info)? = try? JSONValue.parse(Data(execInfo.utf8)),
            case .string(let asked)? = info["apiVersion"], execCredentialVersions.contains(asked)
        {
            version = asked
        }
        return JSONValue.object([
            "apiVersion": .string(version), "kind": .string("ExecCredential"),
            "status": .object(["token": .string(token), "expirationTimestamp": .string(RFC3339.formatSeconds(expiresAt))]),
        ]).serialized + "\n"
    }

    /// `credential json`: `access_token`, `token_type`, `expires_at` (RFC 3339) and
    /// `expires_in` (whole seconds left at `now`, never negative).
    public static func json(token: String, tokenType: String, expiresAt: Date, now: Date) -> String {
        JSONValue.object([
            "access_token": .string(token), "token_type": .string(tokenType),
            "expires_at": .string(RFC3339.formatSeconds(expiresAt)),
            "expires_in": .number(max(0, expiresAt.timeIntervalSince(now).rounded(.down))),
        ]).serialized + "\n"
    }

    /// What git sends a credential helper: `key=value` lines until a blank line or the end.
    public struct GitRequest: Sendable, Equatable {
        public var fields: [String: String]

        /// The fields of `input`; a line without `=` is skipped, the first of a repeated key
        /// wins (git sends each once), and reading stops at the first blank line.
        public init(parsing input: String) {
            var fields: [String: String] = [:]
            // By bytes: "\r\n" is one Character, so splitting the String at "\n" would miss it.
            for bytes in input.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
                let line = Substring(decoding: bytes.last == UInt8(ascii: "\r") ? bytes.dropLast() : bytes[...], as: UTF8.self)
                if line.isEmpty { break }
                guard let equals = line.firstIndex(of: "=") else { continue }
                let key = String(line[..<equals])
                if fields[key] == nil { fields[key] = String(line[line.index(after: equals)...]) }
            }
            self.fields = fields
        }

        public var password: String? { fields["password"] }
    }

    /// The answer to `git credential get`: the user name, the token as password, and when it
    /// expires (Unix seconds: git forgets a password once `password_expiry_utc` has passed).
    public static func gitAnswer(username: String, token: String, expiresAt: Date) -> String {
        "username=\(username)\npassword=\(token)\npassword_expiry_utc=\(Int64(expiresAt.timeIntervalSince1970.rounded(.down)))\n"
    }
}
