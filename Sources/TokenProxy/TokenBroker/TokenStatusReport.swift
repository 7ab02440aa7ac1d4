import FoundationEssentials

/// The token state as `tokenproxy token` prints it: expiry, scope, whether a refresh token is
/// held, whether re-login is needed. Never a token or a secret.
public struct TokenStatusReport: Sendable {
    public var lines: [String]
    public var reauthenticationRequired: Bool
    public var remedy: String

    /// `store` names where `contents` came from (the store file, or the fleet's row).
    public init(contents: TokenStore.Contents, store: String, configuration: Configuration.Token, now: Date) {
        let windows = RefreshWindows(refreshBefore: configuration.refreshBefore, minValidity: configuration.minValidity)
        remedy = configuration.reauthenticationRemedy
        lines = ["store: \(store)"]
        let tokens: TokenSet
        switch contents {
        case .empty:
            lines.append("state: empty (no token yet)")
            tokens = TokenSet()
        case .corrupt(let reason, _):
            lines.append("state: cannot be parsed (\(reason)); a running proxy moves it aside if it stays so for \(Int(RefreshProtocol.quarantineDelay)) s")
            tokens = TokenSet()
        case .tokens(let stored, let discarded):
            tokens = stored
            if let discarded { lines.append("access token refused: \(discarded)") }
        }
        if let expiresAt = tokens.expiresAt, tokens.accessToken != nil {
            let seconds = Int(expiresAt.timeIntervalSince(now).rounded(.down))
            let freshness = windows.freshness(of: tokens, at: now)
            let state = switch freshness {
            case .fresh: "valid"
            case .refreshAdvised: "valid, due for refresh"
            case .mustRefresh, .missing: seconds > 0 ? "too close to expiry to be used" : "expired"
            }
            lines.append("access token: \(state)")
            lines.append("expires at: \(RFC3339.format(expiresAt))")
            lines.append("expires in: \(seconds)s")
            lines.append("token type: \(tokens.tokenType)")
        } else {
            lines.append("access token: none")
        }
        if let scope = tokens.scope { lines.append("scope: \(scope)") }
        lines.append("refresh token: \(tokens.refreshToken == nil ? "absent" : "present")")
        if let obtainedAt = tokens.obtainedAt { lines.append("obtained at: \(RFC3339.format(obtainedAt))") }
        let usable = windows.freshness(of: tokens, at: now) >= .refreshAdvised
        if let rejection = tokens.rejection {
            lines.append("last refresh: refused with \(rejection.error) at \(RFC3339.format(rejection.at))")
        }
        reauthenticationRequired = !usable && (tokens.rejection != nil || (configuration.grant == .refreshToken && tokens.refreshToken == nil))
    }
}
