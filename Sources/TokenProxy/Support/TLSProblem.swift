import NIOSSL

/// A failed TLS handshake in words that name the certificate problem (SPEC §2.1), instead of
/// BoringSSL's error stack.
enum TLSProblem {
    static func describe(_ error: any Error) -> String? {
        if let error = error as? NIOSSLExtraError, error == .failedToValidateHostname {
            return "TLS: the server's certificate does not name this host (set upstream.tls.serverName if it names another)"
        }
        guard error is NIOSSLError || error is BoringSSLError else { return nil }
        let text = String(describing: error)
        for (marker, meaning) in [
            ("CERTIFICATE_VERIFY_FAILED", "the server's certificate failed verification (not issued by a trusted CA, expired, or for another name); trust its CA with tls.caFile"),
            ("CERTIFICATE_REQUIRED", "the server requires a client certificate; set tls.certificateFile and tls.keyFile"),
            ("TLSV1_ALERT_UNKNOWN_CA", "the server did not accept the client certificate (issued by a CA it does not trust)"),
            ("SSLV3_ALERT_BAD_CERTIFICATE", "the server did not accept the client certificate"),
            ("WRONG_VERSION_NUMBER", "the server did not answer with TLS (is it plain http?)"),
        ] where text.contains(marker) {
            return "TLS: \(meaning) [\(marker)]"
        }
        return "TLS handshake failed: \(text.count > 200 ? String(text.prefix(200)) + "…" : text)"
    }
}
