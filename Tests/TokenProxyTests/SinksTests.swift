import Foundation
import Glibc
import NIOConcurrencyHelpers
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// `sinks` (SPEC §2.5): token files the running proxy keeps fresh, seen as the program that
/// reads them sees them, with the real binary.
@Suite("Token sinks", .serialized)
struct SinksTests {
    /// A running proxy (``RunningProxy``) with an admin port and the sinks given.
    @dynamicMemberLookup
    struct Setup {
        let proxy: RunningProxy

        subscript<T>(dynamicMember keyPath: KeyPath<RunningProxy, T>) -> T { proxy[keyPath: keyPath] }

        /// `sinks`: the raw JSON list; `minRefreshInterval` of the token.
        static func start(sinks: String, minRefreshInterval: String = "1s") async throws -> Setup {
            var options = RunningProxy.Options()
            options.configure = { fixture in
                fixture.admin = #"{"listen": "127.0.0.1:0"}"#
                fixture.minRefreshInterval = minRefreshInterval
                fixture.topLevel["sinks"] = sinks
            }
            return Setup(proxy: try await RunningProxy.start(options))
        }

        /// The access token the store holds now.
        var storedToken: String? { try? TokenStore(path: proxy.directory.file("token.json")).read().tokens?.accessToken }

        func admin(_ method: String, _ path: String) async throws -> String {
            try await proxy.admin(method, path)
        }

        /// `/status` as JSON.
        func status() async throws -> [String: JSONValue] {
            let answer = try await admin("GET", "/status")
            let body = answer.range(of: "\r\n\r\n").map { String(answer[$0.upperBound...]) } ?? ""
            guard case .object(let fields) = try JSONValue.parse(Data(body.utf8)) else { throw CocoaError(.coderInvalidValue) }
            return fields
        }

        /// Waits until the file `name` holds `expected` (nil: anything), at most `timeout`;
        /// returns how long it took, or `nil`.
        func waitForFile(_ name: String, toHold expected: String? = nil, timeout: Duration = .seconds(10)) async -> Duration? {
            let start = ContinuousClock.now
            while ContinuousClock.now - start < timeout {
                if let contents = proxy.directory.read(name), expected.map({ contents == $0 }) ?? !contents.isEmpty { return ContinuousClock.now - start }
                try? await Task.sleep(for: .milliseconds(10))
            }
            return nil
        }

        /// Stops the proxy; returns its stderr.
        func stop() async -> String {
            await proxy.stop()
        }
    }

    /// Whether `text` holds none of `tokens`.
    static func expectNoToken(_ tokens: some Collection<String>, in text: String, sourceLocation: SourceLocation = #_sourceLocation) {
        for token in tokens where !token.isEmpty {
            #expect(!text.contains(token), "a token appears in the log", sourceLocation: sourceLocation)
        }
    }

