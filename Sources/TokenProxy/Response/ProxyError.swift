import NIOCore
import NIOHTTP1

/// An answer the proxy gives itself (SPEC §5): JSON `{"error": CODE, "message": …}` with the
/// header `X-TokenProxy-Error: CODE`.
public struct ProxyError: Error, Sendable, Equatable {
    public enum Code: String, Sendable {
        case reauthenticationRequired = "reauthentication_required"
        case tokenUnavailable = "token_unavailable"
        case upstreamUnavailable = "upstream_unavailable"
        case upstreamTimeout = "upstream_timeout"
        case badRequest = "bad_request"

        public var status: HTTPResponseStatus {
            switch self {
            case .reauthenticationRequired: .unauthorized
            case .tokenUnavailable: .serviceUnavailable
            case .upstreamUnavailable: .badGateway
            case .upstreamTimeout: .gatewayTimeout
            case .badRequest: .badRequest
            }
        }
    }

    public var code: Code
    public var message: String
    /// Seconds for `Retry-After`.
    public var retryAfter: Int?
    /// The injected fault this answer stands for, if any (`X-TokenProxy-Fault-Injected`).
    public var injectedFault: String?

    public init(_ code: Code, _ message: String, retryAfter: Int? = nil, injectedFault: String? = nil) {
        self.code = code
        self.message = message
        self.retryAfter = retryAfter
        self.injectedFault = injectedFault
    }

    static func badRequest(_ message: String) -> ProxyError { ProxyError(.badRequest, message) }

    static func from(_ error: TokenBrokerError) -> ProxyError {
        switch error {
        case .reauthenticationRequired(let reason):
            ProxyError(.reauthenticationRequired, reason)
        case .unavailable(let reason, let retryAfter):
            ProxyError(.tokenUnavailable, reason, retryAfter: max(1, Int((retryAfter ?? .seconds(1)).timeInterval.rounded(.up))))
        }
    }

    /// The response head and body; `keepAlive` false adds `Connection: close`.
    func response(keepAlive: Bool, allocator: ByteBufferAllocator) -> (HTTPResponseHead, ByteBuffer) {
        let body = allocator.buffer(string: "{\"error\":\"\(code.rawValue)\",\"message\":\(JSONValue.quote(message))}\n")
        var headers = HTTPHeaders()
        headers.reserveCapacity(6)
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        headers.add(name: "X-TokenProxy-Error", value: code.rawValue)
        if let retryAfter { headers.add(name: "Retry-After", value: String(retryAfter)) }
        if let injectedFault { headers.add(name: "X-TokenProxy-Fault-Injected", value: injectedFault) }
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        return (HTTPResponseHead(version: .http1_1, status: code.status, headers: headers), body)
    }
}
