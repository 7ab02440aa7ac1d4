import FoundationEssentials

/// What ``TokenBroker`` needs of the token endpoint: the credentials a call would use, the call,
/// the other endpoints of a login, and issuer discovery. ``TokenEndpointClient`` is the real one;
/// tests give the broker a fake, so that the refresh protocol runs without a network.
protocol TokenEndpoint: Sendable {
    /// The credentials a request would use now, the client secret read afresh.
    func credentials(refreshToken: String?) throws(TokenBrokerError) -> TokenCredentials
    /// Sends one token request and interprets the answer; `grant` replaces the fields of the
    /// configured grant (a login's device code or authorization code).
    func requestToken(_ credentials: TokenCredentials, grant: [(String, String)]?) async -> TokenResponse
    /// POSTs a form to another endpoint of the issuer (device authorization, revocation).
    func post(_ fields: [(String, String)], to url: String, credentials: TokenCredentials) async -> Result<TokenEndpointClient.FormAnswer, TokenEndpointClient.CallFailure>
    /// GETs a JSON document (an issuer's metadata).
    func fetchJSON(_ url: String) async -> Result<[String: JSONValue], TokenEndpointClient.CallFailure>
    /// Takes the endpoints discovery found in place of the configured ones.
    func adopt(_ resolved: Configuration.Token)
    /// Closes connections; called once before the process exits.
    func shutdown() async
}

extension TokenEndpointClient: TokenEndpoint {}