    @Test func sinksAreWrittenAtStartInTheirFormatAndMode() async throws {
        let setup = try await Setup.start(sinks: #"""
            [{"path": "run/sinks/api.token", "mode": "0640"}, {"path": "run/sinks/api.json", "format": "json"}]
            """#)
        #expect(await setup.waitForFile("run/sinks/api.token") != nil, "\(setup.process.stderrSoFar)")
        #expect(await setup.waitForFile("run/sinks/api.json") != nil)
        let token = try #require(setup.storedToken)
        #expect(setup.directory.read("run/sinks/api.token") == token, "raw: the token alone, no newline")
        #expect(setup.issuer.isValid(accessToken: token))
        #expect(setup.directory.mode(of: "run/sinks/api.token") == 0o640)
        #expect(setup.directory.mode(of: "run/sinks/api.json") == 0o600, "the default mode")
        #expect(setup.directory.mode(of: "run/sinks") == 0o700, "missing folders are created 0700")
        #expect(setup.directory.mode(of: "run") == 0o700)

        let json = try #require(setup.directory.read("run/sinks/api.json"))
        guard case .object(let fields) = try JSONValue.parse(Data(json.utf8)) else { Issue.record("not a JSON object: \(json)"); return }
        #expect(fields["access_token"] == .string(token))
        #expect(fields["token_type"] == .string("Bearer"))
        let expiresAt = try #require(TokenStore(path: setup.directory.file("token.json")).read().tokens?.expiresAt)
        #expect(fields["expires_at"] == .string(RFC3339.formatSeconds(expiresAt)))
        if case .number(let seconds)? = fields["expires_in"] { #expect(seconds > 3500 && seconds <= 3600) } else { Issue.record("no expires_in: \(json)") }

        let status = try await setup.status()
        guard case .array(let sinks)? = status["sinks"], sinks.count == 2, case .object(let first) = sinks[0] else {
            Issue.record("no sinks in /status: \(status)")
            return
        }
        #expect(first["path"] == .string(setup.directory.file("run/sinks/api.token")))
        #expect(first["ok"] == .bool(true))
        #expect(first["mode"] == .string("0640"))
        #expect(first["identity"] == .string("default"))
        if case .object(let identities)? = status["identities"], case .object(let identity)? = identities["default"], case .array(let own)? = identity["sinks"] {
            #expect(own.count == 2, "the identity's sinks are shown with it")
        } else {
            Issue.record("no identities.default.sinks: \(status)")
        }
        Self.expectNoToken([token], in: try await setup.admin("GET", "/status"))
        let stderr = await setup.stop()
        #expect(stderr.contains("token sink written"))
        Self.expectNoToken([token, "rt-initial"], in: stderr)
        #expect(setup.directory.read("run/sinks/api.token") == token, "a stopped proxy leaves the file for its readers")
    }

    @Test func aReaderPollingTheFileDuringTwentyForcedRefreshesNeverSeesAnEmptyOrPartialFile() async throws {
        let setup = try await Setup.start(
            sinks: #"[{"path": "sink/api.token"}, {"path": "sink/api.json", "format": "json"}]"#, minRefreshInterval: "0s")
        #expect(await setup.waitForFile("sink/api.token") != nil, "\(setup.process.stderrSoFar)")
        #expect(await setup.waitForFile("sink/api.json") != nil)
        let stop = NIOLockedValueBox(false)
        let rawPath = setup.directory.file("sink/api.token")
        let jsonPath = setup.directory.file("sink/api.json")
        // What the reader saw: every distinct content, and every read that was not a whole file.
        let reader = Task {
            try await onOwnThread { () -> (seen: Set<String>, bad: [String], reads: Int) in
                var seen: Set<String> = []
                var bad: [String] = []
                var reads = 0
                while !stop.withLockedValue({ $0 }) {
                    reads += 1
                    let raw = Self.readWhole(rawPath)
                    if let raw, raw.hasPrefix("at-"), !raw.contains("\n") { seen.insert(raw) } else { bad.append("raw: \(raw ?? "missing")") }
                    let json = Self.readWhole(jsonPath)
                    if case .object(let fields)? = json.flatMap({ try? JSONValue.parse(Data($0.utf8)) }), case .string(let token)? = fields["access_token"] {
                        seen.insert(token)
                    } else {
                        bad.append("json: \(json ?? "missing")")
                    }
                }
                return (seen, bad, reads)
            }
        }
        for number in 1...20 {
            let answer = try await setup.admin("POST", "/token/refresh")
            #expect(answer.hasPrefix("HTTP/1.1 200"), "refresh \(number): \(answer)")
        }
        // The proxy answers once the new token is in use; the store and the sink follow.
        let settled = ContinuousClock.now
        var last = setup.storedToken
        while last == nil || setup.directory.read("sink/api.token") != last, settled.duration(to: .now) < .seconds(1) {
            try await Task.sleep(for: .milliseconds(10))
            last = setup.storedToken
        }
        let final = try #require(last)
        #expect(setup.directory.read("sink/api.token") == final, "the sink holds the last token within a second")
        stop.withLockedValue { $0 = true }
        let (seen, bad, reads) = try await reader.value
        print("sink reader: \(reads) reads of both files during 20 forced refreshes, \(seen.count) distinct tokens, \(bad.count) not whole")
        #expect(bad.isEmpty, "\(bad.count) of \(reads) reads saw no whole file: \(bad.prefix(3))")
        #expect(seen.count >= 2, "the reader saw the file change (\(seen.count) tokens in \(reads) reads)")
        #expect(setup.issuer.callCount == 21, "one call at start, one per forced refresh")
        let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: setup.directory.file("sink"))) ?? []
        #expect(Set(leftovers) == ["api.token", "api.json"], "no temporary files are left behind: \(leftovers)")
        let stderr = await setup.stop()
        Self.expectNoToken(seen, in: stderr)
    }

    @Test func theSinkFollowsATokenAdoptedFromAnotherProcessWithinASecond() async throws {
        let setup = try await Setup.start(sinks: #"[{"path": "api.token"}]"#)
        let first = try #require(await setup.waitForFile("api.token") != nil ? setup.directory.read("api.token") : nil, "\(setup.process.stderrSoFar)")
        // Another process refreshes through the same store and lock (a cron job, a login).
        let refreshed = try await TokenProxyProcess.run(["refresh", "--config", setup.config], timeout: .seconds(30))
        #expect(refreshed.status == 0, "\(refreshed.stderr)")
        let second = try #require(setup.storedToken)
        #expect(second != first)
        let took = await setup.waitForFile("api.token", toHold: second, timeout: .seconds(1))
        #expect(took != nil, "the sink did not follow the adopted token within a second: \(setup.directory.read("api.token") ?? "nothing")")
        print("sink followed a token adopted from another process after \(took.map { "\($0.milliseconds) ms" } ?? "more than 1 s")")
        #expect(setup.issuer.callCount == 2, "the proxy adopted the token: no call of its own")
        // And requests go out with it.
        let answer = try await RawHTTPClient(port: setup.port).exchange("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)")
        let stderr = await setup.stop()
        #expect(stderr.contains("token adopted from the store"))
        Self.expectNoToken([first, second], in: stderr + refreshed.stderr + refreshed.stdout)
    }

    @Test func aSinkThatCannotBeWrittenIsLoggedAndShownAndTheProxyKeepsServing() async throws {
        let directory = try TemporaryDirectory()
        // A file where a folder should be, and a folder anyone can write (refused as the store's is).
        try directory.write("not-a-folder", "x")
        try FileManager.default.createDirectory(atPath: directory.file("shared"), withIntermediateDirectories: false)
        chmod(directory.file("shared"), 0o777)
        _ = directory
        let setup = try await Setup.start(sinks: #"""
            [{"path": "\#(directory.file("not-a-folder"))/api.token"}, {"path": "\#(directory.file("shared"))/api.token"}, {"path": "good/api.token"}]
            """#)
        #expect(await setup.waitForFile("good/api.token") != nil, "the good sink is written: \(setup.process.stderrSoFar)")
        let answer = try await RawHTTPClient(port: setup.port).exchange("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)")
        let status = try await setup.status()
        guard case .array(let sinks)? = status["sinks"], sinks.count == 3 else {
            Issue.record("no sinks in /status: \(status)")
            return
        }
        let fields = sinks.compactMap { sink -> [String: JSONValue]? in if case .object(let fields) = sink { fields } else { nil } }
        #expect(fields.map { $0["ok"] } == [.bool(false), .bool(false), .bool(true)])
        if case .string(let error)? = fields[0]["error"] { #expect(error.contains("not-a-folder") && error.contains("is not a folder"), "\(error)") } else { Issue.record("no error: \(fields[0])") }
        if case .string(let error)? = fields[1]["error"] { #expect(error.contains("others than its owner can write"), "\(error)") } else { Issue.record("no error: \(fields[1])") }
        #expect(!FileManager.default.fileExists(atPath: directory.file("shared/api.token")), "nothing is written into a folder others can write")
        let stderr = await setup.stop()
        #expect(stderr.contains("cannot write the token sink"))
        #expect(stderr.contains(directory.file("shared")))
        Self.expectNoToken([setup.directory.read("good/api.token") ?? ""], in: stderr)
    }

    /// The whole file as one read of it sees it (`nil`: missing).
    static func readWhole(_ path: String) -> String? {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
            if count <= 0 { break }
            bytes += buffer[0..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// `sinks` in the configuration: every mistake names its key.
@Suite("Token sinks: configuration")
struct SinksConfigurationTests {
    struct Row: CustomTestStringConvertible, Sendable {
        var sinks: String
        var key: String
        var message: String
        var testDescription: String { "\(sinks) → \(key)" }
    }

    static let rows: [Row] = [
        Row(sinks: #"[{"path": "a.token", "identity": "nobody"}]"#, key: "sinks[0].identity", message: "not configured"),
        Row(sinks: #"[{"path": "a.token", "mode": "0666"}]"#, key: "sinks[0].mode", message: "every user replace the token"),
        Row(sinks: #"[{"path": "a.token", "mode": "4750"}]"#, key: "sinks[0].mode", message: "setuid"),
        Row(sinks: #"[{"path": "a.token", "mode": "rw-r-----"}]"#, key: "sinks[0].mode", message: "not a file mode"),
        Row(sinks: #"[{"path": "a.token", "mode": "0680"}]"#, key: "sinks[0].mode", message: "not a file mode"),
        Row(sinks: #"[{"path": "a.token"}, {"path": "./a.token"}]"#, key: "sinks[1].path", message: "also the path of sinks[0]"),
        Row(sinks: #"[{"path": "token.json"}]"#, key: "sinks[0].path", message: "the store of the identity \"default\""),
        Row(sinks: #"[{"path": "token.lock"}]"#, key: "sinks[0].path", message: "the lock file"),
        Row(sinks: #"[{"path": "sub/../client-secret"}]"#, key: "sinks[0].path", message: "the client secret of the identity \"default\""),
        Row(sinks: #"[{"path": "config.json"}]"#, key: "sinks[0].path", message: "the configuration file"),
        Row(sinks: #"[{"format": "raw"}]"#, key: "sinks[0].path", message: "is required"),
        Row(sinks: #"[{"path": "a.token", "format": "yaml"}]"#, key: "sinks[0].format", message: "yaml"),
        Row(sinks: #"[{"path": "a.token", "owner": "me"}]"#, key: "sinks[0].owner", message: "unknown key"),
        Row(sinks: #"["a.token"]"#, key: "sinks[0]", message: "expected an object"),
    ]

    @Test("a wrong sink names its key", arguments: rows)
    func wrongSink(row: Row) throws {
        let directory = try TemporaryDirectory()
        var fixture = ConfigFixture(endpoint: "http://127.0.0.1:9/token")
        fixture.topLevel["sinks"] = row.sinks
        do {
            _ = try fixture.configuration(in: directory)
            Issue.record("accepted")
        } catch let error as ConfigurationError {
            let problem = error.problems.first { $0.keyPath == row.key }
            #expect(problem != nil, "\(error.problems)")
            #expect(problem?.message.contains(row.message) == true, "\(problem?.message ?? "")")
        }
    }

    @Test func sinksAndGitUsernameAreReadWithTheirDefaults() throws {
        let directory = try TemporaryDirectory()
        var fixture = ConfigFixture(endpoint: "http://127.0.0.1:9/token")
        fixture.extra["gitUsername"] = #""x-access-token""#
        fixture.topLevel["sinks"] = #"[{"path": "a.token"}, {"path": "/run/tp/b.json", "format": "json", "mode": "640", "identity": "default"}]"#
        let configuration = try fixture.configuration(in: directory)
        #expect(configuration.sinks == [
            Configuration.Sink(path: directory.file("a.token"), identity: "default", format: .raw, mode: 0o600),
            Configuration.Sink(path: "/run/tp/b.json", identity: "default", format: .json, mode: 0o640),
        ])
        #expect(configuration.token.gitUsername == "x-access-token")
        #expect(try ConfigFixture(endpoint: "http://127.0.0.1:9/token").configuration(in: directory).token.gitUsername == "oauth2")
    }
}
