import Foundation
import Glibc
import Testing
import TokenProxyMocks

@testable import TokenProxy

/// The status page (SPEC §7 "Status page and live events") in a real browser: Debian's headless
/// Chromium driven by Selenium (`Browser/status_page.py`), against the real binary with an
/// admin listener, while the test changes things from outside (another process's refresh, a page
/// on another origin) and checks the issuer and `/status`.
@Suite("Status page in Chromium", .serialized, .enabled("needs chromium, chromium-driver and Python's selenium (bash .ci/run installs them)", { BrowserTools.enabled }))
struct StatusPageTests {
    /// A running proxy (``RunningProxy``) with its admin listener on a free port.
    @dynamicMemberLookup
    struct Setup {
        let proxy: RunningProxy

        subscript<T>(dynamicMember keyPath: KeyPath<RunningProxy, T>) -> T { proxy[keyPath: keyPath] }

        var adminPort: Int { proxy.adminPort ?? 0 }
        var pageURL: String { "http://127.0.0.1:\(adminPort)/" }

        /// `adminToken`: the content of `admin.tokenFile` (none: no file); `topLevel`: more
        /// configuration keys, raw JSON (`ENDPOINT` and `UPSTREAM` stand for the stand-ins'
        /// URLs); `lifetime`: of the issuer's access tokens; `latency`: the API's, in ms.
        static func start(
            adminToken: String? = nil, lifetime: Duration = .seconds(600), topLevel: [String: String] = [:], latency: ClosedRange<Int>? = nil, listen: String = "127.0.0.1:0"
        ) async throws -> Setup {
            var options = RunningProxy.Options()
            options.lifetime = lifetime
            options.refreshTokenLifetime = 30 * 86_400
            if let latency { options.onRequest = { _ in try? await Task.sleep(for: .milliseconds(Int.random(in: latency))) } }
            if let adminToken { options.files["admin-token"] = adminToken + "\n" }
            options.configure = { fixture in
                fixture.listen = listen
                fixture.admin = adminToken == nil ? #"{"listen": "127.0.0.1:0"}"# : #"{"listen": "127.0.0.1:0", "tokenFile": "admin-token"}"#
                let (endpoint, upstream) = (fixture.endpoint, fixture.upstream)
                fixture.topLevel = topLevel.mapValues { $0.replacingOccurrences(of: "ENDPOINT", with: endpoint).replacingOccurrences(of: "UPSTREAM", with: upstream) }
            }
            let setup = Setup(proxy: try await RunningProxy.start(options))
            try await setup.waitForToken()
            return setup
        }

        /// Waits until the default identity holds a token (the proxy gets one at start).
        func waitForToken() async throws {
            let deadline = ContinuousClock.now.advanced(by: .seconds(15))
            while ContinuousClock.now < deadline {
                if (try? await identity())?["expiresAt"] is String { return }
                try await Task.sleep(for: .milliseconds(50))
            }
            Issue.record("no token at start: \(proxy.process.stderrSoFar.suffix(2000))")
        }

        func admin(_ method: String, _ path: String, headers: String = "") async throws -> String {
            try await proxy.admin(method, path, headers: headers)
        }

        /// `/status` as JSON.
        func status() async throws -> [String: Any] {
            let answer = try await admin("GET", "/status")
            let body = answer.range(of: "\r\n\r\n").map { String(answer[$0.upperBound...]) } ?? ""
            return try #require(try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any], "/status: \(answer)")
        }

        /// One identity of `/status`.
        func identity(_ name: String = "default") async throws -> [String: Any] {
            let identities = try #require(try await status()["identities"] as? [String: Any])
            return try #require(identities[name] as? [String: Any], "no identity \(name) in /status")
        }

        func faults() async throws -> [String: Any] {
            try #require(try await status()["faults"] as? [String: Any])
        }

        /// Sends one request through the proxy; the status code, or nil.
        @discardableResult
        func request(_ path: String, headers: String = "") async -> Int? {
            await proxy.request(path, headers: headers)
        }

        func stop() async {
            await proxy.stop()
        }
    }

    // MARK: - The acceptance of issue 21, in Chromium

