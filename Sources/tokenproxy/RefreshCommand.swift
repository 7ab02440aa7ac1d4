import ArgumentParser
import FoundationEssentials
import TokenProxy

struct RefreshCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "refresh",
        abstract: "Force one token refresh through the shared store and lock.",
        discussion: "Exit 0 refreshed, 1 transient failure (try again later), 3 re-authentication needed."
    )

    @OptionGroup var options: ConfigOptions
    @OptionGroup var identityOption: IdentityOption

    func run() async throws {
        let configuration = try identityOption.select(in: options.load())
        try await withTokenBroker(configuration) { broker in
            do throws(TokenBrokerError) {
                let tokens = try await broker.token(for: .forced)
                print("token refreshed; valid until \(tokens.expiresAt.map(RFC3339.format) ?? "unknown")")
            } catch {
                printError("tokenproxy refresh: \(error)")
                throw ExitStatus.forBrokerError(error)
            }
        }
    }
}
