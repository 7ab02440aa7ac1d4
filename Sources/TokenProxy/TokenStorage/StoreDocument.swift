import FoundationEssentials

/// The store's JSON format (SPEC §3), version 1:
/// `{"version": 1, "access_token": …, "refresh_token": …, "token_type": "Bearer",
///   "expires_at": "2026-11-22T10:00:00Z", "scope": …}`
/// plus fields of tokenproxy's own: `obtained_at` (to know the lifetime), `refresh_expires_at`,
/// `rejected` (a permanent refusal, so that other processes do not repeat it) and
/// `access_token_refused_at` (the last access token a tool reported refused and dropped).
enum StoreDocument {
    static let version = 1

    struct DecodingFailure: Error, CustomStringConvertible {
        var description: String
    }

    /// Parses a store document. An access token that could not be sent as it is (CR, LF, NUL or
    /// other bytes a header cannot carry) or whose times are out of range (before 1970, more than
    /// ten years after `now`) is dropped, and `discarded` says why; the refresh token is kept.
    static func decode(_ data: Data, now: Date) throws(DecodingFailure) -> (TokenSet, discarded: String?) {
        let document: JSONValue
        do {
            document = try JSONValue.parse(data)
        } catch let error as DecodingError {
            throw DecodingFailure(description: "not valid JSON: \(error.shortDescription)")
        } catch {
            throw DecodingFailure(description: "not valid JSON")
        }
        guard case .object(let fields) = document else { throw DecodingFailure(description: "not a JSON object") }
        guard case .number(let version)? = fields["version"], version == Double(Self.version) else {
            throw DecodingFailure(description: "\"version\" must be 1")
        }
        func string(_ key: String) throws(DecodingFailure) -> String? {
            switch fields[key] {
            case nil, .null?: return nil
            case .string(let value)?: return value.isEmpty ? nil : value
            case let other?: throw DecodingFailure(description: "\"\(key)\" must be a string, found \(other.kindDescription)")
            }
        }
        func instant(_ key: String) throws(DecodingFailure) -> Date? {
            guard let text = try string(key) else { return nil }
            guard let date = RFC3339.parse(text) else {
                throw DecodingFailure(description: "\"\(key)\" is not an RFC 3339 timestamp")
            }
            return date
        }
        var tokens = TokenSet(
            accessToken: try string("access_token"),
            refreshToken: try string("refresh_token"),
            tokenType: try string("token_type") ?? "Bearer",
            expiresAt: try instant("expires_at"),
            obtainedAt: try instant("obtained_at"),
            scope: try string("scope")
        )
        tokens.refreshExpiresAt = try instant("refresh_expires_at")
        // Advisory (it only paces `credential git erase`): a damaged value is ignored, never
        // a reason to treat the store as corrupt.
        tokens.accessTokenRefusedAt = (try? instant("access_token_refused_at")) ?? nil
        if case .object(let rejected)? = fields["rejected"],
            case .string(let error)? = rejected["error"],
            case .string(let credential)? = rejected["credential"],
            case .string(let at)? = rejected["at"], let date = RFC3339.parse(at)
        {
            var description: String?
            if case .string(let text)? = rejected["error_description"] { description = text }
            tokens.rejection = .init(error: error, errorDescription: description, credential: credential, at: date)
        }
        let discarded = tokens.discardUnusableAccessToken(now: now)
        return (tokens, discarded)
    }

    static func encode(_ tokens: TokenSet) -> Data {
        var fields = ["\"version\": \(Self.version)"]
        func add(_ key: String, _ value: String?, to list: inout [String]) {
            if let value { list.append("\(JSONValue.quote(key)): \(JSONValue.quote(value))") }
        }
        add("access_token", tokens.accessToken, to: &fields)
        add("refresh_token", tokens.refreshToken, to: &fields)
        add("token_type", tokens.tokenType, to: &fields)
        add("expires_at", tokens.expiresAt.map(RFC3339.format), to: &fields)
        add("obtained_at", tokens.obtainedAt.map(RFC3339.format), to: &fields)
        add("scope", tokens.scope, to: &fields)
        add("refresh_expires_at", tokens.refreshExpiresAt.map(RFC3339.format), to: &fields)
        add("access_token_refused_at", tokens.accessTokenRefusedAt.map(RFC3339.format), to: &fields)
        if let rejection = tokens.rejection {
            var nested: [String] = []
            add("error", rejection.error, to: &nested)
            add("error_description", rejection.errorDescription, to: &nested)
            add("credential", rejection.credential, to: &nested)
            add("at", RFC3339.format(rejection.at), to: &nested)
            fields.append("\"rejected\": {\(nested.joined(separator: ", "))}")
        }
        return Data(("{" + fields.joined(separator: ", ") + "}\n").utf8)
    }
}
