import Foundation

/// A private certificate authority and a server certificate for 127.0.0.1 and localhost, made
/// with the `openssl` command for one test (TLS is tested against real TLS servers).
struct TestCertificates {
    let caFile: String
    let certificateFile: String
    let keyFile: String

    /// Writes `ca.pem`, `server.pem` and `server.key` (0600) into `directory`.
    static func make(in directory: TemporaryDirectory, name: String = "test") async throws -> TestCertificates {
        let ca = directory.file("\(name)-ca.pem"), caKey = directory.file("\(name)-ca.key")
        let certificate = directory.file("\(name)-server.pem"), key = directory.file("\(name)-server.key")
        let request = directory.file("\(name)-server.csr"), extensions = try directory.write("\(name)-san.ext", "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        try await openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=tokenproxy test CA \(name)", "-keyout", caKey, "-out", ca])
        try await openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", request])
        try await openssl(["x509", "-req", "-in", request, "-CA", ca, "-CAkey", caKey, "-CAcreateserial", "-days", "2", "-extfile", extensions, "-out", certificate])
        chmod(key, 0o600)
        return TestCertificates(caFile: ca, certificateFile: certificate, keyFile: key)
    }

    private static func openssl(_ arguments: [String]) async throws {
        let process = TokenProxyProcess(arguments, program: "/usr/bin/openssl")
        try process.start()
        let outcome = await process.wait(timeout: .seconds(30))
        guard outcome.status == 0 else { throw PostgresServer.Failure("openssl \(arguments.joined(separator: " ")) failed: \(outcome.stderr)") }
    }
}
