import ArgumentParser
import TokenProxy

struct LogoutCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "logout",
        abstract: "Remove the tokens from the store (file or fleet), through the lock.",
        discussion: """
            A running proxy sharing the store needs a new login from its next refresh on. \
            Revocation at the issuer (RFC 7009) comes with token.revocationEndpoint; until then the refresh \
            token is only forgotten. Exit 0 removed, 1 runtime failure, 2 configuration error.
            """
    )

    @OptionGroup var options: ConfigOptions

    func run() async throws {
        let configuration = try options.load()
        try await withTokenBroker(configuration) { broker in
            do throws(TokenBrokerError) {
                try await broker.removeTokens()
                print("tokens removed from \(configuration.fleet.map { "fleet \"\($0.name)\"" } ?? configuration.token.store)")
            } catch {
                printError("tokenproxy logout: \(error)")
                throw ExitStatus.forBrokerError(error)
            }
        }
    }
}
