import Foundation
import Testing

@testable import TokenProxy

/// The refresh protocol of SPEC §3–§4 as a table: each row is one path through
/// ``RefreshProtocol``, each step one event and the whole action the machine answers with
/// (as async-http-client's HTTPRequestStateMachineTests; the rules as oauth2-proxy's
/// stored_session_test.go lists them). Time is an input; nothing sleeps.
@Suite("The refresh protocol")
struct RefreshProtocolTests {
    static let t0 = Date(timeIntervalSince1970: 1_800_000_000)
    static let windows = RefreshWindows(refreshBefore: .seconds(300), minValidity: .seconds(10))
    static let acceptance = RefreshGate.Acceptance(windows: windows, notObtainedBefore: nil)
    static let directory = try! TemporaryDirectory()
    static let refreshGrant = try! ConfigFixture(endpoint: "https://issuer.example/oauth/token").configuration(in: directory).token
    static let clientGrant: Configuration.Token = {
        var fixture = ConfigFixture(endpoint: "https://issuer.example/oauth/token")
        fixture.grant = "client_credentials"
        return try! fixture.configuration(in: directory).token
    }()
    static let storeName = "/var/lib/tokenproxy/token.json"

    // MARK: Fixtures

    static func token(_ access: String, refresh: String? = "rt", expiresIn: Double, obtainedAgo: Double = 3400) -> TokenSet {
        TokenSet(accessToken: access, refreshToken: refresh, expiresAt: t0 + expiresIn, obtainedAt: t0 - obtainedAgo)
    }
    /// Fresh for an hour.
    static let fresh = token("F", expiresIn: 3600, obtainedAgo: 0)
    /// Another process's newer token.
    static let newer = token("N", refresh: "rt-2", expiresIn: 3600, obtainedAgo: 0)
    /// Expired ten seconds ago.
    static let stale = token("T", expiresIn: -10)
    /// Valid by its clock (the upstream refused it with 401).
    static let rejectedByUpstream = token("T", expiresIn: 1800, obtainedAgo: 1800)
    static let onlyRefreshToken = TokenSet(refreshToken: "rt")

    /// What the endpoint issues at t0: a token with a rotated refresh token, and one without.
    static let issued = TokenSet(accessToken: "I", refreshToken: "rt-rotated", expiresAt: t0 + 3600, obtainedAt: t0)
    static let issuedWithoutRefreshToken = TokenSet(accessToken: "I", refreshToken: nil, expiresAt: t0 + 3600, obtainedAt: t0)
    /// A store whose access token a tool reported refused (dropped a minute ago).
    static var refusedEarlier: TokenSet {
        var tokens = onlyRefreshToken
        tokens.accessTokenRefusedAt = t0 - 60
        return tokens
    }
    static var issuedRememberingRefusal: TokenSet {
        var tokens = issued
        tokens.accessTokenRefusedAt = t0 - 60
        return tokens
    }
    static var issuedKeepingRefreshToken: TokenSet {
        var tokens = issuedWithoutRefreshToken
        tokens.refreshToken = "rt"
        return tokens
    }

    static func stored(_ tokens: TokenSet?, _ version: Int64?) -> StoredTokens {
        StoredTokens(contents: tokens.map { .tokens($0, discarded: nil) } ?? .empty, version: version.map(StorageVersion.row))
    }
    static let v1 = StorageVersion.row(1), v2 = StorageVersion.row(2), v3 = StorageVersion.row(3)
    static let garbled = StorageVersion.row(99)
    static let corrupt = StoredTokens(contents: .corrupt(reason: "not JSON", version: garbled), version: garbled)

    static func credentials(_ refreshToken: String?, grant: Configuration.Token.Grant = .refreshToken) -> TokenCredentials {
        TokenCredentials(grant: grant, clientID: "test-client", clientSecret: ConfigFixture.clientSecret, refreshToken: refreshToken)
    }
    static let withRT = credentials("rt")
    static let withoutRT = credentials(nil)
    static let client = credentials(nil, grant: .clientCredentials)

