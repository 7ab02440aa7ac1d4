import NIOCore
import NIOHTTP1

/// An answer the proxy gives itself (SPEC §5): JSON `{"error": CODE, "message": …}` with the
/// header `X-TokenProxy-Error: CODE`.
public struct ProxyError: Error, Sendable, Equatable {
    public enum Code: String, Sendable, CaseIterable {
        case reauthenticationRequired = "reauthentication_required"
        case tokenUnavailable = "token_unavailable"
        case upstreamUnavailable = "upstream_unavailable"
        case upstreamTimeout = "upstream_timeout"
        case badRequest = "bad_request"
        case forbiddenRequest = "forbidden_request"
        case methodNotAllowed = "method_not_allowed"
        case requestTimeout = "request_timeout"
        case uriTooLong = "uri_too_long"
        case requestHeaderTooLarge = "request_header_too_large"
        /// No route of the listener takes the request's host and path (SPEC §2.4).
        case noRoute = "no_route"

        public var status: HTTPResponseStatus {
            switch self {
            case .reauthenticationRequired: .unauthorized
            case .tokenUnavailable: .serviceUnavailable
            case .upstreamUnavailable: .badGateway
            case .upstreamTimeout: .gatewayTimeout
            case .badRequest: .badRequest
            case .forbiddenRequest: .forbidden
            case .methodNotAllowed: .methodNotAllowed
            case .requestTimeout: .requestTimeout
            case .uriTooLong: .uriTooLong
            case .requestHeaderTooLarge: .requestHeaderFieldsTooLarge
            case .noRoute: .notFound
            }
        }
    }

    public var code: Code
    public var message: String
    /// Seconds for `Retry-After`.
    public var retryAfter: Int?
    /// The injected fault this answer stands for, if any (`X-TokenProxy-Fault-Injected`).
    public var injectedFault: String?
    /// The request's id (SPEC §5), as `requestId` in the body.
    public var requestID: String?

    public init(_ code: Code, _ message: String, retryAfter: Int? = nil, injectedFault: String? = nil) {
        self.code = code
        self.message = message
        self.retryAfter = retryAfter
        self.injectedFault = injectedFault
    }

    static func badRequest(_ message: String) -> ProxyError { ProxyError(.badRequest, message) }
    static func forbidden(_ message: String) -> ProxyError { ProxyError(.forbiddenRequest, message) }

    static func from(_ error: TokenBrokerError) -> ProxyError {
        switch error {
        case .reauthenticationRequired(let reason):
            ProxyError(.reauthenticationRequired, reason)
        case .unavailable(let reason, let retryAfter):
            ProxyError(.tokenUnavailable, reason, retryAfter: max(1, Int(min((retryAfter ?? .seconds(1)).timeInterval, 3600).rounded(.up))))
        case .misconfigured(let reason):
            ProxyError(.tokenUnavailable, "configuration error: \(reason)", retryAfter: 60)
        case .rateLimited(let retryAfter):
            ProxyError(.tokenUnavailable, error.description, retryAfter: max(1, Int(retryAfter.timeInterval.rounded(.up))))
        }
    }

    /// The whole response as it goes on the wire; `keepAlive` false adds `Connection: close`.
    func response(keepAlive: Bool, allocator: ByteBufferAllocator) -> ByteBuffer {
        let id = requestID.map { ",\"requestId\":\(JSONValue.quote($0))" } ?? ""
        let body = "{\"error\":\"\(code.rawValue)\",\"message\":\(JSONValue.quote(message))\(id)}\n"
        var bytes = allocator.buffer(capacity: body.utf8.count + 256)
        bytes.writeStatusLine(Int(code.status.code))
        bytes.writeHeaderLine("Content-Type", "application/json")
        bytes.writeHeaderLine("Content-Length", String(body.utf8.count))
        bytes.writeHeaderLine("X-TokenProxy-Error", code.rawValue)
        if let retryAfter { bytes.writeHeaderLine("Retry-After", String(retryAfter)) }
        if let injectedFault { bytes.writeHeaderLine("X-TokenProxy-Fault-Injected", injectedFault) }
        if !keepAlive { bytes.writeHeaderLine("Connection", "close") }
        bytes.writeStaticString("\r\n")
        bytes.writeString(body)
        return bytes
    }
}
