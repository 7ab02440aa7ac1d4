import FoundationEssentials

/// The token in the formats of the tools that do not send HTTP through the proxy (SPEC §2.5):
/// pure formatting, so that every `tokenproxy credential` command and every sink hands out
/// the same document for the same token. Times are UTC.
public enum CredentialFormats {
    /// The `ExecCredential` API versions client-go speaks; a plugin answers in the one it was
    /// asked in.
    static let execCredentialVersions: Set<String> = ["client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1"]
    static let defaultExecCredentialVersion = "client.authentication.k8s.io/v1"

    /// The `apiVersion` to answer in: the one `execInfo` (`$KUBERNETES_EXEC_INFO`) asks for, or
    /// the current one when it is unset or not an `ExecCredential` document. client-go refuses an
    /// answer in another version than it asked for, so a version it asks for that this plugin
    /// does not speak is an error that says what to configure instead.
    public static func execCredentialVersion(execInfo: String?) throws(CredentialFormatError) -> String {
        guard let execInfo, case .object(let info)? = try? JSONValue.parse(Data(execInfo.utf8)),
            case .string(let asked)? = info["apiVersion"]
        else { return defaultExecCredentialVersion }
        guard execCredentialVersions.contains(asked) else {
            throw .unsupportedExecCredentialVersion(asked, supported: execCredentialVersions.sorted())
        }
        return asked
    }

    /// A client-go exec credential plugin's answer, in `apiVersion`. Without an expiry, client-go
    /// keeps the token until a request is refused with 401, then runs the plugin again.
    public static func execCredential(token: String, expiresAt: Date?, apiVersion: String) -> String {
        var status: [String: JSONValue] = ["token": .string(token)]
        if let expiresAt { status["expirationTimestamp"] = .string(RFC3339.formatSeconds(expiresAt)) }
        return JSONValue.object(["apiVersion": .string(apiVersion), "kind": .string("ExecCredential"), "status": .object(status)]).serialized + "\n"
    }

    /// `credential json` and `json` sinks: `access_token`, `token_type`, `expires_at` (RFC 3339)
    /// and `expires_in` (whole seconds left at `now`, never negative); the last two only when the
    /// token's expiry is known.
    public static func json(token: String, tokenType: String, expiresAt: Date?, now: Date) -> String {
        var fields: [String: JSONValue] = ["access_token": .string(token), "token_type": .string(tokenType)]
        if let expiresAt {
            fields["expires_at"] = .string(RFC3339.formatSeconds(expiresAt))
            fields["expires_in"] = .number(max(0, expiresAt.timeIntervalSince(now).rounded(.down)))
        }
        return JSONValue.object(fields).serialized + "\n"
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
    public static func gitAnswer(username: String, token: String, expiresAt: Date?) -> String {
        var answer = "username=\(username)\npassword=\(token)\n"
        if let expiresAt { answer += "password_expiry_utc=\(Int64(expiresAt.timeIntervalSince1970.rounded(.down)))\n" }
        return answer
    }
}

/// A credential cannot be put in the format asked for.
public enum CredentialFormatError: Error, Sendable, Equatable, CustomStringConvertible {
    case unsupportedExecCredentialVersion(String, supported: [String])

    public var description: String {
        switch self {
        case .unsupportedExecCredentialVersion(let asked, let supported):
            "kubectl asked for an ExecCredential of apiVersion \(asked), which tokenproxy does not speak; set users[].user.exec.apiVersion in the kubeconfig to one of \(supported.joined(separator: ", "))"
        }
    }
}