    static let invalidGrant = TokenEndpointRefusal(error: "invalid_grant", description: "revoked")!
    static let invalidScope = TokenEndpointRefusal(error: "invalid_scope", description: nil)!

    static func marked(_ tokens: TokenSet, dropAccess: Bool = false) -> TokenSet {
        var marked = tokens
        marked.rejection = .init(error: "invalid_grant", errorDescription: "revoked", credential: withRT.fingerprint, at: t0)
        if dropAccess { marked.dropAccessToken() }
        return marked
    }
    static func watch(_ version: StorageVersion?, storeMatters: Bool = true) -> RefreshGate.Watch {
        RefreshGate.Watch(store: version, client: withRT.clientFingerprint, storeMatters: storeMatters)
    }
    static var reauth: TokenBrokerError { .reauthenticationRequired(reason: invalidGrant.message(refreshGrant)) }
    static var noRefreshToken: TokenBrokerError {
        .reauthenticationRequired(reason: "the token store \(storeName) holds no refresh token; \(refreshGrant.reauthenticationRemedy)")
    }
    static var recordedRefusal: TokenBrokerError {
        .reauthenticationRequired(
            reason: "the token endpoint refused these credentials with invalid_grant (revoked) at \(RFC3339.format(t0 - 60)); \(refreshGrant.reauthenticationRemedy)"
        )
    }
    /// A store in which another process recorded the endpoint's refusal of `rt`, a minute ago.
    static func refusedElsewhere(_ tokens: TokenSet) -> TokenSet {
        var marked = tokens
        marked.rejection = .init(error: "invalid_grant", errorDescription: "revoked", credential: withRT.fingerprint, at: t0 - 60)
        return marked
    }

    // MARK: The table

    enum Event: Sendable {
        case start
        case storeRead(StoredTokens, at: Double = 0)
        case discovered
        case lockTaken
        case credentialsRead(TokenCredentials)
        case answered(TokenResponse)
        case written(StorageVersion?)
        case superseded
        case quarantined(moved: Bool)
        case failed(TokenBrokerError)
        case lockReleased
        case noted
        case delivered
    }

    typealias Step = (Event, RefreshProtocol.Action)

    struct Row: Sendable, CustomStringConvertible {
        var description: String
        var need: TokenBroker.Need = .usable
        var configuration = RefreshProtocolTests.refreshGrant
        var writesBeforeUse = true
        var sighting: RefreshProtocol.CorruptSighting?
        var steps: [Step]
    }

    /// The steps every stale need starts with: look, discover, lock, look again under the lock.
    static func lockedRead(_ first: StoredTokens, _ underLock: StoredTokens, at: Double = 0) -> [Step] {
        [
            (.start, .readStore(authoritative: false)),
            (.storeRead(first), .discoverEndpoints),
            (.discovered, .takeLock),
            (.lockTaken, .readStore(authoritative: true)),
        ] + [(.storeRead(underLock, at: at), .readCredentials(refreshToken: underLock.contents.tokens?.refreshToken))]
    }

    static func delivers(_ outcome: RefreshGate.Outcome) -> [Step] {
        [(.lockReleased, .deliver(outcome)), (.delivered, .done)]
    }

