import ArgumentParser
import TokenProxy

@main
struct TokenProxyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenproxy",
        abstract: "A token-refresh sidecar: forwards local HTTP to one backend with a fresh access token attached.",
        discussion: """
            Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error, 3 re-authentication needed.
            --config defaults to $TOKENPROXY_CONFIG, then /etc/tokenproxy/config.json.
            """,
        version: TokenProxyVersion.current,
        subcommands: [CheckConfigCommand.self, TokenCommand.self, RefreshCommand.self]
    )
}
