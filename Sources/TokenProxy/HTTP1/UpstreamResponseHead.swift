import NIOCore
import NIOHTTP1

/// An upstream response head as the proxy needs it: what the retry and replay decisions read,
/// and the bytes the client gets, already rewritten, so that forwarding is a copy.
struct UpstreamResponseHead: Equatable {
    /// How the response body is delimited on the upstream connection (RFC 9112 §6.3).
    enum Body: Equatable {
        /// No body: a response to HEAD, 204, 304.
        case none
        case length(Int)
        case chunked
        /// Delimited by the upstream closing the connection.
        case untilClose
        /// After a `101`: the connection carries another protocol, both ways, until it closes.
        case tunnel
    }

    var status: Int
    /// `HTTP/1.1 STATUS REASON` and the header lines the client gets, each ending in CRLF:
    /// hop-by-hop headers, those named in `Connection`, and framing headers are left out (the
    /// proxy frames the body for its own hop).
    var forwardedBytes: ByteBuffer
    /// `Content-Length` as declared (also on a bodiless answer, where it describes the GET).
    var contentLength: Int?
    var body: Body
    /// Whether the upstream connection may carry another request after this response.
    var keepAlive: Bool
    var wwwAuthenticate: [String] = []
    var retryAfter: String?

    /// A 401 that means "this token is no good": bare, or `WWW-Authenticate: Bearer error="invalid_token"`.
    var isTokenRejection: Bool {
        guard status == 401 else { return false }
        guard !wwwAuthenticate.isEmpty else { return true }
        return wwwAuthenticate.contains { challenge in
            let lowered = challenge.lowercased()
            return lowered.hasPrefix("bearer") && (lowered.contains("invalid_token") || !lowered.contains("error="))
        }
    }

    /// A head the proxy makes up itself (an injected fault), with an empty body.
    static func synthesized(status: Int, headers: [(String, String)], allocator: ByteBufferAllocator) -> UpstreamResponseHead {
        var bytes = allocator.buffer(capacity: 128)
        bytes.writeStatusLine(status)
        var wwwAuthenticate: [String] = []
        for (name, value) in headers {
            bytes.writeHeaderLine(name, value)
            if HeaderName(name) == .wwwAuthenticate { wwwAuthenticate.append(value) }
        }
        return UpstreamResponseHead(
            status: status, forwardedBytes: bytes, contentLength: 0, body: .length(0), keepAlive: true, wwwAuthenticate: wwwAuthenticate
        )
    }
}