    @Test func theCountdownMovesAndARefreshByAnotherProcessShowsWithinTwoSecondsWithoutReload() async throws {
        let setup = try await Setup.start()
        let signals = setup.directory.file("signals")
        try FileManager.default.createDirectory(atPath: signals, withIntermediateDirectories: true)
        let browser = try BrowserTools.start(["live", "--url", setup.pageURL, "--signal-dir", signals, "--within", "10"])

        // The page is up and has watched its countdown: another process refreshes now.
        let ready = await BrowserTools.waitForFile(signals + "/ready", while: browser, timeout: .seconds(60))
        var result: [String: Any] = [:]
        if ready {
            let calls = setup.issuer.callCount
            let refreshed = try await TokenProxyProcess.run(["refresh", "--config", setup.config], timeout: .seconds(30))
            #expect(refreshed.status == 0, "\(refreshed.stderr)")
            try BrowserTools.signal(signals + "/refreshed", String(Date().timeIntervalSince1970))
            result = try await BrowserTools.finish(browser)
            #expect(setup.issuer.callCount == calls + 1, "one call, the other process's: the proxy adopted its token")
        } else {
            result = try await BrowserTools.finish(browser)
            Issue.record("the page never got ready: \(result)")
        }
        print("status page live: \(BrowserTools.summary(result, ["countdown", "countdownWatchedSeconds", "shownAfterSeconds", "events", "connection"]))")

        let seconds = (result["countdownSeconds"] as? [Any] ?? []).compactMap(BrowserTools.number).map { Int($0) }
        let countdown = result["countdown"] as? [String] ?? []
        // Watched 2.5 s (more on a busy machine): the countdown went down by about as much.
        let watched = BrowserTools.number(result["countdownWatchedSeconds"]) ?? 0
        #expect(seconds.count == 2 && seconds[0] - seconds[1] >= 2 && Double(seconds[0] - seconds[1]) <= watched.rounded(.up) + 1, "the countdown moves down by the \(watched) s watched: \(countdown)")
        #expect(countdown.allSatisfy { $0.wholeMatch(of: #/[0-9]{2}:[0-9]{2}/#) != nil }, "mm:ss for a 10-minute token: \(countdown)")
        let shown = result["shownAfterSeconds"] as? Double
        #expect(shown != nil && shown! <= 2.0, "the other process's refresh shows within 2 s (\(shown.map { "\($0) s" } ?? "not within 10 s"))")
        #expect(result["reloaded"] as? Bool == false, "without a reload")
        let before = result["before"] as? [String: Any] ?? [:]
        let after = result["after"] as? [String: Any] ?? [:]
        let current = try await setup.identity()["expiresAt"] as? String
        #expect(after["expiresAt"] as? String == current, "the page shows the proxy's new expiry: \(after)")
        #expect(after["expiresAt"] as? String != before["expiresAt"] as? String)
        #expect(after["state"] as? String == "valid")
        let refreshes = after["refreshes"] as? [[String: Any]] ?? []
        #expect(refreshes.first?["result"] as? String == "adopted", "the newest entry of the refreshes is the adoption: \(refreshes.prefix(2))")
        #expect((result["events"] as? [String] ?? []).contains("adopted"), "the live event log shows it")
        #expect(result["connection"] as? String == "live", "the page follows /events")
        BrowserTools.expectClean(result)
        await setup.stop()
    }

