import Foundation
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// The refresh token's lifetime (SPEC §2.1): where it comes from, and the warnings before it ends.
@Suite("Refresh-token lifetime", .serialized)
struct RefreshTokenLifetimeTests {
    static let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    static func expiry(_ json: String, refreshToken: String = "rt") -> Date? {
        guard case .object(let object) = try! JSONValue.parse(Data(json.utf8)) else { return nil }
        return TokenResponse.refreshExpiry(object, refreshToken: refreshToken, receivedAt: t0)
    }

    @Test func theResponseSaysHowLongTheRefreshTokenLives() {
        #expect(Self.expiry(#"{"refresh_expires_in": 1800}"#) == Self.t0 + 1800)
        #expect(Self.expiry(#"{"refresh_token_expires_in": "86400"}"#) == Self.t0 + 86400)
        #expect(Self.expiry(#"{"refresh_expires_in": 0}"#) == nil, "Keycloak's 0 means no limit")
        #expect(Self.expiry(#"{"refresh_expires_in": "soon"}"#) == nil)
        let claims = Data(#"{"exp": 1800003600}"#.utf8).base64EncodedString().replacingOccurrences(of: "=", with: "")
        #expect(Self.expiry("{}", refreshToken: "eyJhbGciOiJub25lIn0.\(claims).sig") == Date(timeIntervalSince1970: 1_800_003_600), "a JWT refresh token's exp")
        #expect(Self.expiry("{}") == nil)

        var token = TokenSet(refreshToken: "rt")
        var configuration = try! ConfigFixture(endpoint: "http://127.0.0.1:9/token").configuration(in: TemporaryDirectory()).token
        configuration.refreshTokenLifetime = .seconds(7 * 86_400)
        configuration.stampRefreshExpiry(&token, now: Self.t0)
        #expect(token.refreshExpiresAt == Self.t0 + 7 * 86_400, "token.refreshTokenLifetime when the response is silent")
        let stored = StoreDocument.encode(token)
        #expect(try! StoreDocument.decode(stored, now: Self.t0).0.refreshExpiresAt == token.refreshExpiresAt)
    }

    @Test func aRefreshTokenAboutToExpireIsWarnedAboutEverywhere() async throws {
        let directory = try TemporaryDirectory()
        var behavior = MockTokenIssuer.Behavior()
        behavior.lifetime = .seconds(600)
        behavior.refreshTokenLifetime = 30
        let issuer = try await MockTokenIssuer.start(behavior: behavior)
        var fixture = ConfigFixture(endpoint: issuer.url)
        fixture.admin = #"{ "listen": "127.0.0.1:0" }"#
        fixture.extra = ["refreshTokenWarning": "\"20s\""]
        let config = try fixture.write(to: directory)
        issuer.grantRefreshToken("rt-initial")
        try TokenStore(path: directory.file("token.json")).write(TokenSet(refreshToken: "rt-initial"))
        let systemd = try NotifySocket(in: directory)
        let proxy = TokenProxyProcess(["run", "--config", config], environment: ["NOTIFY_SOCKET": systemd.path])
        try proxy.start()
        defer { proxy.signal(SIGKILL) }
        let admin = try #require(await proxy.listeningPort("adminPort"))
        #expect(await systemd.waitFor("READY=1") != nil)
        let issued = try #require(issuer.calls.first?.at)
        let get = { (path: String) in try await RawHTTPClient(port: admin).exchange("GET \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n") }

        let early = try await get("/status")
        #expect(early.contains("\"refreshTokenExpiresAt\":\"\(RFC3339.format(issued + 30).prefix(17))"), "\(early)")
        #expect(early.contains("\"refreshTokenWarning\":false"), "\(early)")
        let metrics = try await get("/metrics")
        let gauge = metrics.components(separatedBy: "\n").first { $0.hasPrefix(#"tokenproxy_refresh_token_expiry_seconds{identity="default"} "#) }
        let seconds = gauge.flatMap { Double($0.split(separator: " ").last ?? "") }
        #expect(seconds.map { $0 > 20 && $0 <= 30 } == true, "\(gauge ?? "no gauge")")
        #expect(!proxy.stderrSoFar.contains("refresh token expires soon"))

        // 30 s refresh token, 20 s warning window: the warning begins 10 s after the token was issued.
        let warned = try #require(await systemd.waitFor("refresh token expires at", timeout: .seconds(20)), "\(proxy.stderrSoFar)")
        let after = warned.at.timeIntervalSince(issued)
        #expect(after >= 9.5 && after < 12, "warned \(after) s after the refresh token was issued")
        #expect(warned.message.contains("log in again"))
        #expect(proxy.stderrSoFar.contains("the refresh token expires soon"))
        let late = try await get("/status")
        #expect(late.contains("\"refreshTokenWarning\":true"), "\(late)")
        await issuer.shutdown()
    }
}
