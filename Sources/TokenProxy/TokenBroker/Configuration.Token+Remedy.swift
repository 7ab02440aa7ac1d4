extension Configuration.Token {
    /// What an operator does when the token endpoint refused the credentials for good.
    public var reauthenticationRemedy: String {
        switch grant {
        case .refreshToken:
            "log in again and hand the new refresh token to tokenproxy by writing {\"version\": 1, \"refresh_token\": \"…\"} to \(store) (mode 0600); it is picked up without a restart"
        case .clientCredentials:
            "check token.clientId and the client secret (\(clientSecret?.description ?? "none configured")); a changed secret or store is picked up without a restart"
        }
    }
}
