import FoundationEssentials
import Logging

extension TokenBroker {
    /// Discovers the endpoints the configuration leaves out, once per configuration (SPEC §2.1).
    /// Without a token endpoint nothing can be done, so a failure then is transient (retried on
    /// the refresh backoff, and said by `/readyz`); with one, the login endpoints just stay unknown.
    func discoverEndpoints() async throws(TokenBrokerError) {
        guard configuration.needsDiscovery, !discovered, let issuer = configuration.issuer else { return }
        var documents: [[String: JSONValue]] = []
        var failures: [String] = []
        for url in IssuerDiscovery.documentURLs(issuer: issuer) {
            switch await endpoint.fetchJSON(url) {
            case .success(let document): documents.append(document)
            case .failure(let failure): failures.append("\(url) \(failure.reason)")
            }
        }
        let problem: String
        let merged = documents.isEmpty ? .failure(IssuerDiscovery.Problem(reason: failures.joined(separator: "; "))) : IssuerDiscovery.merge(documents, issuer: issuer)
        switch merged {
        case .success(let metadata) where metadata.tokenEndpoint != nil || !configuration.endpoint.isEmpty:
            configuration = configuration.filling(metadata)
            endpoint.adopt(configuration)
            discovered = true
            logger.info("issuer discovered", metadata: [
                "issuer": "\(issuer)", "tokenEndpoint": "\(configuration.endpoint)", "deviceEndpoint": "\(configuration.deviceEndpoint ?? "none")",
                "authorizationEndpoint": "\(configuration.authorizationEndpoint ?? "none")", "revocationEndpoint": "\(configuration.revocationEndpoint ?? "none")",
            ])
            return
        case .success:
            problem = "its metadata names no token endpoint"
        case .failure(let failure):
            problem = failure.reason
        }
        let message = "the issuer \(issuer) could not be discovered: \(problem); check token.issuer, or set token.endpoint"
        guard configuration.endpoint.isEmpty else {
            logger.warning("issuer discovery failed; using the configured endpoints", metadata: ["reason": "\(message)"])
            discovered = true
            return
        }
        throw .unavailable(reason: message, retryAfter: nil)
    }
}
