import ArgumentParser
import Foundation
import Logging
import NIOPosix
import TokenProxy

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run the proxy (the default command: `tokenproxy --config PATH` does the same)."
    )

    @OptionGroup var options: ConfigOptions

    func run() async throws {
        let configuration = try options.load()
        StderrLogHandler.bootstrap(level: configuration.log.level, format: configuration.log.format)
        let logger = Logger(label: "tokenproxy")
        let endpoint = TokenEndpointClient(configuration: configuration.token)
        let broker = TokenBroker(configuration: configuration.token, endpoint: endpoint, logger: logger, writesBeforeUse: false)
        let faults = FaultSettings(enabled: configuration.faults.enabled, upstream401Percent: configuration.faults.upstream401Percent)
        let server: ProxyServer
        do {
            server = try await ProxyServer.start(
                configuration: configuration, broker: broker, faults: faults, statistics: ProxyStatistics(),
                group: .singleton, logger: logger
            )
        } catch {
            logger.critical("cannot listen", metadata: ["listen": "\(configuration.listen)", "error": "\(error)"])
            await endpoint.shutdown()
            throw ExitStatus.runtimeFailure
        }
        logger.info("listening", metadata: ["listen": "\(server.localAddress.map { "\($0)" } ?? "\(configuration.listen)")", "upstream": "\(configuration.upstream.url)"])
        let maintenance = Task { await broker.keepFresh() }
        let signal = await TerminationSignal.wait()
        logger.info("shutting down", metadata: ["signal": "\(signal)"])
        await server.stopAccepting()
        maintenance.cancel()
        await server.closeIdleUpstreamConnections()
        await broker.finishWrites()
        await endpoint.shutdown()
    }
}
