import FoundationEssentials

extension Configuration.Token {
    /// What an operator does when the token endpoint refused the credentials for good.
    public var reauthenticationRemedy: String {
        switch grant {
        case .refreshToken:
            "log in again: `tokenproxy login --device` or `tokenproxy login --refresh-token-file FILE` (or write {\"version\": 1, \"refresh_token\": \"…\"} to \(store), mode 0600); it is picked up without a restart"
        case .clientCredentials:
            "check token.clientId and the client secret (\(clientSecret?.description ?? "none configured")); a changed secret or store is picked up without a restart"
        case .tokenExchange:
            switch exchange?.subject {
            case .file(let path)?: "the issuer refused the subject token of \(path) (subjectTokenFile) or the client: a new subject token in that file is picked up without a restart"
            case .identity(let name)?: "the issuer refused the token of the identity \"\(name)\" (subjectIdentity) or the client: check that the issuer may exchange it (audience, trust policy)"
            case nil: "check the token exchange's settings"
            }
        }
    }

    /// Gives a refresh token whose expiry nothing said the `exp` of a JWT refresh token, else
    /// `refreshTokenLifetime` counted from `now` (SPEC §2.1).
    func stampRefreshExpiry(_ tokens: inout TokenSet, now: Date) {
        guard let refreshToken = tokens.refreshToken, tokens.refreshExpiresAt == nil else { return }
        if let expiry = JWT.expiry(of: refreshToken), TokenSet.isInRange(expiry, now: now) {
            tokens.refreshExpiresAt = expiry
        } else if let lifetime = refreshTokenLifetime {
            tokens.refreshExpiresAt = now + lifetime.timeInterval
        }
    }

    /// Whether tokens obtained under `other` were obtained the way this configuration would
    /// obtain them: same endpoint, client, grant, scope and parameters. When not, a reload drops
    /// them (SPEC §8).
    func issuesSameTokens(as other: Configuration.Token) -> Bool {
        // A discovered endpoint counts as the issuer's: the same issuer issues the same tokens.
        let sameEndpoint = endpoint == other.endpoint || (issuer != nil && issuer == other.issuer && (endpoint.isEmpty || other.endpoint.isEmpty))
        return sameEndpoint && grant == other.grant && clientID == other.clientID && clientSecret == other.clientSecret
            && clientAuth == other.clientAuth && clientKeyFile == other.clientKeyFile && clientKeyID == other.clientKeyID
            && clientAssertionFile == other.clientAssertionFile && scope == other.scope && extraParams == other.extraParams && exchange == other.exchange
    }
}
