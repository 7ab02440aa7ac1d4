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
    var extra: [String: String] = [:]

    static let clientSecret = "s3cret-client-value"

    /// Writes `config.json` (and the client secret) into `directory`; returns the config path.
    @discardableResult
    func write(to directory: TemporaryDirectory) throws -> String {
        if let secretFile { try directory.write(secretFile, Self.clientSecret + "\n") }
        var token: [String] = [
            "\"endpoint\": \"\(endpoint)\"", "\"grant\": \"\(grant)\"", "\"clientId\": \"\(clientID)\"",
            "\"clientAuth\": \"\(clientAuth)\"", "\"refreshBefore\": \"\(refreshBefore)\"",
            "\"minValidity\": \"\(minValidity)\"", "\"lockTimeout\": \"\(lockTimeout)\"",
            "\"minRefreshInterval\": \"\(minRefreshInterval)\"", "\"defaultLifetime\": \"\(defaultLifetime)\"",
            "\"store\": \"token.json\"", "\"lockFile\": \"token.lock\"",
        ]
        if let secretFile { token.append("\"clientSecretFile\": \"\(secretFile)\"") }
        if let scope { token.append("\"scope\": \"\(scope)\"") }
        for (key, value) in extra { token.append("\"\(key)\": \(value)") }
        let json = """
            {
              "upstream": { "url": "http://127.0.0.1:9" },
              "token": { \(token.joined(separator: ", ")) },
              "admin": null,
              "log": { "level": "debug" }
            }
            """
        return try directory.write("config.json", json)
    }

    func configuration(in directory: TemporaryDirectory) throws -> Configuration {
        try Configuration.load(path: write(to: directory))
    }
}
