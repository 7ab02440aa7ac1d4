import Foundation
import NIOSSL

/// A private certificate authority with a server certificate (for 127.0.0.1 and localhost, or
/// the names given) and a client certificate, made with the `openssl` command for one test
/// (TLS is tested against real TLS servers).
struct TestCertificates {
    let caFile: String
    let certificateFile: String
    let keyFile: String
    let clientCertificateFile: String
    let clientKeyFile: String

    /// Writes the files, named after `name`, into `directory`.
    static func make(in directory: TemporaryDirectory, name: String = "test", subjectAltName: String = "IP:127.0.0.1,DNS:localhost") async throws -> TestCertificates {
        let file = { (suffix: String) in directory.file("\(name)-\(suffix)") }
        let (ca, caKey) = (file("ca.pem"), file("ca.key"))
        try await openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=tokenproxy test CA \(name)", "-keyout", caKey, "-out", ca])
        for (role, extensions) in [("server", "subjectAltName=\(subjectAltName)\nextendedKeyUsage=serverAuth\n"), ("client", "extendedKeyUsage=clientAuth\n")] {
            let extensionsFile = try directory.write("\(name)-\(role).ext", extensions)
            try await openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=\(name) \(role)", "-keyout", file("\(role).key"), "-out", file("\(role).csr")])
            try await openssl(["x509", "-req", "-in", file("\(role).csr"), "-CA", ca, "-CAkey", caKey, "-CAcreateserial", "-days", "2", "-extfile", extensionsFile, "-out", file("\(role).pem")])
            chmod(file("\(role).key"), 0o600)
        }
        return TestCertificates(caFile: ca, certificateFile: file("server.pem"), keyFile: file("server.key"), clientCertificateFile: file("client.pem"), clientKeyFile: file("client.key"))
    }

    /// A server context with this server certificate; with `requireClientCertificate`, clients
    /// must present a certificate issued by this CA.
    func serverContext(requireClientCertificate: Bool = false) throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(certificateFile).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: keyFile, format: .pem))
        )
        if requireClientCertificate {
            configuration.certificateVerification = .noHostnameVerification
            configuration.trustRoots = .file(caFile)
        }
        return try NIOSSLContext(configuration: configuration)
    }

    private static func openssl(_ arguments: [String]) async throws {
        let process = TokenProxyProcess(arguments, program: "/usr/bin/openssl")
        try process.start()
        let outcome = await process.wait(timeout: .seconds(30))
        guard outcome.status == 0 else { throw PostgresServer.Failure("openssl \(arguments.joined(separator: " ")) failed: \(outcome.stderr)") }
    }
}
