import NIOSSL

extension Configuration.TLS {
    /// A client configuration that verifies the server (always), trusting `caFile` when set
    /// instead of the system store, and presents the client certificate when set.
    /// - Throws: when the certificate or key file cannot be read as PEM.
    func clientConfiguration() throws -> TLSConfiguration {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.certificateVerification = .fullVerification
        if let caFile { configuration.trustRoots = .file(caFile) }
        if let certificateFile, let keyFile {
            // Read here rather than named as `.file`: NIOSSL guesses a `.file`'s format from its
            // extension, and keys are often `client.key`.
            configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificateFile).map { .certificate($0) }
            configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyFile, format: .pem))
        }
        return configuration
    }
}

extension Optional where Wrapped == Configuration.TLS {
    /// The configuration for a `tls` key that may be absent: the system store, no client certificate.
    func clientConfiguration() throws -> TLSConfiguration {
        if let settings = self { return try settings.clientConfiguration() }
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.certificateVerification = .fullVerification
        return configuration
    }
}
