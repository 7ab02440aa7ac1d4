import FoundationEssentials

/// Finds an issuer's endpoints (SPEC §2.1): `ISSUER/.well-known/openid-configuration` (OpenID
/// Connect Discovery), then RFC 8414's `.well-known/oauth-authorization-server`; an endpoint that
/// one document lacks is looked up in the other, and endpoints set in the configuration win.
enum IssuerDiscovery {
    /// The endpoints an issuer's metadata names.
    struct Metadata: Sendable, Equatable {
        var tokenEndpoint: String?
        var authorizationEndpoint: String?
        var deviceEndpoint: String?
        var revocationEndpoint: String?
    }

    /// The metadata documents of `issuer`, in the order they are tried. RFC 8414 §3 puts the
    /// well-known segment between the host and the issuer's path; OpenID Connect appends it.
    static func documentURLs(issuer: String) -> [String] {
        let oidc = issuer + "/.well-known/openid-configuration"
        guard let schemeEnd = issuer.range(of: "://"), let slash = issuer[schemeEnd.upperBound...].firstIndex(of: "/") else {
            return [oidc, issuer + "/.well-known/oauth-authorization-server"]
        }
        return [oidc, String(issuer[..<slash]) + "/.well-known/oauth-authorization-server" + String(issuer[slash...])]
    }

    /// Merges the documents that could be read, in order. A document whose `issuer` is not the
    /// configured one is refused (RFC 8414 §3.3: otherwise a hijacked document could name any
    /// endpoint); an endpoint that is not https (or http to a loopback host) is ignored.
    struct Problem: Error, Equatable {
        var reason: String
    }

    static func merge(_ documents: [[String: JSONValue]], issuer: String) -> Result<Metadata, Problem> {
        var metadata = Metadata()
        for document in documents {
            guard case .string(let named)? = document["issuer"], named == issuer || named == issuer + "/" else {
                return .failure(Problem(reason: "its metadata names another issuer than token.issuer \(issuer)"))
            }
            func endpoint(_ key: String) -> String? {
                guard case .string(let url)? = document[key], case .success(let parsed) = UpstreamURL.parse(url) else { return nil }
                let loopback = ListenAddress.tcp(host: parsed.host, port: parsed.port).isLoopback
                return parsed.scheme == .https || loopback ? url : nil
            }
            metadata.tokenEndpoint = metadata.tokenEndpoint ?? endpoint("token_endpoint")
            metadata.authorizationEndpoint = metadata.authorizationEndpoint ?? endpoint("authorization_endpoint")
            metadata.deviceEndpoint = metadata.deviceEndpoint ?? endpoint("device_authorization_endpoint")
            metadata.revocationEndpoint = metadata.revocationEndpoint ?? endpoint("revocation_endpoint")
        }
        return .success(metadata)
    }
}

extension Configuration.Token {
    /// Whether discovery can add an endpoint the configuration leaves out.
    var needsDiscovery: Bool {
        issuer != nil && (endpoint.isEmpty || authorizationEndpoint == nil || deviceEndpoint == nil || revocationEndpoint == nil)
    }

    /// These settings with the endpoints of `metadata` where none is configured.
    func filling(_ metadata: IssuerDiscovery.Metadata) -> Configuration.Token {
        var filled = self
        if filled.endpoint.isEmpty, let token = metadata.tokenEndpoint { filled.endpoint = token }
        filled.authorizationEndpoint = filled.authorizationEndpoint ?? metadata.authorizationEndpoint
        filled.deviceEndpoint = filled.deviceEndpoint ?? metadata.deviceEndpoint
        filled.revocationEndpoint = filled.revocationEndpoint ?? metadata.revocationEndpoint
        return filled
    }
}
