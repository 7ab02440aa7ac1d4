import Foundation
import NIOSSL
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// `tls` under `token` and `upstream` (SPEC §2.1): a private CA, client certificates (mTLS and
/// `tls_client_auth`), `serverName`; verification is never off.
@Suite("TLS to the issuer and the upstream", .serialized)
struct TLSTests {
    static func tls(_ fields: [String: String]) -> String {
        "{ " + fields.sorted { $0.key < $1.key }.map { "\"\($0.key)\": \"\($0.value)\"" }.joined(separator: ", ") + " }"
    }

    @Test func anIssuerWithAPrivateCAIsTrustedOnlyThroughCaFile() async throws {
        let directory = try TemporaryDirectory()
        let certificates = try await TestCertificates.make(in: directory, name: "issuer")
        let issuer = try await MockTokenIssuer.start(tls: try certificates.serverContext())
        #expect(issuer.url.hasPrefix("https://"))
        var fixture = ConfigFixture(endpoint: issuer.url)
        fixture.grant = "client_credentials"
        fixture.minRefreshInterval = "0s"
        let untrusted = try await TokenProxyProcess.run(["refresh", "--config", try fixture.write(to: directory)])
        #expect(untrusted.status == 1)
        #expect(untrusted.stderr.contains("certificate failed verification") && untrusted.stderr.contains("caFile"), "\(untrusted.stderr)")

        fixture.extra = ["tls": Self.tls(["caFile": certificates.caFile])]
        let trusted = try await TokenProxyProcess.run(["refresh", "--config", try fixture.write(to: directory)])
        #expect(trusted.status == 0, "\(trusted.stderr)")
        #expect(issuer.callCount == 1)
        await issuer.shutdown()
    }

    @Test func tlsClientAuthPresentsTheClientCertificate() async throws {
        let directory = try TemporaryDirectory()
        let certificates = try await TestCertificates.make(in: directory, name: "mtls")
        let issuer = try await MockTokenIssuer.start(tls: try certificates.serverContext(requireClientCertificate: true))
        var fixture = ConfigFixture(endpoint: issuer.url)
        fixture.grant = "client_credentials"
        fixture.clientAuth = "tls_client_auth"
        fixture.secretFile = nil
        fixture.extra = ["tls": Self.tls(["caFile": certificates.caFile])]
        let config = try fixture.write(to: directory)
        let missing = try await TokenProxyProcess.run(["check-config", "--config", config])
        #expect(missing.status == 2 && missing.stderr.contains("token.tls"), "\(missing.stderr)")

        fixture.extra = ["tls": Self.tls(["caFile": certificates.caFile, "certificateFile": certificates.clientCertificateFile, "keyFile": certificates.clientKeyFile])]
        let outcome = try await TokenProxyProcess.run(["refresh", "--config", try fixture.write(to: directory)])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(issuer.calls.first?.form["client_id"] == "test-client" && issuer.calls.first?.authorization == nil)
        await issuer.shutdown()
    }

    @Test func anUpstreamWithMutualTLSAndAPrivateCA() async throws {
        let directory = try TemporaryDirectory()
        let certificates = try await TestCertificates.make(in: directory, name: "api")
        let issuer = try await MockTokenIssuer.start()
        let api = try await MockAPI.start(issuer: issuer, flaky401Percent: 0, tls: try certificates.serverContext(requireClientCertificate: true))
        var fixture = ConfigFixture(endpoint: issuer.url)
        fixture.grant = "client_credentials"
        fixture.upstream = api.baseURL
        let get = { (port: Int) in try await RawHTTPClient(port: port).exchange("GET /api/data HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", timeout: .seconds(10)) }

        for (tls, expected) in [
            (nil, "certificate failed verification"),
            (Self.tls(["caFile": certificates.caFile]), "TLS"),
            (Self.tls(["caFile": certificates.caFile, "certificateFile": certificates.clientCertificateFile, "keyFile": certificates.clientKeyFile]), "HTTP/1.1 200"),
        ] {
            fixture.upstreamExtra = tls.map { ", \"tls\": \($0)" } ?? ""
            let proxy = TokenProxyProcess(["run", "--config", try fixture.write(to: directory)])
            try proxy.start()
            let port = try #require(await proxy.listeningPort(), "\(proxy.stderrSoFar)")
            let answer = try await get(port)
            if expected.hasPrefix("HTTP") {
                #expect(answer.hasPrefix(expected), "\(answer)")
            } else {
                #expect(answer.hasPrefix("HTTP/1.1 502") && answer.contains(expected), "\(tls ?? "no tls"): \(answer)")
            }
            proxy.signal(SIGTERM)
            _ = await proxy.wait()
        }
        await api.shutdown()
        await issuer.shutdown()
    }

    @Test func serverNameNamesTheCertificatesHost() async throws {
        let directory = try TemporaryDirectory()
        let certificates = try await TestCertificates.make(in: directory, name: "named", subjectAltName: "DNS:api.internal")
        let issuer = try await MockTokenIssuer.start()
        let api = try await MockAPI.start(issuer: issuer, flaky401Percent: 0, tls: try certificates.serverContext())
        var fixture = ConfigFixture(endpoint: issuer.url)
        fixture.grant = "client_credentials"
        fixture.upstream = api.baseURL
        for (tls, expected) in [
            (Self.tls(["caFile": certificates.caFile]), "HTTP/1.1 502"),
            (Self.tls(["caFile": certificates.caFile, "serverName": "api.internal"]), "HTTP/1.1 200"),
        ] {
            fixture.upstreamExtra = ", \"tls\": \(tls)"
            let proxy = TokenProxyProcess(["run", "--config", try fixture.write(to: directory)])
            try proxy.start()
            let port = try #require(await proxy.listeningPort(), "\(proxy.stderrSoFar)")
            let answer = try await RawHTTPClient(port: port).exchange("GET /api/data HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", timeout: .seconds(10))
            #expect(answer.hasPrefix(expected), "\(tls): \(answer)")
            if expected.hasSuffix("502") { #expect(answer.contains("TLS"), "\(answer)") }
            proxy.signal(SIGTERM)
            _ = await proxy.wait()
        }
        await api.shutdown()
        await issuer.shutdown()
    }
}
