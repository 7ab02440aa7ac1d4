import Foundation
import Logging
import Testing

@testable import TokenProxy

@Suite("Token store (SPEC §3)")
struct TokenStoreTests {
    let logs = LogCapture()

    @Test func writesAtomicallyWithMode0600() throws {
        let directory = try TemporaryDirectory()
        let store = TokenStore(path: directory.file("token.json"))
        umask(0o022)
        let tokens = TokenSet(accessToken: "a", refreshToken: "r", expiresAt: Date(timeIntervalSince1970: 1_800_000_000.25), obtainedAt: Date(timeIntervalSince1970: 1_799_999_000), scope: "s")
        try store.write(tokens)
        #expect(directory.mode(of: "token.json") == 0o600)
        #expect(directory.names() == ["token.json"], "no temporary file is left behind")
        #expect(try store.read(quarantineCorrupt: true, logger: logs.logger) == .tokens(tokens))
        let text = try #require(directory.read("token.json"))
        #expect(text.contains(#""expires_at": "2027-01-15T08:00:00.250Z""#))
        #expect(text.hasPrefix(#"{"version": 1, "#))
    }

    @Test func aRefreshTokenOnlyStoreIsValid() throws {
        let directory = try TemporaryDirectory()
        try directory.write("token.json", #"{"version": 1, "refresh_token": "handed-over"}"#)
        let contents = try TokenStore(path: directory.file("token.json")).read(quarantineCorrupt: true, logger: logs.logger)
        #expect(contents == .tokens(TokenSet(refreshToken: "handed-over")))
    }

    @Test func aMissingStoreIsEmpty() throws {
        let directory = try TemporaryDirectory()
        #expect(try TokenStore(path: directory.file("token.json")).read(quarantineCorrupt: true, logger: logs.logger) == .empty)
    }

    @Test("corrupt stores are moved aside", arguments: [
        "{\"version\": 1, \"access_token\": \"a", "", "null", #"{"version": 2}"#, #"{"access_token": "a"}"#,
        #"{"version": 1, "expires_at": "tomorrow"}"#, #"{"version": 1, "refresh_token": 5}"#,
    ])
    func corruptStoresAreQuarantined(text: String) throws {
        let directory = try TemporaryDirectory()
        try directory.write("token.json", text)
        let store = TokenStore(path: directory.file("token.json"))
        #expect(try store.read(quarantineCorrupt: false, logger: logs.logger).tokens == nil)
        #expect(directory.names() == ["token.json"], "a read without the lock leaves the file alone")
        guard case .corrupt(_, let movedTo?) = try store.read(quarantineCorrupt: true, logger: logs.logger) else {
            Issue.record("not reported as corrupt")
            return
        }
        #expect(movedTo.hasPrefix(directory.file("token.json.corrupt-")))
        #expect(directory.names().count == 1 && directory.names()[0].hasPrefix("token.json.corrupt-"))
        #expect(directory.read(URL(fileURLWithPath: movedTo).lastPathComponent) == text, "the corrupt file is kept for inspection")
        #expect(logs.text.contains("moved aside"))
    }

    @Test func abandonedTemporaryFilesAreRemovedUnderTheLock() throws {
        let directory = try TemporaryDirectory()
        try directory.write("token.json.tmp-123-456", "{\"version\": 1, \"refresh_token\": \"half")
        try directory.write("other.json", "{}")
        TokenStore(path: directory.file("token.json")).removeAbandonedTemporaryFiles()
        #expect(directory.names() == ["other.json"])
    }

    @Test func theLockTimesOutWhileAnotherHolderHasIt() async throws {
        let directory = try TemporaryDirectory()
        let held = try FileLock.acquire(path: directory.file("token.lock"), timeout: .seconds(1))
        let started = ContinuousClock.now
        #expect(throws: FileLockError.self) { try FileLock.acquire(path: directory.file("token.lock"), timeout: .milliseconds(200)) }
        #expect(started.duration(to: .now) >= .milliseconds(200))
        held.release()
        let again = try FileLock.acquire(path: directory.file("token.lock"), timeout: .milliseconds(200))
        again.release()
        #expect(directory.mode(of: "token.lock") == 0o600)
    }
}
