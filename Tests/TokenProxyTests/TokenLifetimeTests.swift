import Foundation
import Testing

@testable import TokenProxy

@Suite("Expiry, refresh windows and backoff (SPEC §2, §4)")
struct TokenLifetimeTests {
    let received = Date(timeIntervalSince1970: 1_800_000_000)

    private func granted(_ body: String) -> TokenSet? {
        if case .granted(let tokens) = TokenResponse.interpret(status: 200, retryAfter: nil, body: Data(body.utf8), receivedAt: received, defaultLifetime: .seconds(1800)) {
            return tokens
        }
        return nil
    }

    private static func jwt(exp: Double) -> String {
        let payload = Data("{\"exp\":\(Int(exp))}".utf8).base64EncodedString()
            .replacingOccurrences(of: "=", with: "").replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        return "eyJhbGciOiJub25lIn0.\(payload).sig"
    }

    @Test func expiryComesFromExpiresIn() {
        let tokens = granted(#"{"access_token": "a", "token_type": "bearer", "expires_in": 3600, "scope": "s"}"#)
        #expect(tokens?.expiresAt == received + 3600)
        #expect(tokens?.obtainedAt == received)
        #expect(tokens?.tokenType == "Bearer")
        #expect(tokens?.scope == "s")
        #expect(granted(#"{"access_token": "a", "expires_in": "60"}"#)?.expiresAt == received + 60)
    }

    @Test func aTokenExchangesNATokenTypeIsSentAsABearerToken() {
        // RFC 8693 §2.2.1: "N_A" is no scheme; the token still goes upstream as a bearer token.
        let tokens = granted(#"{"access_token": "a", "token_type": "N_A", "issued_token_type": "urn:ietf:params:oauth:token-type:jwt", "expires_in": 60}"#)
        #expect(tokens?.authorizationValue == "Bearer a")
    }

    @Test func expiryFallsBackToTheJWTExpClaimThenTheDefaultLifetime() {
        let token = Self.jwt(exp: received.timeIntervalSince1970 + 900)
        #expect(granted("{\"access_token\": \"\(token)\"}")?.expiresAt == received + 900)
        #expect(granted(#"{"access_token": "opaque"}"#)?.expiresAt == received + 1800)
        // expires_in wins over the JWT claim.
        #expect(granted("{\"access_token\": \"\(token)\", \"expires_in\": 60}")?.expiresAt == received + 60)
    }

    @Test("hostile or garbled answers are transient failures", arguments: [
        "not json", "[]", #"{"token_type": "Bearer"}"#, #"{"access_token": 42}"#, #"{"access_token": ""}"#,
        #"{"access_token": "a\r\nX-Evil: 1"}"#, #"{"access_token": "a b"}"#, #"{"access_token": "a", "expires_in": -5}"#,
        #"{"access_token": "a", "expires_in": 0}"#, #"{"access_token": "a", "expires_in": "soon"}"#,
        #"{"access_token": "a", "refresh_token": ["x"]}"#, #"{"access_token": "a", "token_type": "Mac\nX"}"#,
    ])
    func hostileAnswers(body: String) {
        let outcome = TokenResponse.interpret(status: 200, retryAfter: nil, body: Data(body.utf8), receivedAt: received, defaultLifetime: .seconds(60))
        guard case .transient = outcome else {
            Issue.record("expected a transient failure for \(body), got \(outcome)")
            return
        }
    }

    enum Expected: Sendable { case credentials, configuration, transient }

    @Test("failure classes", arguments: [
        (400, #"{"error": "invalid_grant"}"#, Expected.credentials), (401, #"{"error": "invalid_client"}"#, .credentials),
        (400, #"{"error": "unauthorized_client"}"#, .credentials), (400, #"{"error": "unsupported_grant_type"}"#, .credentials),
        (400, #"{"error": "invalid_scope"}"#, .configuration), (400, #"{"error": "invalid_request"}"#, .configuration),
        (400, #"{"error": "invalid_target"}"#, .configuration), (400, #"{"error": "slow_down"}"#, .transient),
        (500, #"{"error": "invalid_grant"}"#, .transient), (503, "", .transient), (429, "", .transient), (502, "<html>", .transient),
    ])
    func failureClasses(status: Int, body: String, expected: Expected) {
        let outcome = TokenResponse.interpret(status: status, retryAfter: "7", body: Data(body.utf8), receivedAt: received, defaultLifetime: .seconds(60))
        switch outcome {
        case .refused(let refusal):
            #expect(refusal.kind == (expected == .credentials ? .credentials : .configuration) && expected != .transient, "\(body)")
        case .transient(_, let retryAfter):
            #expect(expected == .transient)
            #expect(retryAfter == .seconds(7))
        case .granted: Issue.record("an error status was taken as success")
        }
    }

    @Test("every refusal names the endpoint, the error and the remedy", arguments: [
        ("invalid_grant", "tokenproxy login"), ("invalid_client", "client secret"), ("unauthorized_client", "token.grant"),
        ("unsupported_grant_type", "token.grant"), ("invalid_scope", "token.scope"), ("invalid_target", "token.extraParams"),
        ("invalid_request", "token.clientAuth"),
    ])
    func refusalMessages(error: String, remedy: String) throws {
        let configuration = try ConfigFixture(endpoint: "http://127.0.0.1:9/oauth/token").configuration(in: TemporaryDirectory())
        let refusal = try #require(TokenEndpointRefusal(error: error, description: "said so"))
        let message = refusal.message(configuration.token)
        #expect(message.contains("http://127.0.0.1:9/oauth/token") && message.contains(error) && message.contains("said so") && message.contains(remedy), "\(message)")
        #expect(!message.contains("lockFile"))
    }

    /// Times no token response should carry; none may trap, each is refused or clamped.
    @Test("hostile times in token responses", arguments: [
        (#""expires_in": 9223372036854775807"#, "clamp"), (#""expires_in": 1e300"#, "clamp"), (#""expires_in": "9223372036854775808""#, "clamp"),
        (#""expires_in": -1"#, "refuse"), (#""expires_in": -9223372036854775808"#, "refuse"), (#""expires_in": "NaN""#, "refuse"),
        (#""expires_in": "Infinity""#, "refuse"), (#""expires_in": "-5""#, "refuse"), (#""expires_in": "1e9""#, "refuse"),
        (#""expires_in": 0.2"#, "refuse"), (#""expires_in": 1e-300"#, "refuse"),
    ])
    func hostileResponseTimes(field: String, expected: String) {
        let body = #"{"access_token": "a", "# + field + "}"
        let outcome = TokenResponse.interpret(status: 200, retryAfter: nil, body: Data(body.utf8), receivedAt: received, defaultLifetime: .seconds(60))
        switch (outcome, expected) {
        case (.granted(let tokens), "clamp"):
            #expect(tokens.expiresAt == received + TokenSet.longestLifetime, "clamped to ten years")
            _ = PublishedToken(authorization: "Bearer a", accessToken: "a", mustRefreshAt: tokens.expiresAt!, expiresAt: tokens.expiresAt!).isUsable
        case (.transient(let reason, _), "refuse"):
            #expect(reason.contains("expires_in"), "says what it refused: \(reason)")
        default:
            Issue.record("\(field): expected \(expected), got \(outcome)")
        }
    }

    @Test("hostile JWT exp claims", arguments: [
        (32_503_680_000.0, "clamp"), (253_402_300_799, "clamp"), (9.2e18, "clamp"), (1e300, "clamp"), (1, "refuse"), (-5, "default"),
    ])
    func hostileJWTExpiry(exp: Double, expected: String) {
        let payload = Data("{\"exp\": \(exp)}".utf8).base64EncodedString().replacingOccurrences(of: "=", with: "")
        let body = #"{"access_token": "eyJhbGciOiJub25lIn0."# + payload + #".sig"}"#
        let outcome = TokenResponse.interpret(status: 200, retryAfter: nil, body: Data(body.utf8), receivedAt: received, defaultLifetime: .seconds(60))
        switch (outcome, expected) {
        case (.granted(let tokens), "clamp"): #expect(tokens.expiresAt == received + TokenSet.longestLifetime)
        case (.granted(let tokens), "default"): #expect(tokens.expiresAt == received + 60)
        case (.transient(let reason, _), "refuse"): #expect(reason.contains("exp"))
        default: Issue.record("exp \(exp): expected \(expected), got \(outcome)")
        }
    }

    @Test func windowsShrinkForShortLivedTokens() {
        let windows = RefreshWindows(refreshBefore: .seconds(300), minValidity: .seconds(10))
        #expect(windows.scaled(toLifetime: .seconds(3600)) == (.seconds(300), .seconds(10)))
        #expect(windows.scaled(toLifetime: .seconds(60)) == (.seconds(30), .seconds(6)))
        #expect(windows.scaled(toLifetime: .seconds(1)) == (.milliseconds(500), .milliseconds(100)))
        #expect(windows.scaled(toLifetime: nil) == (.seconds(300), .seconds(10)))
    }

    @Test func a60SecondTokenIsFreshForItsFirstHalf() {
        let windows = RefreshWindows(refreshBefore: .seconds(300), minValidity: .seconds(10))
        let tokens = TokenSet(accessToken: "a", expiresAt: received + 60, obtainedAt: received)
        #expect(windows.freshness(of: tokens, at: received) == .fresh)
        #expect(windows.freshness(of: tokens, at: received + 29) == .fresh)
        #expect(windows.freshness(of: tokens, at: received + 31) == .refreshAdvised)
        #expect(windows.freshness(of: tokens, at: received + 55) == .mustRefresh)
        #expect(windows.freshness(of: tokens, at: received + 61) == .mustRefresh)
        #expect(windows.freshness(of: TokenSet(refreshToken: "r"), at: received) == .missing)
    }

    @Test func backoffGrowsWithJitterAndNeverGivesUp() {
        let backoff = RefreshBackoff()
        // A valid token held for a day yet: growth to a few minutes.
        let day = Duration.seconds(86_400)
        #expect(backoff.delay(afterFailures: 1, untilMandatory: day, random: 0.5) == .seconds(1))
        #expect(backoff.delay(afterFailures: 2, untilMandatory: day, random: 0.5) == .seconds(2))
        #expect(backoff.delay(afterFailures: 5, untilMandatory: day, random: 0.5) == .seconds(16))
        #expect(backoff.delay(afterFailures: 20, untilMandatory: day, random: 0.5) == .seconds(300))
        #expect(backoff.delay(afterFailures: 1000, untilMandatory: day, random: 0.5) == .seconds(300))
        #expect(backoff.delay(afterFailures: 1, untilMandatory: day, random: 0) == .milliseconds(800))
        #expect(backoff.delay(afterFailures: 1, untilMandatory: day, random: 0.999_999) > .milliseconds(1199))
        // Each pause is longer than the one before, whatever the jitter, up to the ceiling.
        for failures in 1..<8 {
            #expect(backoff.delay(afterFailures: failures + 1, untilMandatory: day, random: 0) > backoff.delay(afterFailures: failures, untilMandatory: day, random: 0.999))
        }
    }

    @Test func withoutAValidTokenPausesNeverExceedThirtySeconds() {
        let backoff = RefreshBackoff()
        #expect(backoff.delay(afterFailures: 1, untilMandatory: nil, random: 0.5) == .seconds(1))
        #expect(backoff.delay(afterFailures: 5, untilMandatory: nil, random: 0.5) == .seconds(16))
        for failures in [6, 7, 20, 1000] {
            #expect(backoff.delay(afterFailures: failures, untilMandatory: nil, random: 0.999) <= .seconds(30))
        }
        #expect(backoff.delay(afterFailures: 20, untilMandatory: .zero, random: 0.5) == .seconds(30), "a token at its mandatory window is no token")
        #expect(backoff.pause(afterFailures: 1, untilMandatory: nil, retryAfter: .seconds(120), random: 0.5) == .seconds(30))
        #expect(backoff.pause(afterFailures: 1, untilMandatory: .seconds(10), retryAfter: .seconds(120), random: 0.5) == .seconds(40))
        #expect(backoff.pause(afterFailures: 1, untilMandatory: day, retryAfter: .seconds(120), random: 0.5) == .seconds(120))
    }

    private let day = Duration.seconds(86_400)

    @Test func backoffLeavesRoomForFourTriesBeforeTheMandatoryWindow() {
        let backoff = RefreshBackoff()
        #expect(backoff.delay(afterFailures: 6, untilMandatory: .seconds(40), random: 0.5) == .seconds(10))
        #expect(backoff.delay(afterFailures: 1, untilMandatory: .milliseconds(100), random: 0.5) == .milliseconds(100))
    }

    @Test("RFC 3339 round trip and offsets", arguments: [
        ("2026-11-22T10:00:00Z", 1_795_341_600.0), ("2026-11-22T10:00:00.5Z", 1_795_341_600.5),
        ("2026-11-22T12:00:00+02:00", 1_795_341_600.0), ("2026-11-21T23:00:00-11:00", 1_795_341_600.0),
        ("1970-01-01T00:00:00Z", 0), ("2000-02-29T00:00:00Z", 951_782_400),
    ])
    func rfc3339(text: String, seconds: Double) {
        #expect(RFC3339.parse(text)?.timeIntervalSince1970 == seconds)
        let formatted = RFC3339.format(Date(timeIntervalSince1970: seconds))
        #expect(RFC3339.parse(formatted)?.timeIntervalSince1970 == seconds)
        #expect(formatted.hasSuffix("Z"))
    }

    @Test("malformed timestamps", arguments: ["2026-11-22 10:00", "2026-11-22T10:00:00", "2026-13-01T00:00:00Z", "yesterday", "2026-11-22T10:00:00.Z"])
    func malformedTimestamps(text: String) {
        #expect(RFC3339.parse(text) == nil)
    }
}
