import Foundation
import Testing
import TokenProxy
import TokenProxyMocks

/// A token broker in this process, a stand-in issuer and a store folder, torn down together.
final class BrokerHarness: @unchecked Sendable {
    let directory: TemporaryDirectory
    let issuer: MockTokenIssuer
    let endpoint: TokenEndpointClient
    let broker: TokenBroker
    let configuration: Configuration
    let logs = LogCapture()

    /// `clock`: the broker's time, when a test must not depend on how fast the machine runs it.
    init(
        behavior: MockTokenIssuer.Behavior = .init(), fixture change: (inout ConfigFixture) -> Void = { _ in },
        clock: @escaping @Sendable () -> Date = { Date() }
    ) async throws {
        directory = try TemporaryDirectory()
        issuer = try await MockTokenIssuer.start(behavior: behavior)
        var fixture = ConfigFixture(endpoint: issuer.url)
        change(&fixture)
        configuration = try fixture.configuration(in: directory)
        endpoint = TokenEndpointClient(configuration: configuration.token)
        broker = TokenBroker(configuration: configuration.token, endpoint: endpoint, logger: logs.logger, clock: clock)
    }

    var store: TokenStore { TokenStore(path: configuration.token.store) }

    /// Puts a refresh token into the store and makes the issuer accept it, as a login would.
    func handOverRefreshToken(_ token: String = "rt-initial") throws {
        issuer.grantRefreshToken(token)
        try store.write(TokenSet(refreshToken: token))
    }

    func storedTokens() throws -> TokenSet? {
        try store.read().tokens
    }

    /// Every secret this test handled: issued tokens, presented refresh tokens, the client secret.
    var secrets: [String] {
        var values: Set<String> = [ConfigFixture.clientSecret]
        for call in issuer.calls { if let token = call.form["refresh_token"] { values.insert(token) } }
        if let stored = try? storedTokens() {
            if let token = stored.accessToken { values.insert(token) }
            if let token = stored.refreshToken { values.insert(token) }
        }
        return values.sorted()
    }

    /// Fails the test if a secret appears in the logs.
    func expectNoSecretsLogged(sourceLocation: SourceLocation = #_sourceLocation) {
        let text = logs.text
        for secret in secrets {
            #expect(!text.contains(secret), "a secret was logged", sourceLocation: sourceLocation)
        }
    }

    func shutdown() async {
        await endpoint.shutdown()
        await issuer.shutdown()
    }
}