    static let rows: [Row] = [
        Row(description: "§3.2 the store is already fresh: adopted without the lock", steps: [
            (.start, .readStore(authoritative: false)),
            (.storeRead(stored(fresh, 1)), .deliver(.adopted(fresh))),
            (.delivered, .done),
        ]),
        Row(description: "§3.3 another process refreshed while this one waited for the lock: adopted under it", steps: [
            (.start, .readStore(authoritative: false)),
            (.storeRead(stored(stale, 1)), .discoverEndpoints),
            (.discovered, .takeLock),
            (.lockTaken, .readStore(authoritative: true)),
            (.storeRead(stored(newer, 2)), .releaseLock),
        ] + delivers(.adopted(newer))),
        Row(description: "§3.4 stale under the lock: call, write before use, unlock, hand out", steps: lockedRead(stored(stale, 1), stored(stale, 1)) + [
            (.credentialsRead(withRT), .callEndpoint(withRT)),
            (.answered(.granted(issued)), .write(issued, replacing: v1)),
            (.written(v2), .releaseLock),
        ] + delivers(.refreshed(issued))),
        Row(description: "§3.4 rotation: an answer without a refresh token keeps the old one", steps: lockedRead(stored(stale, 1), stored(stale, 1)) + [
            (.credentialsRead(withRT), .callEndpoint(withRT)),
            (.answered(.granted(issuedWithoutRefreshToken)), .write(issuedKeepingRefreshToken, replacing: v1)),
            (.written(v2), .releaseLock),
        ] + delivers(.refreshed(issuedKeepingRefreshToken))),
        Row(description: "a tool's last refusal report (credential git erase) is carried into the new token set", steps: lockedRead(stored(refusedEarlier, 1), stored(refusedEarlier, 1)) + [
            (.credentialsRead(withRT), .callEndpoint(withRT)),
            (.answered(.granted(issued)), .write(issuedRememberingRefusal, replacing: v1)),
            (.written(v2), .releaseLock),
        ] + delivers(.refreshed(issuedRememberingRefusal))),
        Row(description: "the proxy hands the token out first and writes it while still holding the lock", writesBeforeUse: false, steps: lockedRead(stored(stale, 1), stored(stale, 1)) + [
            (.credentialsRead(withRT), .callEndpoint(withRT)),
            (.answered(.granted(issued)), .deliver(.refreshed(issued))),
            (.delivered, .write(issued, replacing: v1)),
            (.written(v2), .releaseLock),
            (.lockReleased, .done),
        ]),
        Row(description: "§3 invalid_grant: the store is read again under the lock, and a newer token there adopted", steps: lockedRead(stored(stale, 1), stored(stale, 1)) + [
            (.credentialsRead(withRT), .callEndpoint(withRT)),
            (.answered(.refused(invalidGrant)), .readStore(authoritative: true)),
            (.storeRead(stored(newer, 3)), .note(.refusedButStoreChanged(error: "invalid_grant"))),
            (.noted, .releaseLock),
        ] + delivers(.adopted(newer))),
        Row(description: "§3 invalid_grant, the store now holds another refresh token (not yet a fresh token): call again with it", steps: lockedRead(stored(stale, 1), stored(stale, 1)) + [
            (.credentialsRead(withRT), .callEndpoint(withRT)),
            (.answered(.refused(invalidGrant)), .readStore(authoritative: true)),
            (.storeRead(stored(token("T", refresh: "rt-2", expiresIn: -10), 3)), .note(.refusedButStoreChanged(error: "invalid_grant"))),
            (.noted, .readCredentials(refreshToken: "rt-2")),
        ]),
        Row(description: "§4 a 401-caused refresh refused with the store unchanged: the rejection is written and the rejected token dropped", need: .replacing(rejected: "T"), steps: lockedRead(stored(rejectedByUpstream, 1), stored(rejectedByUpstream, 1)) + [
            (.credentialsRead(withRT), .callEndpoint(withRT)),
            (.answered(.refused(invalidGrant)), .readStore(authoritative: true)),
            (.storeRead(stored(rejectedByUpstream, 1)), .write(marked(rejectedByUpstream, dropAccess: true), replacing: v1)),
            (.written(v2), .releaseLock),
        ] + delivers(.refused(reauth, watch: watch(v2), remaining: marked(rejectedByUpstream, dropAccess: true)))),
        Row(description: "§4 an expiry refresh refused: the rejection is written, the access token stays", steps: lockedRead(stored(stale, 1), stored(stale, 1)) + [
            (.credentialsRead(withRT), .callEndpoint(withRT)),
            (.answered(.refused(invalidGrant)), .readStore(authoritative: true)),
            (.storeRead(stored(stale, 1)), .write(marked(stale), replacing: v1)),
            (.written(v2), .releaseLock),
        ] + delivers(.refused(reauth, watch: watch(v2), remaining: marked(stale)))),
        Row(description: "§4 invalid_scope is a configuration error: the store is not touched", steps: lockedRead(stored(stale, 1), stored(stale, 1)) + [
            (.credentialsRead(withRT), .callEndpoint(withRT)),
            (.answered(.refused(invalidScope)), .releaseLock),
        ] + delivers(.refused(.misconfigured(reason: invalidScope.message(refreshGrant)), watch: watch(v1, storeMatters: false), remaining: nil))),
        Row(description: "§3.1 a fenced write is refused (the lock was lost): the newer stored token is adopted", steps: lockedRead(stored(stale, 1), stored(stale, 1)) + [
            (.credentialsRead(withRT), .callEndpoint(withRT)),
            (.answered(.granted(issued)), .write(issued, replacing: v1)),
            (.superseded, .note(.superseded(discarding: "the token this process obtained"))),
            (.noted, .readStore(authoritative: true)),
            (.storeRead(stored(newer, 5)), .releaseLock),
        ] + delivers(.adopted(newer))),
        Row(description: "§3.1 a fenced write is refused and the store holds nothing usable: tried again later", steps: lockedRead(stored(stale, 1), stored(stale, 1)) + [
            (.credentialsRead(withRT), .callEndpoint(withRT)),
            (.answered(.granted(issued)), .write(issued, replacing: v1)),
            (.superseded, .note(.superseded(discarding: "the token this process obtained"))),
            (.noted, .readStore(authoritative: true)),
            (.storeRead(stored(stale, 5)), .releaseLock),
        ] + delivers(.failed(.unavailable(reason: "the token store \(storeName) moved on during the refresh; trying again", retryAfter: nil), retryAfter: nil))),
        Row(description: "§3 a corrupt store is treated as empty and left in place the first time; the new token replaces it (kept aside)", configuration: clientGrant, steps: [
            (.start, .readStore(authoritative: false)),
            (.storeRead(corrupt), .discoverEndpoints),
            (.discovered, .takeLock),
            (.lockTaken, .readStore(authoritative: true)),
            (.storeRead(corrupt), .note(.corruptStoreKept(reason: "not JSON"))),
            (.noted, .readCredentials(refreshToken: nil)),
            (.credentialsRead(client), .callEndpoint(client)),
            (.answered(.granted(issuedWithoutRefreshToken)), .quarantine(garbled, reason: "not JSON")),
            (.quarantined(moved: true), .write(issuedWithoutRefreshToken, replacing: nil)),
            (.written(v1), .releaseLock),
        ] + delivers(.refreshed(issuedWithoutRefreshToken))),
        Row(description: "§3 a corrupt store unchanged for 5 s is moved aside, then the store is empty", configuration: clientGrant, sighting: .init(version: garbled, since: t0 - 5), steps: [
            (.start, .readStore(authoritative: false)),
            (.storeRead(corrupt), .discoverEndpoints),
            (.discovered, .takeLock),
            (.lockTaken, .readStore(authoritative: true)),
            (.storeRead(corrupt), .quarantine(garbled, reason: "not JSON")),
            (.quarantined(moved: true), .readCredentials(refreshToken: nil)),
        ]),
        Row(description: "§3 a corrupt store seen 4.9 s ago is not moved yet", configuration: clientGrant, sighting: .init(version: garbled, since: t0 - 4.9), steps: [
            (.start, .readStore(authoritative: false)),
            (.storeRead(corrupt), .discoverEndpoints),
            (.discovered, .takeLock),
            (.lockTaken, .readStore(authoritative: true)),
            (.storeRead(corrupt), .note(.corruptStoreKept(reason: "not JSON"))),
        ]),
        Row(description: "§3 a corrupt store that changed since it was first seen: the 5 s start again", configuration: clientGrant, sighting: .init(version: .row(98), since: t0 - 60), steps: [
            (.start, .readStore(authoritative: false)),
            (.storeRead(corrupt), .discoverEndpoints),
            (.discovered, .takeLock),
            (.lockTaken, .readStore(authoritative: true)),
            (.storeRead(corrupt), .note(.corruptStoreKept(reason: "not JSON"))),
        ]),
        Row(description: "§1 no refresh token: reauthentication_required without a call (nor discovery)", steps: [
            (.start, .readStore(authoritative: false)),
            (.storeRead(stored(nil, nil)), .takeLock),
            (.lockTaken, .readStore(authoritative: true)),
            (.storeRead(stored(nil, nil)), .readCredentials(refreshToken: nil)),
            (.credentialsRead(withoutRT), .releaseLock),
        ] + delivers(.refused(noRefreshToken, watch: watch(nil), remaining: nil))),
        Row(description: "§1 a refresh token handed over between the two reads: discovered under the lock, then called", steps: [
            (.start, .readStore(authoritative: false)),
            (.storeRead(stored(nil, nil)), .takeLock),
            (.lockTaken, .readStore(authoritative: true)),
            (.storeRead(stored(onlyRefreshToken, 1)), .discoverEndpoints),
            (.discovered, .readCredentials(refreshToken: "rt")),
            (.credentialsRead(withRT), .callEndpoint(withRT)),
        ]),
        Row(description: "§3 another process recorded the refusal of these credentials: believed without a call", steps: lockedRead(stored(refusedElsewhere(stale), 1), stored(refusedElsewhere(stale), 1)) + [
            (.credentialsRead(withRT), .releaseLock),
        ] + delivers(.refused(recordedRefusal, watch: watch(v1), remaining: refusedElsewhere(stale)))),
        Row(description: "§4 a 401 for the stored token, its refusal recorded by another process: the token is dropped from the store too", need: .replacing(rejected: "T"), steps: lockedRead(stored(refusedElsewhere(rejectedByUpstream), 1), stored(refusedElsewhere(rejectedByUpstream), 1)) + [
            (.credentialsRead(withRT), .write({ var t = refusedElsewhere(rejectedByUpstream); t.dropAccessToken(); return t }(), replacing: v1)),
            (.written(v2), .releaseLock),
        ] + delivers(.refused(recordedRefusal, watch: watch(v2), remaining: { var t = refusedElsewhere(rejectedByUpstream); t.dropAccessToken(); return t }()))),
        Row(description: "§4 a new client secret is not the refused credentials: called again", steps: lockedRead(stored(refusedElsewhere(stale), 1), stored(refusedElsewhere(stale), 1)) + [
            (.credentialsRead(TokenCredentials(grant: .refreshToken, clientID: "test-client", clientSecret: "rotated", refreshToken: "rt")),
             .callEndpoint(TokenCredentials(grant: .refreshToken, clientID: "test-client", clientSecret: "rotated", refreshToken: "rt"))),
        ]),
        Row(description: "§4 a transient failure: failed, with the endpoint's Retry-After", steps: lockedRead(stored(stale, 1), stored(stale, 1)) + [
            (.credentialsRead(withRT), .callEndpoint(withRT)),
            (.answered(.transient(reason: "answered HTTP 503", retryAfter: .seconds(7))), .releaseLock),
        ] + delivers(.failed(.unavailable(reason: "answered HTTP 503", retryAfter: .seconds(7)), retryAfter: .seconds(7)))),
        Row(description: "the lock could not be had in time: failed, nothing to release", steps: [
            (.start, .readStore(authoritative: false)),
            (.storeRead(stored(stale, 1)), .discoverEndpoints),
            (.discovered, .takeLock),
            (.failed(.unavailable(reason: "lock busy", retryAfter: nil)), .deliver(.failed(.unavailable(reason: "lock busy", retryAfter: nil), retryAfter: nil))),
            (.delivered, .done),
        ]),
        Row(description: "the new token cannot be written: failed, and the lock released", steps: lockedRead(stored(stale, 1), stored(stale, 1)) + [
            (.credentialsRead(withRT), .callEndpoint(withRT)),
            (.answered(.granted(issued)), .write(issued, replacing: v1)),
            (.failed(.unavailable(reason: "disk full", retryAfter: nil)), .releaseLock),
        ] + delivers(.failed(.unavailable(reason: "disk full", retryAfter: nil), retryAfter: nil))),
        Row(description: "a 401 for an older token, the store holds a newer one: adopted without the lock", need: .replacing(rejected: "T"), steps: [
            (.start, .readStore(authoritative: false)),
            (.storeRead(stored(newer, 2)), .deliver(.adopted(newer))),
        ]),
        Row(description: "token --print needs a fresh token: one in its advisory window is refreshed", need: .fresh, steps: lockedRead(stored(token("A", expiresIn: 200), 1), stored(token("A", expiresIn: 200), 1)) + [
            (.credentialsRead(withRT), .callEndpoint(withRT)),
        ]),
    ]

