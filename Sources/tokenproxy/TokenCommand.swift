import ArgumentParser
import FoundationEssentials
import Logging
import TokenProxy

struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token",
        abstract: "Show the token state from the store (never a secret), or print a fresh access token.",
        discussion: "Exit 0, 3 when re-authentication is needed, 2 on a configuration error (1 when --print finds the token endpoint failing)."
    )

    @OptionGroup var options: ConfigOptions
    @OptionGroup var identityOption: IdentityOption

    @Flag(help: "Make sure the access token is fresh (refreshing through the shared lock if needed) and print only it.")
    var print = false

    func run() async throws {
        let configuration = try identityOption.select(in: options.load())
        if print {
            try await printFreshToken(configuration)
        } else {
            try await showStatus(configuration)
        }
    }

    private func printFreshToken(_ configuration: Configuration) async throws {
        let tokens = try await freshToken(configuration, command: "tokenproxy token")
        Swift.print(tokens.accessToken)
    }

    private func showStatus(_ configuration: Configuration) async throws {
        let token = configuration.token
        let (contents, store) = try await withTokenBroker(configuration) { broker in
            do throws(TokenBrokerError) {
                return (try await broker.storedContents(), await broker.storeName)
            } catch {
                printError("tokenproxy token: \(error)")
                throw ExitStatus.forBrokerError(error)
            }
        }
        let report = TokenStatusReport(contents: contents, store: store, configuration: token, now: Date())
        Swift.print(report.lines.joined(separator: "\n"))
        if report.reauthenticationRequired {
            printError("tokenproxy token: re-authentication required: \(report.remedy)")
            throw ExitStatus.reauthenticationRequired
        }
    }
}
