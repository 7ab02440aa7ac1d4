import ArgumentParser
import TokenProxy

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run the proxy (the default command: `tokenproxy --config PATH` does the same).",
        discussion: "SIGTERM or SIGINT drains in-flight requests and exits 0; SIGHUP reloads the configuration."
    )

    @OptionGroup var options: ConfigOptions

    func run() async throws {
        let configuration = try options.load()
        StderrLogHandler.bootstrap(level: configuration.log.level, format: configuration.log.format)
        do {
            try await ProxyApplication.run(configuration: configuration)
        } catch {
            throw ExitStatus.runtimeFailure
        }
    }
}