    @Test func refreshNowCallsTheTokenEndpointOnceAndTheFaultsFormChangesFaults() async throws {
        let setup = try await Setup.start()
        let calls = setup.issuer.callCount
        let result = try await BrowserTools.run(["actions", "--url", setup.pageURL, "--percent", "25"])
        print("status page actions: \(BrowserTools.summary(result, ["refresh", "faults", "faultsShown", "events"]))")
        // The first click tells whether the listener takes the page's own requests at all.
        let refresh = result["refresh"] as? [String: Any] ?? [:]
        try #require(refresh["outcome"] as? String == "ok", "the page's own POST is refused: \(refresh["text"] ?? refresh)")
        #expect(setup.issuer.callCount == calls + 1, "one click, one token endpoint call")
        let identity = result["identity"] as? [String: Any] ?? [:]
        #expect(identity["expiresAt"] as? String != result["expiresAtBefore"] as? String, "the card shows the new token")
        #expect((identity["refreshes"] as? [[String: Any]])?.first?["trigger"] as? String == "forced", "\(identity)")
        let faults = result["faults"] as? [String: Any] ?? [:]
        #expect(faults["outcome"] as? String == "ok", "\(faults)")
        let applied = try await setup.faults()
        #expect(applied["enabled"] as? Bool == true && BrowserTools.number(applied["upstream401Percent"]) == 25, "\(applied)")
        #expect((result["events"] as? [String] ?? []).contains("faults"))
        BrowserTools.expectClean(result)
        await setup.stop()
    }

    @Test func withAnAdminTokenFileThePageAsksForItRefusesAWrongOneAndUsesTheRightOne() async throws {
        let secret = "page-admin-\(UUID().uuidString.prefix(8))"
        let setup = try await Setup.start(adminToken: secret)
        // What the listener says to a request without the token: the page must show this refusal.
        let refusal = try await setup.admin("POST", "/token/refresh")
        #expect(refusal.hasPrefix("HTTP/1.1 401"), "\(refusal)")
        let body = refusal.range(of: "\r\n\r\n").map { String(refusal[$0.upperBound...]) } ?? ""
        let message = try #require((try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any])?["message"] as? String, "\(refusal)")

        let calls = setup.issuer.callCount
        let result = try await BrowserTools.run(["admin-token", "--url", setup.pageURL, "--wrong", "not-\(secret)", "--right", secret, "--percent", "5"])
        print("status page admin token: \(BrowserTools.summary(result, ["asked", "wrong", "askedAgain", "right", "second", "secondAsked", "stored"]))")
        let asked = result["asked"] as? [String: Any] ?? [:]
        try #require(asked["outcome"] as? String == "auth-needed", "the page asks for the token: \(asked["text"] ?? asked)")
        #expect(result["fieldType"] as? String == "password")
        let wrong = result["wrong"] as? [String: Any] ?? [:]
        #expect(wrong["outcome"] as? String == "refused", "\(wrong)")
        #expect((wrong["text"] as? String)?.contains(message) == true, "the refusal's message is shown: \(wrong) (\(message))")
        #expect(result["askedAgain"] as? Bool == true)
        #expect(result["expiresAtAfterWrong"] as? String == result["expiresAtBefore"] as? String, "nothing refreshed with a wrong token")
        let right = result["right"] as? [String: Any] ?? [:]
        #expect(right["outcome"] as? String == "ok", "\(right)")
        #expect(result["expiresAtAfter"] as? String != result["expiresAtBefore"] as? String)
        #expect(result["formHidden"] as? Bool == true)
        #expect(setup.issuer.callCount == calls + 1, "only the action with the right token reached the token endpoint")
        let second = result["second"] as? [String: Any] ?? [:]
        #expect(second["outcome"] as? String == "ok" && result["secondAsked"] as? Bool == false, "asked once: the next action uses the token kept: \(second)")
        let applied = try await setup.faults()
        #expect(applied["enabled"] as? Bool == true && BrowserTools.number(applied["upstream401Percent"]) == 5, "\(applied)")
        let stored = result["stored"] as? [String: Any] ?? [:]
        #expect(BrowserTools.number(stored["local"]) == 0 && BrowserTools.number(stored["session"]) == 0 && stored["cookie"] as? String == "", "kept in memory only: \(stored)")
        #expect(stored["inDocument"] as? Bool == false, "the token is not left in the document")
        BrowserTools.expectClean(result)
        await setup.stop()
    }

