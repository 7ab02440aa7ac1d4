import Foundation
import Logging
import Testing

@testable import TokenProxy

@Suite("Token store (SPEC §3)")
struct TokenStoreTests {
    @Test func writesAtomicallyWithMode0600() throws {
        let directory = try TemporaryDirectory()
        let store = TokenStore(path: directory.file("token.json"))
        umask(0o022)
        let now = Date(timeIntervalSince1970: 1_799_999_500)
        let tokens = TokenSet(accessToken: "a", refreshToken: "r", expiresAt: Date(timeIntervalSince1970: 1_800_000_000.25), obtainedAt: Date(timeIntervalSince1970: 1_799_999_000), scope: "s")
        try store.write(tokens)
        #expect(directory.mode(of: "token.json") == 0o600)
        #expect(directory.names() == ["token.json"], "no temporary file is left behind")
        #expect(try store.read(now: now) == .tokens(tokens, discarded: nil))
        let text = try #require(directory.read("token.json"))
        #expect(text.contains(#""expires_at": "2027-01-15T08:00:00.250Z""#))
        #expect(text.hasPrefix(#"{"version": 1, "#))
    }

    @Test func aRefreshTokenOnlyStoreIsValid() throws {
        let directory = try TemporaryDirectory()
        try directory.write("token.json", #"{"version": 1, "refresh_token": "handed-over"}"#)
        let contents = try TokenStore(path: directory.file("token.json")).read()
        #expect(contents == .tokens(TokenSet(refreshToken: "handed-over"), discarded: nil))
    }

    @Test("a missing store, or one of nothing but white space, is empty", arguments: [nil, "", "\n", "  \r\n\t"])
    func emptyStores(text: String?) throws {
        let directory = try TemporaryDirectory()
        if let text { try directory.write("token.json", text) }
        #expect(try TokenStore(path: directory.file("token.json")).read() == .empty)
        #expect(directory.names() == (text == nil ? [] : ["token.json"]))
    }

    @Test("unparseable stores are reported, and moved aside only while unchanged", arguments: [
        "{\"version\": 1, \"access_token\": \"a", "null", #"{"version": 2}"#, #"{"access_token": "a"}"#,
        #"{"version": 1, "expires_at": "tomorrow"}"#, #"{"version": 1, "refresh_token": 5}"#,
    ])
    func corruptStores(text: String) throws {
        let directory = try TemporaryDirectory()
        try directory.write("token.json", text)
        let store = TokenStore(path: directory.file("token.json"))
        guard case .corrupt(_, .file(let fingerprint)) = try store.read() else {
            Issue.record("not reported as corrupt")
            return
        }
        #expect(directory.names() == ["token.json"], "a read leaves the file alone")
        // A writer finishes the file: the old judgement no longer applies.
        try directory.write("token.json", text + " ")
        #expect(try store.quarantine(ifStill: fingerprint, now: Date()) == nil)
        #expect(directory.names() == ["token.json"])

        guard case .corrupt(_, .file(let unchanged)) = try store.read() else {
            Issue.record("not reported as corrupt")
            return
        }
        let movedTo = try #require(try store.quarantine(ifStill: unchanged, now: Date()))
        #expect(movedTo.hasPrefix(directory.file("token.json.corrupt-")))
        #expect(directory.names().count == 1 && directory.names()[0].hasPrefix("token.json.corrupt-"))
        #expect(directory.read(URL(fileURLWithPath: movedTo).lastPathComponent) == text + " ", "the corrupt file is kept for inspection")
    }

    @Test("stored values that cannot go into a header, or times out of range, drop the access token only", arguments: [
        (#""access_token": "at\r\nX-Evil: 1", "expires_at": "2026-11-24T12:00:00Z""#, "HTTP header"),
        (#""access_token": "at\u0000", "expires_at": "2026-11-24T12:00:00Z""#, "HTTP header"),
        (#""access_token": "at", "token_type": "Bearer\nX: 1", "expires_at": "2026-11-24T12:00:00Z""#, "token_type"),
        (#""access_token": "at", "expires_at": "9999-12-31T23:59:59Z""#, "expires_at"),
        (#""access_token": "at", "expires_at": "3000-01-01T00:00:00Z""#, "expires_at"),
        (#""access_token": "at", "expires_at": "0001-01-01T00:00:00Z""#, "expires_at"),
        (#""access_token": "at", "expires_at": "2026-11-24T12:00:00Z", "obtained_at": "0001-01-01T00:00:00Z""#, "obtained_at"),
        (#""access_token": "at", "expires_at": "1969-12-31T23:59:59Z""#, "expires_at"),
    ])
    func hostileStoreValues(fields: String, named: String) throws {
        let directory = try TemporaryDirectory()
        try directory.write("token.json", #"{"version": 1, "refresh_token": "rt-kept", "# + fields + "}")
        let now = try #require(RFC3339.parse("2026-11-24T11:00:00Z"))
        guard case .tokens(let tokens, let discarded?) = try TokenStore(path: directory.file("token.json")).read(now: now) else {
            Issue.record("the access token was not refused")
            return
        }
        #expect(tokens.accessToken == nil && tokens.expiresAt == nil)
        #expect(tokens.refreshToken == "rt-kept")
        #expect(discarded.contains(named), "\(discarded)")
        // Nothing downstream of the store traps on what is left.
        let windows = RefreshWindows(refreshBefore: .seconds(300), minValidity: .seconds(10))
        #expect(windows.freshness(of: tokens, at: now) == .missing)
    }

    @Test func aMissingFolderIsCreated0700WithItsParents() throws {
        let directory = try TemporaryDirectory()
        let store = TokenStore(path: directory.file("state/tokens/token.json"))
        #expect(try store.read() == .empty, "reading does not create anything")
        #expect(directory.names() == [])
        let lock = try FileLock.acquire(path: directory.file("state/tokens/token.lock"), timeout: .seconds(1))
        lock.release()
        try store.write(TokenSet(refreshToken: "r"))
        #expect(directory.mode(of: "state") == 0o700)
        #expect(directory.mode(of: "state/tokens") == 0o700)
        #expect(directory.mode(of: "state/tokens/token.json") == 0o600)
    }

    @Test func symbolicLinksAreRefusedAndTheirTargetsNotCreated() throws {
        let directory = try TemporaryDirectory()
        symlink(directory.file("elsewhere.json"), directory.file("token.json"))
        symlink(directory.file("elsewhere.lock"), directory.file("token.lock"))
        let store = TokenStore(path: directory.file("token.json"))
        #expect(throws: TokenStoreError.self) { try store.read() }
        do {
            try store.write(TokenSet(refreshToken: "r"))
            Issue.record("a symbolic link was written through")
        } catch {
            guard case .refused(_, let reason) = error else { return #expect(Bool(false), "\(error)") }
            #expect(reason.contains("symbolic link") && reason.contains(directory.file("token.json")))
        }
        do {
            _ = try FileLock.acquire(path: directory.file("token.lock"), timeout: .seconds(1))
            Issue.record("a symbolic link was locked")
        } catch {
            guard case .refused(_, let reason) = error else { return #expect(Bool(false), "\(error)") }
            #expect(reason.contains("symbolic link") && reason.contains("token.lockFile"))
        }
        #expect(!directory.names().contains("elsewhere.json") && !directory.names().contains("elsewhere.lock"), "targets not created")
    }

    @Test("a store in a folder others can write is refused", arguments: [0o777, 0o775, 0o1777, 0o770])
    func writableFoldersAreRefused(mode: Int) throws {
        let directory = try TemporaryDirectory()
        mkdir(directory.file("shared"), 0o700)
        chmod(directory.file("shared"), mode_t(mode))
        try directory.write("shared/token.json", #"{"version": 1, "refresh_token": "r"}"#)
        let store = TokenStore(path: directory.file("shared/token.json"))
        do {
            _ = try store.read()
            Issue.record("read from a folder of mode \(String(mode, radix: 8))")
        } catch {
            guard case .refused(_, let reason) = error else { return #expect(Bool(false), "\(error)") }
            #expect(reason.contains("chmod go-w \(directory.file("shared"))"), "\(reason)")
        }
        #expect(throws: FileLockError.self) { try FileLock.acquire(path: directory.file("shared/token.lock"), timeout: .seconds(1)) }
        #expect(!directory.names().contains("shared/token.lock"))
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
