import FoundationEssentials

/// When a token should be refreshed (SPEC §2): ahead of time inside `refreshBefore` (advisory),
/// and before any use inside `minValidity` (mandatory). For short-lived tokens both windows
/// shrink to at most ½ and ⅒ of the lifetime, so that a 60 s token is not refreshed on every use.
public struct RefreshWindows: Sendable, Equatable {
    public var refreshBefore: Duration
    public var minValidity: Duration

    public init(refreshBefore: Duration, minValidity: Duration) {
        self.refreshBefore = refreshBefore
        self.minValidity = minValidity
    }

    /// How usable a token is at one instant.
    public enum Freshness: Sendable, Equatable, Comparable {
        /// No access token, or no known expiry.
        case missing
        /// Less than the mandatory window left (or expired): it must not be sent.
        case mustRefresh
        /// Inside the advisory window: usable, and a background refresh should start.
        case refreshAdvised
        /// Outside both windows.
        case fresh
    }

    /// The advisory and mandatory windows for a token of `lifetime` (unscaled when unknown).
    public func scaled(toLifetime lifetime: Duration?) -> (advisory: Duration, mandatory: Duration) {
        guard let lifetime else { return (refreshBefore, minValidity) }
        return (min(refreshBefore, lifetime / 2), min(minValidity, lifetime / 10))
    }

    /// The instants at which `tokens` enters the advisory and the mandatory window.
    public func deadlines(of tokens: TokenSet) -> (refreshAt: Date, mustRefreshAt: Date)? {
        guard tokens.accessToken != nil, let expiresAt = tokens.expiresAt else { return nil }
        let (advisory, mandatory) = scaled(toLifetime: tokens.lifetime)
        return (expiresAt - advisory.timeInterval, expiresAt - mandatory.timeInterval)
    }

    public func freshness(of tokens: TokenSet, at now: Date) -> Freshness {
        guard let (refreshAt, mustRefreshAt) = deadlines(of: tokens) else { return .missing }
        if now >= mustRefreshAt { return .mustRefresh }
        if now >= refreshAt { return .refreshAdvised }
        return .fresh
    }
}