    @Test func atFourHundredPixelsThereIsNoHorizontalScroll() async throws {
        // Three identities (one failing, with a long name and reason), three routes with long
        // upstreams, errors by code: the most text the page shows.
        let setup = try await Setup.start(topLevel: Self.richConfiguration(failing: true, faults: false))
        for _ in 0..<5 { await setup.request("/api/hello") }
        await setup.request("/reports/daily")
        await setup.request("/billing-and-invoicing/v2/invoices?customer=42")
        // TOKENPROXY_SCREENSHOT_DIR=FOLDER keeps a picture of the page at 400 px there, to look at.
        let picture = ProcessInfo.processInfo.environment["TOKENPROXY_SCREENSHOT_DIR"].map { ["--out", $0 + "/status-page-400px.png"] } ?? []
        let result = try await BrowserTools.run(["narrow", "--url", setup.pageURL, "--width", "400", "--route", "billing", "--settle", "1.5"] + picture)
        print("status page at 400 px: \(BrowserTools.summary(result, ["scrollWidth", "innerWidth", "overflowing", "identities", "routes", "fontSize"]))")
        let innerWidth = BrowserTools.number(result["innerWidth"]) ?? 0
        #expect(innerWidth == 400)
        let scrollWidth = BrowserTools.number(result["scrollWidth"]) ?? .infinity
        #expect(scrollWidth <= innerWidth, "no horizontal scroll: scrollWidth \(scrollWidth), innerWidth \(innerWidth): \(result["overflowing"] ?? [])")
        #expect((result["overflowing"] as? [String])?.isEmpty == true)
        #expect(BrowserTools.number(result["identities"]) == 3 && BrowserTools.number(result["routes"]) == 3)
        #expect(BrowserTools.number(result["fontSize"]) ?? 0 >= 20, "the countdown stays large enough to read")
        BrowserTools.expectClean(result)
        await setup.stop()
    }

