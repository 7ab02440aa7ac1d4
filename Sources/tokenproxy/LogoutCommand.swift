import ArgumentParser
import TokenProxy

struct LogoutCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "logout",
        abstract: "Revoke the refresh token at the issuer and remove the tokens from the store, through the lock.",
        discussion: """
            Revocation (RFC 7009) needs token.revocationEndpoint; without one the tokens are only forgotten. \
            The store is emptied even when the revocation fails. A running proxy sharing the store needs a new \
            login from its next refresh on. Exit 0 done, 1 the revocation failed (the store is empty all the \
            same) or the store could not be written, 2 configuration error.
            """
    )

    @OptionGroup var options: ConfigOptions
    @OptionGroup var identityOption: IdentityOption

    func run() async throws {
        let configuration = try identityOption.select(in: options.load())
        try await withTokenBroker(configuration) { broker in
            let problem: String?
            do throws(TokenBrokerError) {
                problem = try await broker.logout()
            } catch {
                printError("tokenproxy logout: \(error)")
                throw ExitStatus.forBrokerError(error)
            }
            let store = configuration.storeDescription
            if let problem {
                printError("tokenproxy logout: \(problem); the tokens were removed from \(store)")
                throw ExitStatus.runtimeFailure
            }
            let revoked = configuration.token.revocationEndpoint == nil ? "" : "revoked at the issuer and "
            print("tokens \(revoked)removed from \(store)")
        }
    }
}
