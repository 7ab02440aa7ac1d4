import ArgumentParser
import TokenProxy

struct CheckConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate a configuration file: prints ok, or every problem found (exit 2)."
    )

    @OptionGroup var options: ConfigOptions

    func run() throws {
        let configuration = try options.load()
        for warning in configuration.environmentWarnings() {
            printError("warning: \(warning)")
        }
        print("ok")
    }
}
