import Foundation
import TokenProxy

/// Builds configuration files for tests: a token section pointing at a stand-in issuer and a
/// store inside a temporary folder.
struct ConfigFixture {
    var endpoint: String
    var grant = "refresh_token"
    var clientAuth = "basic"
    var clientID = "test-client"
    var secretFile: String? = "client-secret"
    var refreshBefore = "5m"
    var minValidity = "10s"
    var lockTimeout = "5s"
    var minRefreshInterval = "1s"
    var defaultLifetime = "30m"
    var scope: String? = "api.read"
    var store = "token.json"
    var lockFile = "token.lock"
    /// More keys of the `token` section, as raw JSON values.
    var extra: [String: String] = [:]
    var listen = "127.0.0.1:0"
    var upstream = "http://127.0.0.1:9"
    /// More keys of the `upstream` section, as raw JSON (`, "readTimeout": "1s"`).
    var upstreamExtra = ""
    var admin = "null"
    /// More top-level keys, as raw JSON values (`retry`, `faults`).
    var topLevel: [String: String] = [:]

    static let clientSecret = "s3cret-client-value"

    /// Writes `config.json` (and the client secret) into `directory`; returns the config path.
    @discardableResult
    func write(to directory: TemporaryDirectory) throws -> String {
        if let secretFile { try directory.write(secretFile, Self.clientSecret + "\n") }
        var token: [String] = [
            "\"grant\": \"\(grant)\"", "\"clientId\": \"\(clientID)\"",
            "\"clientAuth\": \"\(clientAuth)\"", "\"refreshBefore\": \"\(refreshBefore)\"",
            "\"minValidity\": \"\(minValidity)\"", "\"lockTimeout\": \"\(lockTimeout)\"",
            "\"minRefreshInterval\": \"\(minRefreshInterval)\"", "\"defaultLifetime\": \"\(defaultLifetime)\"",
            "\"store\": \"\(store)\"", "\"lockFile\": \"\(lockFile)\"",
        ]
        if !endpoint.isEmpty { token.append("\"endpoint\": \"\(endpoint)\"") }  // empty: left to discovery
        if let secretFile { token.append("\"clientSecretFile\": \"\(secretFile)\"") }
        if let scope { token.append("\"scope\": \"\(scope)\"") }
        for (key, value) in extra { token.append("\"\(key)\": \(value)") }
        var sections = [
            "\"listen\": \"\(listen)\"", "\"upstream\": { \"url\": \"\(upstream)\"\(upstreamExtra) }",
            "\"token\": { \(token.joined(separator: ", ")) }", "\"admin\": \(admin)", "\"log\": { \"level\": \"debug\" }",
        ]
        for (key, value) in topLevel.sorted(by: { $0.key < $1.key }) { sections.append("\"\(key)\": \(value)") }
        let json = "{\n  " + sections.joined(separator: ",\n  ") + "\n}\n"
        return try directory.write("config.json", json)
    }

    func configuration(in directory: TemporaryDirectory) throws -> Configuration {
        try Configuration.load(path: write(to: directory))
    }
}