    @Test func aPageOnAnotherOriginCannotRefreshExpireOrChangeFaults() async throws {
        let setup = try await Setup.start()
        let page = try String(contentsOfFile: BrowserTools.folder + "/other_origin.html", encoding: .utf8)
        let other = try await MockHTTPServer.start { _ in
            MockHTTPResponse(status: 200, headers: [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")], body: page)
        }
        let admin = "http://127.0.0.1:\(setup.adminPort)"
        let calls = setup.issuer.callCount
        let faults = try await setup.faults()
        let before = try await setup.identity()
        let result = try await BrowserTools.run(["cross-origin", "--url", "\(other.baseURL)/?admin=\(admin)", "--admin", admin])
        let attempts = result["attempts"] as? [[String: Any]] ?? []
        print("status page, another origin (\(result["origin"] ?? "?")):")
        for attempt in attempts { print("  \(attempt["name"] ?? ""): \(attempt["outcome"] ?? "")") }
        print("  top-level form POST: \(result["topLevel"] ?? "")")
        #expect(attempts.count == 16, "every attempt was made: \(result["error"] ?? "")")
        #expect(attempts.contains { $0["outcome"] as? String == "opaque" }, "the requests reached the admin listener (opaque answers)")
        #expect(attempts.filter { ($0["name"] as? String)?.hasPrefix("fetch cors GET /status") == true }.allSatisfy { ($0["outcome"] as? String)?.hasPrefix("error") == true }, "the other origin cannot read /status")
        // The proof is on the server side: nothing changed.
        try await Task.sleep(for: .milliseconds(300))
        #expect(setup.issuer.callCount == calls, "no token endpoint call")
        let after = try await setup.identity()
        #expect(after["expiresAt"] as? String == before["expiresAt"] as? String, "the token was neither refreshed nor expired")
        #expect(BrowserTools.number(after["expiresIn"]) ?? 0 > 500)
        #expect((after["refreshes"] as? [Any])?.count == (before["refreshes"] as? [Any])?.count)
        let faultsAfter = try await setup.faults()
        #expect(faultsAfter["enabled"] as? Bool == faults["enabled"] as? Bool && BrowserTools.number(faultsAfter["upstream401Percent"]) == BrowserTools.number(faults["upstream401Percent"]), "\(faultsAfter)")
        let topLevel = result["topLevel"] as? [String: Any] ?? [:]
        #expect((topLevel["body"] as? String)?.contains("forbidden_request") == true, "a top-level form POST is refused: \(topLevel)")
        await other.shutdown()
        await setup.stop()
    }

    /// `TOKENPROXY_SCREENSHOT=1 swift test --filter StatusPageTests`: the picture in the README
    /// (`docs/status-page.png`), of a proxy with two identities, a sink, fault injection on and
    /// traffic while the page watches.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["TOKENPROXY_SCREENSHOT"] == "1"))
    func screenshotForTheReadme() async throws {
        // A port of its own: the routes show the listen address as configured.
        let listen = "127.0.0.1:\(try LoopbackPort.unused())"
        let setup = try await Setup.start(topLevel: Self.richConfiguration(failing: false, faults: true), latency: 2...40, listen: listen)
        let out = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("docs/status-page.png").path
        let browser = try BrowserTools.start(["screenshot", "--url", setup.pageURL, "--width", "1100", "--settle", "40", "--out", out])
        // Traffic at a changing rate while the page draws its sparklines (until the script has
        // taken its picture and printed its result), and one refresh by another process, one
        // forced and one expiry on the way.
        let started = ContinuousClock.now
        var step = 0
        while browser.stdoutSoFar.isEmpty, ContinuousClock.now - started < .seconds(90) {
            step += 1
            let phase = Double(step) / 40
            await setup.request(step % 3 == 0 ? "/reports/daily" : "/api/hello?n=\(step)")
            if step == 60 { _ = try await TokenProxyProcess.run(["refresh", "--config", setup.config]) }
            if step == 120 { _ = try await setup.admin("POST", "/token/refresh?identity=reports") }
            if step == 180 { _ = try await setup.admin("POST", "/token/expire?identity=default") }
            try await Task.sleep(for: .milliseconds(Int(60 + 90 * (1 + sin(phase)))))
        }
        let result = try await BrowserTools.finish(browser)
        #expect(result["error"] == nil, "\(result)")
        print("status page screenshot: \(out)")
        await setup.stop()
    }

    /// Two more identities (`reports` by client credentials; with `failing`, `billing` whose
    /// issuer is down) and their routes, a sink, and fault injection when asked.
    static func richConfiguration(failing: Bool, faults: Bool) -> [String: String] {
        var identities = [#""reports": {"endpoint": "ENDPOINT", "grant": "client_credentials", "clientId": "reports-client", "clientSecretFile": "client-secret", "store": "reports.json", "scope": "reports.read"}"#]
        var routes = [#"{"name": "reports", "pathPrefix": "/reports/", "stripPrefix": true, "upstream": {"url": "UPSTREAM/internal/reporting-service/v1"}, "identity": "reports"}"#]
        if failing {
            identities.append(#""billing-and-invoicing-service-account": {"endpoint": "http://127.0.0.1:9/realms/finance-department/protocol/openid-connect/token", "grant": "client_credentials", "clientId": "billing", "clientSecretFile": "client-secret", "store": "billing.json", "requestTimeout": "2s"}"#)
            routes.append(#"{"name": "billing", "pathPrefix": "/billing-and-invoicing/", "stripPrefix": true, "upstream": {"url": "http://127.0.0.1:9/a/rather/long/path/prefix/of/the/billing-and-invoicing/service/api/v2"}, "identity": "billing-and-invoicing-service-account"}"#)
        }
        var keys = [
            "identities": "{" + identities.joined(separator: ", ") + "}",
            "routes": "[" + routes.joined(separator: ", ") + "]",
            "sinks": #"[{"path": "run/api.token"}]"#,
        ]
        if faults { keys["faults"] = #"{"enabled": true, "upstream401Percent": 4}"# }
        return keys
    }
}

/// Chromium, chromedriver and Selenium, and the Python scripts that drive them
/// (`Tests/TokenProxyTests/Browser/`), run as separate processes.
enum BrowserTools {
    static let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Browser").path
    static let script = folder + "/status_page.py"
    static let chromium = "/usr/bin/chromium"
    static let chromedriver = "/usr/bin/chromedriver"

    /// What is missing to run the browser tests, or `nil` when all is there.
    static let missing: String? = {
        var missing: [String] = []
        if !FileManager.default.isExecutableFile(atPath: chromium) { missing.append("\(chromium) (Debian's chromium)") }
        if !FileManager.default.isExecutableFile(atPath: chromedriver) { missing.append("\(chromedriver) (Debian's chromium-driver)") }
        if !PeerPass.succeeds(["/usr/bin/env", "python3", "-c", "import selenium"]) { missing.append("python3's selenium (pip install selenium)") }
        return missing.isEmpty ? nil : missing.joined(separator: ", ")
    }()

    /// Whether the suite runs: only in the peers' own pass (``PeerPass``), when everything is
    /// there, and always under CI (which installs them), where a missing piece fails the tests
    /// instead of skipping them.
    static var enabled: Bool { PeerPass.enabled("StatusPageTests", missing: missing) }

    /// The environment of the script: no proxy between Selenium and chromedriver or the pages.
    static let environment = [
        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
        "http_proxy": "", "HTTP_PROXY": "", "https_proxy": "", "HTTPS_PROXY": "", "all_proxy": "", "ALL_PROXY": "", "no_proxy": "*", "NO_PROXY": "*",
    ]

    /// Starts `status_page.py ARGUMENTS`.
    static func start(_ arguments: [String]) throws -> TokenProxyProcess {
        if let missing { Issue.record("cannot run the browser: missing \(missing)") }
        let process = TokenProxyProcess(["python3", "-B", script] + arguments, environment: environment, program: "/usr/bin/env")
        try process.start()
        return process
    }

    /// Waits for the script's JSON line; the scenario's error, if any, is recorded.
    static func finish(_ process: TokenProxyProcess, timeout: Duration = .seconds(150), sourceLocation: SourceLocation = #_sourceLocation) async throws -> [String: Any] {
        let outcome = await process.wait(timeout: timeout)
        let line = outcome.stdout.split(separator: "\n").last { $0.hasPrefix("{") }
        guard let line, let result = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            Issue.record("the browser script gave no result (exit \(outcome.status)): \(outcome.stdout.suffix(2000)) \(outcome.stderr.suffix(3000))", sourceLocation: sourceLocation)
            return [:]
        }
        if let error = result["error"] {
            Issue.record("the browser scenario failed: \(error); console: \(result["console"] ?? "") \(outcome.stderr.suffix(2000))", sourceLocation: sourceLocation)
        }
        return result
    }

    /// Runs `status_page.py ARGUMENTS` to its end.
    static func run(_ arguments: [String], sourceLocation: SourceLocation = #_sourceLocation) async throws -> [String: Any] {
        try await finish(try start(arguments), sourceLocation: sourceLocation)
    }

    /// No Content-Security-Policy refusal in the console: the page has no inline script or style.
    static func expectClean(_ result: [String: Any], sourceLocation: SourceLocation = #_sourceLocation) {
        let console = result["console"] as? [String: Any] ?? [:]
        let csp = console["csp"] as? [String]
        #expect(csp?.isEmpty == true, "CSP refusals in the console: \(csp ?? ["no console log"])", sourceLocation: sourceLocation)
    }

    /// A JSON number, whichever way JSONSerialization handed it over.
    static func number(_ value: Any?) -> Double? {
        switch value {
        case let value as Int: Double(value)
        case let value as Double: value
        case let value as NSNumber: value.doubleValue
        default: nil
        }
    }

    static func summary(_ result: [String: Any], _ keys: [String]) -> String {
        keys.map { "\($0)=\(result[$0].map { "\($0)" } ?? "nil")" }.joined(separator: " ") + " (\(result["seconds"] ?? "?") s)"
    }

    /// Waits until `path` exists, while `process` runs, at most `timeout`.
    static func waitForFile(_ path: String, while process: TokenProxyProcess, timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while ContinuousClock.now < deadline {
            if FileManager.default.fileExists(atPath: path) { return true }
            var status: Int32 = 0
            if process.pid != 0, waitpid(process.pid, &status, WNOHANG) == process.pid { return false }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return false
    }

    /// Writes `contents` to `path` whole (rename), for the script to read.
    static func signal(_ path: String, _ contents: String) throws {
        try contents.write(toFile: path + ".tmp", atomically: false, encoding: .utf8)
        guard rename(path + ".tmp", path) == 0 else { throw POSIXError(.EIO) }
    }
}