    @Test("paths", arguments: rows)
    func path(row: Row) {
        var machine = RefreshProtocol(
            need: row.need, configuration: row.configuration, storeName: Self.storeName, writesBeforeUse: row.writesBeforeUse,
            acceptance: Self.acceptance, corruptSighting: row.sighting
        )
        for (index, (event, expected)) in row.steps.enumerated() {
            let action = Self.run(event, on: &machine)
            #expect(action == expected, "step \(index + 1)")
            if action != expected { return }
        }
    }

    static func run(_ event: Event, on machine: inout RefreshProtocol) -> RefreshProtocol.Action {
        switch event {
        case .start: machine.start()
        case .storeRead(let read, let at): machine.storeRead(read, now: t0 + at)
        case .discovered: machine.discovered(machine.configuration)
        case .lockTaken: machine.lockTaken()
        case .credentialsRead(let credentials): machine.credentialsRead(credentials, now: t0)
        case .answered(let response): machine.answered(response)
        case .written(let version): machine.written(version)
        case .superseded: machine.superseded()
        case .quarantined(let moved): machine.quarantined(moved: moved)
        case .failed(let error): machine.failed(error)
        case .lockReleased: machine.lockReleased()
        case .noted: machine.noted()
        case .delivered: machine.delivered()
        }
    }

