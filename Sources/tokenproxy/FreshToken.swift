import ArgumentParser
import FoundationEssentials
import TokenProxy

/// The token `token --print` and every `credential` command hand out (SPEC §1, §2.5): fresh
/// (refreshed first, through the store and the lock, when inside `token.minValidity`), or, while
/// the token endpoint fails, the stored token as long as it is still usable. Failures are told on
/// stderr, prefixed with `command`, and become the exit codes of SPEC §1; nothing is printed on
/// stdout, so that the calling tool never reads half an answer.
func freshToken(_ configuration: Configuration, command: String) async throws -> TokenSet {
    try await withTokenBroker(configuration) { broker in
        do throws(TokenBrokerError) {
            return try await broker.token(for: .fresh)
        } catch .unavailable(let reason, _) {
            // A token that is still usable beats no token while the endpoint is down.
            let stored = try? await broker.storedContents().tokens
            let token = configuration.token
            let windows = RefreshWindows(refreshBefore: token.refreshBefore, minValidity: token.minValidity)
            guard let stored, windows.freshness(of: stored, at: Date()) >= .refreshAdvised, stored.accessToken != nil else {
                printError("\(command): no token available: \(reason)")
                throw ExitStatus.runtimeFailure
            }
            printError("\(command): warning: could not refresh (\(reason)); handing out the current token, valid until \(stored.expiresAt.map(RFC3339.format) ?? "unknown")")
            return stored
        } catch {
            printError("\(command): \(error)")
            throw ExitStatus.forBrokerError(error)
        }
    }
}
