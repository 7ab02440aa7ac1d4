import Foundation
import Glibc
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// The `tokenproxy` binary serving, as a deployer runs it.
@Suite("tokenproxy run and demo", .serialized)
struct RunCommandTests {
    static func freePort() throws -> Int {
        let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(socket) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                _ = bind(socket, pointer, length)
                return getsockname(socket, pointer, &length)
            }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    @Test func thePlainConfigFormServesAndStopsCleanlyOnSIGTERM() async throws {
        let directory = try TemporaryDirectory()
        let issuer = try await MockTokenIssuer.start()
        let upstream = try await MockHTTPServer.start { request in
            .json(200, "{\"authorization\": \"\(request.header("Authorization")?.prefix(10) ?? "none")\"}")
        }
        let port = try Self.freePort()
        var fixture = ConfigFixture(endpoint: issuer.url)
        fixture.grant = "client_credentials"
        try fixture.write(to: directory)
        let path = directory.file("config.json")
        let text = try String(contentsOfFile: path, encoding: .utf8)
            .replacingOccurrences(of: #""upstream": { "url": "http://127.0.0.1:9" }"#, with: "\"listen\": \"127.0.0.1:\(port)\", \"upstream\": { \"url\": \"\(upstream.baseURL)\" }")
        try text.write(toFile: path, atomically: true, encoding: .utf8)

        let process = TokenProxyProcess(["--config", path])
        try process.start()
        var answer = ""
        for _ in 0..<100 {
            answer = (try? await RawHTTPClient(port: port).exchange("GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", timeout: .seconds(2))) ?? ""
            if !answer.isEmpty { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)\n\(process.stderrSoFar)")
        #expect(answer.contains(#""authorization": "Bearer at-""#))
        process.signal(SIGTERM)
        let outcome = await process.wait(timeout: .seconds(10))
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(!outcome.signaled)
        #expect(outcome.stderr.contains(#""message":"listening""#))
        #expect(!outcome.stderr.contains(ConfigFixture.clientSecret))
        let token = try #require(TokenStore(path: directory.file("token.json")).read(quarantineCorrupt: false, logger: .init(label: "t")).tokens?.accessToken)
        #expect(!outcome.stderr.contains(token), "the access token is never logged")
        await upstream.shutdown()
        await issuer.shutdown()
    }

    @Test func theDemoShowsRequestsRefreshesAndRecoveries() async throws {
        let outcome = try await TokenProxyProcess.run(["demo", "--port", "0", "--duration", "7", "--token-lifetime", "3"], timeout: .seconds(30))
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout.contains("GET /api/hello → 200"))
        #expect(outcome.stdout.contains("token refreshed"))
        #expect(outcome.stdout.contains("done: "))
        #expect(!outcome.stdout.contains("→ 401"), "the client never sees a 401")
    }
}