    @Test func aCorruptStoreIsRememberedSinceItsFirstSightingAndForgottenOnceMovedAside() {
        var machine = RefreshProtocol(need: .usable, configuration: Self.clientGrant, storeName: Self.storeName, writesBeforeUse: true, acceptance: Self.acceptance, corruptSighting: nil)
        _ = machine.start()
        _ = machine.storeRead(Self.corrupt, now: Self.t0)
        _ = machine.discovered(Self.clientGrant)
        _ = machine.lockTaken()
        _ = machine.storeRead(Self.corrupt, now: Self.t0 + 1)
        #expect(machine.corruptSighting == .init(version: Self.garbled, since: Self.t0 + 1))

        var later = RefreshProtocol(need: .usable, configuration: Self.clientGrant, storeName: Self.storeName, writesBeforeUse: true, acceptance: Self.acceptance, corruptSighting: machine.corruptSighting)
        _ = later.start()
        _ = later.storeRead(Self.corrupt, now: Self.t0 + 6)
        _ = later.discovered(Self.clientGrant)
        _ = later.lockTaken()
        #expect(later.storeRead(Self.corrupt, now: Self.t0 + 6) == .quarantine(Self.garbled, reason: "not JSON"))
        _ = later.quarantined(moved: true)
        #expect(later.corruptSighting == nil)
    }
}

extension RefreshProtocol {
    /// The endpoint's answer at the tables' t0.
    fileprivate mutating func answered(_ response: TokenResponse) -> Action {
        endpointAnswered(response, now: RefreshProtocolTests.t0)
    }
}
