import ArgumentParser
import FoundationEssentials
import Glibc
import TokenProxy

struct TokenProxyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenproxy",
        abstract: "A token-refresh sidecar: forwards local HTTP to one backend with a fresh access token attached.",
        discussion: """
            Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error, 3 re-authentication needed.
            --config defaults to $TOKENPROXY_CONFIG, then /etc/tokenproxy/config.json.
            """,
        version: TokenProxyVersion.current,
        subcommands: [RunCommand.self, CheckConfigCommand.self, TokenCommand.self, RefreshCommand.self, LoginCommand.self, LogoutCommand.self, CredentialCommand.self, DemoCommand.self],
        defaultSubcommand: RunCommand.self
    )
}

@main
enum Main {
    /// Like `AsyncParsableCommand.main()`, but usage errors exit 2 as SPEC §1 says, not 64.
    static func main() async {
        do {
            var command = try TokenProxyCommand.parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            var code = TokenProxyCommand.exitCode(for: error)
            if code == .validationFailure { code = ExitStatus.configurationError }
            let message = TokenProxyCommand.fullMessage(for: error)
            if !message.isEmpty {
                if code == .success { print(message) } else { printError(message) }
            }
            exit(code.rawValue)
        }
    }
}
