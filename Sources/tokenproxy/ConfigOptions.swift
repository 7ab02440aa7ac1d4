import ArgumentParser
import FoundationEssentials
import Logging
import TokenProxy

/// The `--config` option shared by every command, and loading what it names.
struct ConfigOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The configuration file.", discussion: "Defaults to $TOKENPROXY_CONFIG, then /etc/tokenproxy/config.json.", valueName: "path"))
    var config: String?

    var path: String { config ?? Configuration.defaultPath() }

    /// The validated configuration; on problems, prints all of them to stderr and exits 2.
    func load() throws -> Configuration {
        do {
            return try Configuration.load(path: path)
        } catch {
            printError(error.description)
            throw ExitCode(2)
        }
    }
}

/// `--identity` of the commands that act on one identity's token (SPEC §1, §2.4).
struct IdentityOption: ParsableArguments {
    @Option(help: ArgumentHelp("The identity to act on (a name under identities, or default).", discussion: "Defaults to default (the top-level token), or the only identity.", valueName: "name"))
    var identity: String?

    /// `configuration` acting on the named identity; an unknown or missing name exits 2.
    func select(in configuration: Configuration) throws -> Configuration {
        switch configuration.selecting(identity) {
        case .success(let selected): return selected
        case .failure(let problem):
            printError("tokenproxy: \(problem)")
            throw ExitStatus.configurationError
        }
    }
}

/// Exit codes of SPEC §1.
enum ExitStatus {
    static let runtimeFailure = ExitCode(1)
    static let configurationError = ExitCode(2)
    static let reauthenticationRequired = ExitCode(3)

    static func forBrokerError(_ error: TokenBrokerError) -> ExitCode {
        switch error {
        case .reauthenticationRequired: reauthenticationRequired
        case .unavailable, .rateLimited: runtimeFailure
        case .misconfigured: configurationError
        }
    }
}

func printError(_ message: String) {
    StderrLogHandler.writeToStandardError(message + "\n")
}

/// Runs `body` with the broker of `configuration`'s selected identity (the brokers of the
/// others beside it, for a token exchange's subject), shutting them down afterwards.
func withTokenBroker<T: Sendable>(
    _ configuration: Configuration, _ body: (TokenBroker) async throws -> T
) async throws -> T {
    StderrLogHandler.bootstrap(level: configuration.log.level, format: configuration.log.format)
    let logger = Logger(label: "tokenproxy")
    let brokers: IdentityBrokers
    do {
        brokers = try await IdentityBrokers.make(configuration: configuration, environment: ProcessInfo.processInfo.environment, logger: logger, writesBeforeUse: true)
    } catch {
        printError("tokenproxy: \(error)")
        throw ExitStatus.configurationError
    }
    let broker = brokers[configuration.tokenIdentity]!
    do {
        let result = try await body(broker)
        await brokers.shutdown()
        return result
    } catch {
        await brokers.shutdown()
        throw error
    }
}
