import FoundationEssentials

/// Token exchange (RFC 8693) at the token endpoint: `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`
/// with a `subject_token` of ``Behavior/acceptedSubjectTokenType`` that this issuer (or one of
/// ``Behavior/subjectTokenIssuers``) issued and that is still live, or that a test accepted with
/// ``acceptSubjectToken(_:)``. The answer is a new access token of the usual lifetime, with
/// `issued_token_type` and no refresh token; every exchange asked for is recorded.
extension MockTokenIssuer {
    /// The `grant_type` of a token exchange.
    public static let tokenExchangeGrant = "urn:ietf:params:oauth:grant-type:token-exchange"
    /// The token type URI of an access token (RFC 8693 §3), the default `subject_token_type`.
    public static let accessTokenType = "urn:ietf:params:oauth:token-type:access_token"

    /// One token exchange the endpoint received, as it was asked for.
    public struct Exchange: Sendable {
        public var at: Date
        /// The client that asked: the HTTP Basic user, else `client_id`.
        public var clientID: String?
        public var subjectToken: String?
        public var subjectTokenType: String?
        public var requestedTokenType: String?
        public var audience: String?
        public var resource: String?
        public var scope: String?
        /// The status of the answer (200 when a token was issued).
        public var status: Int
        /// The access token issued, `nil` when the exchange was refused.
        public var issuedToken: String?
    }

    /// Makes `token` a subject token the issuer accepts in an exchange (a token of another
    /// issuer, or the contents of a `subjectTokenFile`), whatever issued it and until when.
    public func acceptSubjectToken(_ token: String) {
        state.withLockedValue { _ = $0.acceptedSubjectTokens.insert(token) }
    }

    /// Every token exchange received so far, refused ones included, in order.
    public var exchanges: [Exchange] { state.withLockedValue { $0.exchanges } }

    /// How many token exchanges were received (they are among ``calls`` too).
    public var exchangeCount: Int { state.withLockedValue { $0.exchanges.count } }

    /// The exchange that issued `accessToken`, or `nil` when another grant issued it (or nothing
    /// here did): what a resource server learns from the token's `aud`.
    public func exchange(thatIssued accessToken: String) -> Exchange? {
        state.withLockedValue { state in state.exchangeIssuing[accessToken].map { state.exchanges[$0] } }
    }

    /// Why the exchange in `form` is refused, or `nil` when its subject token is good.
    /// `subjectVouchedElsewhere`: one of ``Behavior/subjectTokenIssuers`` holds it live.
    static func exchangeRefusal(form: [String: String], subjectVouchedElsewhere: Bool, state: inout State) -> MockHTTPResponse? {
        guard let subject = form["subject_token"], !subject.isEmpty, let type = form["subject_token_type"], !type.isEmpty else {
            return .json(400, #"{"error":"invalid_request","error_description":"subject_token and subject_token_type are required"}"#)
        }
        let behavior = state.behavior
        if let accepted = behavior.acceptedSubjectTokenType, type != accepted {
            return .json(400, "{\"error\":\"invalid_request\",\"error_description\":\(String(reflecting: "subject_token_type must be \(accepted)"))}")
        }
        let ownAndLive = behavior.acceptsOwnAccessTokensAsSubject && (state.issued[subject].map { $0 > Date() } ?? false)
        guard ownAndLive || subjectVouchedElsewhere || state.acceptedSubjectTokens.contains(subject) else {
            return .json(400, #"{"error":"invalid_grant","error_description":"the subject token is unknown, expired or revoked"}"#)
        }
        return nil
    }

    /// Records an exchange as it was asked for, with its answer.
    static func recordExchange(_ request: MockHTTPRequest, form: [String: String], status: Int, issued: String?, state: inout State) {
        let exchange = Exchange(
            at: Date(), clientID: basicCredentials(request)?.id ?? form["client_id"],
            subjectToken: form["subject_token"], subjectTokenType: form["subject_token_type"], requestedTokenType: form["requested_token_type"],
            audience: form["audience"], resource: form["resource"], scope: form["scope"], status: status, issuedToken: issued)
        if let issued { state.exchangeIssuing[issued] = state.exchanges.count }
        state.exchanges.append(exchange)
    }
}
