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

/// Runs `body` with a broker for `configuration`, shutting it down afterwards.
func withTokenBroker<T: Sendable>(
    _ configuration: Configuration, _ body: (TokenBroker) async throws -> T
) async throws -> T {
    StderrLogHandler.bootstrap(level: configuration.log.level, format: configuration.log.format)
    let logger = Logger(label: "tokenproxy")
    let storage: any TokenStorage
    do {
        storage = try configuration.makeTokenStorage(logger: logger)
    } catch {
        printError("tokenproxy: \(error)")
        throw ExitStatus.configurationError
    }
    let broker = TokenBroker(configuration: configuration.token, endpoint: TokenEndpointClient(configuration: configuration.token), logger: logger, storage: storage)
    do {
        let result = try await body(broker)
        await broker.shutdown()
        return result
    } catch {
        await broker.shutdown()
        throw error
    }
}
