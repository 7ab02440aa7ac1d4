import ArgumentParser
import FoundationEssentials
import TokenProxy

/// `tokenproxy credential kubectl|git|json` (SPEC §2.5): the shared token, in the format of a
/// tool that does not send HTTP through the proxy, got through the same store, lock and single
/// refresh as `token --print` (never a refresh token family of its own).
struct CredentialCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "credential",
        abstract: "Hand the fresh token to kubectl, git or a script, in that tool's format.",
        discussion: "Exit 0, 1 transient failure, 2 configuration error, 3 re-authentication needed; nothing is printed on stdout on failure.",
        subcommands: [KubectlCredential.self, GitCredential.self, JSONCredential.self]
    )

    /// The configuration a credential command acts on. The tools run it on every use and show
    /// its stderr to their user: it logs warnings and worse unless `log.level` asks for debug.
    static func load(_ options: ConfigOptions, _ identity: IdentityOption) throws -> Configuration {
        var configuration = try identity.select(in: options.load())
        if ["info", "notice"].contains(configuration.log.level) { configuration.log.level = "warning" }
        return configuration
    }
}

/// A client-go exec credential plugin: `users[].user.exec` in a kubeconfig.
struct KubectlCredential: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kubectl",
        abstract: "Print an ExecCredential for kubectl (a client-go exec credential plugin).",
        discussion: "The apiVersion is the one $KUBERNETES_EXEC_INFO asks for, else client.authentication.k8s.io/v1."
    )

    @OptionGroup var options: ConfigOptions
    @OptionGroup var identityOption: IdentityOption

    func run() async throws {
        let configuration = try CredentialCommand.load(options, identityOption)
        // Checked before any refresh: an answer kubectl would refuse is not worth a token call.
        let apiVersion: String
        do {
            apiVersion = try CredentialFormats.execCredentialVersion(execInfo: ProcessInfo.processInfo.environment["KUBERNETES_EXEC_INFO"])
        } catch {
            printError("tokenproxy credential kubectl: \(error)")
            throw ExitStatus.configurationError
        }
        let tokens = try await freshToken(configuration, command: "tokenproxy credential kubectl")
        print(CredentialFormats.execCredential(token: tokens.accessToken, expiresAt: tokens.expiresAt, apiVersion: apiVersion), terminator: "")
    }
}

/// A git credential helper: `git config credential.https://HOST.helper '…'`.
struct GitCredential: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "git",
        abstract: "A git credential helper: get answers the token as the password; erase of that token makes the next get refresh.",
        discussion: "store and other actions print nothing and exit 0."
    )

    @OptionGroup var options: ConfigOptions
    @OptionGroup var identityOption: IdentityOption

    @Argument(help: "The action git asks for: get, store or erase.")
    var action: String

    func run() async throws {
        // git writes the request to every helper; reading it all spares git a broken pipe.
        let request = CredentialFormats.GitRequest(parsing: Self.readRequest())
        switch action {
        case "get":
            let configuration = try CredentialCommand.load(options, identityOption)
            let tokens = try await freshToken(configuration, command: "tokenproxy credential git")
            print(CredentialFormats.gitAnswer(username: configuration.token.gitUsername, token: tokens.accessToken, expiresAt: tokens.expiresAt), terminator: "")
        case "erase":
            // git erases what it was refused; only the token tokenproxy handed out concerns it.
            guard let password = request.password, !password.isEmpty else { return }
            let configuration = try CredentialCommand.load(options, identityOption)
            try await withTokenBroker(configuration) { broker in
                do throws(TokenBrokerError) {
                    if case .throttled(let retryAfter) = try await broker.rejectStoredToken(password) {
                        // Else the next get hands out the same token with no word why.
                        printError("tokenproxy credential git erase: warning: a refused token was already replaced less than token.minRefreshInterval ago; this one is kept (the next report counts in \(retryAfter.configString))")
                    }
                } catch {
                    printError("tokenproxy credential git erase: \(error)")
                    throw ExitStatus.forBrokerError(error)
                }
            }
        default:
            // `store` (git may keep what tokenproxy gave it: nothing to keep) and actions of
            // later git versions.
            return
        }
    }

    /// What git wrote on stdin, up to a blank line or the end (at most 64 KiB: git's requests
    /// are a few lines).
    static func readRequest() -> String {
        var lines: [String] = []
        var size = 0
        while let line = readLine(strippingNewline: true), !line.isEmpty, line != "\r", size < 64 * 1024 {
            lines.append(line)
            size += line.utf8.count + 1
        }
        return lines.joined(separator: "\n") + "\n\n"
    }
}

/// `{"access_token", "token_type", "expires_at", "expires_in"}` for scripts.
struct JSONCredential: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "json",
        abstract: "Print the fresh token as JSON: access_token, token_type, expires_at (RFC 3339), expires_in (seconds)."
    )

    @OptionGroup var options: ConfigOptions
    @OptionGroup var identityOption: IdentityOption

    func run() async throws {
        let configuration = try CredentialCommand.load(options, identityOption)
        let tokens = try await freshToken(configuration, command: "tokenproxy credential json")
        print(CredentialFormats.json(token: tokens.accessToken, tokenType: tokens.tokenType, expiresAt: tokens.expiresAt, now: Date()), terminator: "")
    }
}
