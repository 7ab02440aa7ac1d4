import Foundation
import Testing

@testable import TokenProxy

/// `credential git erase` (SPEC §2.5): when a tool's report that its upstream refused a token
/// drops that token from the store, decided as a table with a test clock.
@Suite("A refused token reported by a tool")
struct RejectedTokenTests {
    static let now = Date(timeIntervalSince1970: 1_800_000_000)

    struct Row: CustomTestStringConvertible, Sendable {
        var name: String
        var stored: TokenSet?
        var rejected = "at-1"
        var decision: RejectedToken.Decision
        var testDescription: String { name }
    }

    static func stored(_ accessToken: String? = "at-1", obtainedSecondsAgo: Double = 600, refusedSecondsAgo: Double? = nil) -> TokenSet {
        var tokens = TokenSet(accessToken: accessToken, refreshToken: "rt-1", expiresAt: now + 600, obtainedAt: now - obtainedSecondsAgo)
        tokens.accessTokenRefusedAt = refusedSecondsAgo.map { now - $0 }
        return tokens
    }

    static let rows: [Row] = [
        Row(name: "the stored token, never refused before: dropped", stored: stored(), decision: .drop),
        Row(name: "a token obtained a moment ago is dropped all the same (the first report counts)", stored: stored(obtainedSecondsAgo: 0.1), decision: .drop),
        Row(name: "another token in the store: nothing (the next get hands that one out)", stored: stored("at-2"), decision: .notHeld),
        Row(name: "no access token in the store: nothing", stored: stored(nil), decision: .notHeld),
        Row(name: "an empty store: nothing", stored: nil, decision: .notHeld),
        Row(name: "a drop 0.5 s ago: kept until a second has passed", stored: stored(refusedSecondsAgo: 0.5), decision: .throttled(dropAllowedAt: now + 0.5)),
        Row(name: "a drop exactly minRefreshInterval ago: dropped", stored: stored(refusedSecondsAgo: 1), decision: .drop),
        Row(name: "a drop long ago: dropped", stored: stored(refusedSecondsAgo: 3600), decision: .drop),
        Row(name: "a drop in the future (the clock was set back) holds nothing back", stored: stored(refusedSecondsAgo: -7200), decision: .drop),
    ]

    @Test("erase", arguments: rows)
    func decide(row: Row) {
        #expect(RejectedToken.decide(stored: row.stored, rejected: row.rejected, now: Self.now, minRefreshInterval: .seconds(1)) == row.decision)
    }

    @Test func theLastDropIsKeptInTheStoreAndAcrossARefresh() throws {
        var tokens = Self.stored(refusedSecondsAgo: 2)
        let decoded = try StoreDocument.decode(StoreDocument.encode(tokens), now: Self.now).0
        #expect(decoded.accessTokenRefusedAt == Self.now - 2)
        tokens.accessTokenRefusedAt = nil
        #expect(!String(decoding: StoreDocument.encode(tokens), as: UTF8.self).contains("refused"), "absent unless a token was dropped")
    }
}
