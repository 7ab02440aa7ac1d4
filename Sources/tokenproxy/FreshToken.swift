import ArgumentParser
import FoundationEssentials
import TokenProxy

/// An access token handed to a tool, and what the tool's format says about it.
struct HandedOutToken {
    var accessToken: String
    var tokenType: String
    var expiresAt: Date?

    init?(_ tokens: TokenSet) {
        guard let accessToken = tokens.accessToken else { return nil }
        self.init(accessToken: accessToken, tokenType: tokens.tokenType, expiresAt: tokens.expiresAt)
    }

    init(accessToken: String, tokenType: String, expiresAt: Date?) {
        self.accessToken = accessToken
        self.tokenType = tokenType
        self.expiresAt = expiresAt
    }
}

/// The token `token --print` and every `credential` command hand out (SPEC §1, §2.5): fresh —
/// refreshed first, through the store and the lock, once inside its advisory window
/// (`token.refreshBefore`, which holds the `minValidity` window), so that a tool that keeps it
/// gets one that lasts — or, while the token endpoint fails, the stored token as long as it is
/// still usable. Failures are told on stderr, prefixed with `command`, and become the exit codes
/// of SPEC §1; nothing is printed on stdout, so that the calling tool never reads half an answer.
func freshToken(_ configuration: Configuration, command: String) async throws -> HandedOutToken {
    let tokens = try await withTokenBroker(configuration) { broker in
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
    guard let handedOut = HandedOutToken(tokens) else {
        printError("\(command): the store holds no access token after the refresh; try again")
        throw ExitStatus.runtimeFailure
    }
    return handedOut
}
