import Foundation
import NIOConcurrencyHelpers

@testable import TokenProxy

/// A wall clock that moves only when the test moves it.
final class TestClock: Sendable {
    private let current: NIOLockedValueBox<Date>

    init(_ start: Date = Date(timeIntervalSince1970: 1_800_000_000)) {
        current = NIOLockedValueBox(start)
    }

    var now: Date { current.withLockedValue { $0 } }
    var function: @Sendable () -> Date { { self.now } }

    func advance(by seconds: Double) {
        current.withLockedValue { $0 += seconds }
    }
}

/// The storage of SPEC §3 in memory: a token set with a version number, and a lock handed to
/// waiters in turn. Shared by several brokers, it stands for processes sharing a store.
final class InMemoryTokenStorage: TokenStorage {
    private struct State {
        var tokens: TokenSet?
        var version: Int64 = 0
        var held = false
        var waiters: [CheckedContinuation<Void, Never>] = []
        var writes = 0
    }

    private let state: NIOLockedValueBox<State>
    let fencesWrites: Bool

    init(_ tokens: TokenSet? = nil, fencesWrites: Bool = false) {
        state = NIOLockedValueBox(State(tokens: tokens, version: tokens == nil ? 0 : 1))
        self.fencesWrites = fencesWrites
    }

    var name: String { "memory" }
    var tokens: TokenSet? { state.withLockedValue { $0.tokens } }
    var writes: Int { state.withLockedValue { $0.writes } }

    /// Writes as a person or another program would: without the lock.
    func handOver(_ tokens: TokenSet) {
        state.withLockedValue {
            $0.tokens = tokens
            $0.version += 1
        }
    }

    func read(now: Date, authoritative: Bool) async throws(TokenStoreError) -> StoredTokens {
        state.withLockedValue { state in
            StoredTokens(contents: state.tokens.map { .tokens($0, discarded: nil) } ?? .empty, version: state.version == 0 ? nil : .row(state.version))
        }
    }

    func currentVersion() async -> StorageVersion? {
        state.withLockedValue { $0.version == 0 ? nil : .row($0.version) }
    }

    func lock(timeout: Duration) async throws(TokenStoreError) -> any TokenStorageLock {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let granted = state.withLockedValue { state in
                guard state.held else {
                    state.held = true
                    return true
                }
                state.waiters.append(continuation)
                return false
            }
            if granted { continuation.resume() }
        }
        return Held(storage: self)
    }

    private struct Held: TokenStorageLock {
        let storage: InMemoryTokenStorage
        func release() { storage.release() }
    }

    private func release() {
        let next = state.withLockedValue { state -> CheckedContinuation<Void, Never>? in
            guard !state.waiters.isEmpty else {
                state.held = false
                return nil
            }
            return state.waiters.removeFirst()
        }
        next?.resume()
    }

    func write(_ tokens: TokenSet, replacing expected: StorageVersion?) async throws(TokenStoreError) -> StorageVersion? {
        let fences = fencesWrites
        let written: Int64? = state.withLockedValue { state in
            let current: StorageVersion? = state.version == 0 ? nil : .row(state.version)
            if fences, current != expected { return nil }
            state.tokens = tokens
            state.version += 1
            state.writes += 1
            return state.version
        }
        guard let written else { throw .superseded }
        return .row(written)
    }

    func quarantine(ifStill version: StorageVersion, now: Date) async throws(TokenStoreError) -> String? { nil }
    func watchChanges(_ changed: @escaping @Sendable () async -> Void) async {}
    func problem() async -> String? { nil }
    func shutdown() async {}
}

/// A token endpoint that answers as the test says, and records every call.
final class FakeTokenEndpoint: TokenEndpoint {
    typealias Responder = @Sendable (TokenCredentials, _ call: Int) async -> TokenResponse

    private let grant: Configuration.Token.Grant
    private let recorded = NIOLockedValueBox<[TokenCredentials]>([])
    private let responder: NIOLockedValueBox<Responder>
    let secret = NIOLockedValueBox("s3cret")

    init(grant: Configuration.Token.Grant = .refreshToken, _ respond: @escaping Responder) {
        self.grant = grant
        self.responder = NIOLockedValueBox(respond)
    }

    /// Grants `at-N` with the refresh token `rt-N` for `lifetime` seconds from `clock`'s now.
    static func granting(_ clock: TestClock, lifetime: Double = 3600, grant: Configuration.Token.Grant = .refreshToken) -> FakeTokenEndpoint {
        FakeTokenEndpoint(grant: grant) { _, call in .granted(Self.issued(call, clock: clock, lifetime: lifetime)) }
    }

    static func issued(_ call: Int, clock: TestClock, lifetime: Double = 3600) -> TokenSet {
        TokenSet(accessToken: "at-\(call)", refreshToken: "rt-\(call)", expiresAt: clock.now + lifetime, obtainedAt: clock.now)
    }

    var calls: [TokenCredentials] { recorded.withLockedValue { $0 } }
    var callCount: Int { calls.count }

    func respond(_ respond: @escaping Responder) {
        responder.withLockedValue { $0 = respond }
    }

    func credentials(refreshToken: String?) throws(TokenBrokerError) -> TokenCredentials {
        TokenCredentials(grant: grant, clientID: "test-client", clientSecret: secret.withLockedValue { $0 }, refreshToken: grant == .refreshToken ? refreshToken : nil)
    }

    func requestToken(_ credentials: TokenCredentials, grant: [(String, String)]?) async -> TokenResponse {
        let call = recorded.withLockedValue {
            $0.append(credentials)
            return $0.count
        }
        return await responder.withLockedValue { $0 }(credentials, call)
    }

    func post(_ fields: [(String, String)], to url: String, credentials: TokenCredentials) async -> Result<TokenEndpointClient.FormAnswer, TokenEndpointClient.CallFailure> {
        .failure(.init(reason: "is a fake"))
    }

    func fetchJSON(_ url: String) async -> Result<[String: JSONValue], TokenEndpointClient.CallFailure> {
        .failure(.init(reason: "is a fake"))
    }

    func adopt(_ resolved: Configuration.Token) {}
    func shutdown() async {}
}

/// Holds calls until the test lets them through, so that "while a call is in flight" needs no
/// sleep.
final class CallBarrier: Sendable {
    private let state = NIOLockedValueBox((open: false, waiting: [CheckedContinuation<Void, Never>](), arrived: 0))

    var arrived: Int { state.withLockedValue { $0.arrived } }

    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let open = state.withLockedValue { state -> Bool in
                state.arrived += 1
                if !state.open { state.waiting.append(continuation) }
                return state.open
            }
            if open { continuation.resume() }
        }
    }

    func open() {
        let waiting = state.withLockedValue { state -> [CheckedContinuation<Void, Never>] in
            state.open = true
            defer { state.waiting = [] }
            return state.waiting
        }
        waiting.forEach { $0.resume() }
    }
}
