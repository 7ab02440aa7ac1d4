import NIOCore
import NIOHPACK
import NIOHTTP2

/// One stream to an HTTP/2 upstream (`upstream.protocol`, SPEC §5) as the HTTP/1.1 connection
/// that an ``UpstreamHandler`` writes a request to and reads a response from: the request's
/// bytes become HEADERS and DATA frames, the response's frames become HTTP/1.1 bytes (a body of
/// unknown length chunked, trailers in the last chunk). So a request to an HTTP/2 upstream goes
/// through the same request machine, writer and parser as one to an HTTP/1.1 upstream.
///
/// gRPC (SPEC §5): a request with `content-type: application/grpc…` gets `te: trailers`; a
/// Trailers-Only response with `grpc-status: 16` (UNAUTHENTICATED) reads as a 401, so that the
/// machine refreshes the token and replays a unary call as it does any 401. When that 401 still
/// reaches a gRPC client, ``HTTP2ResponseFrames`` makes it the Trailers-Only answer again.
final class HTTP2UpstreamStreamBridge: ChannelDuplexHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = HTTP2Frame.FramePayload

    private let scheme: String
    /// Why the stream's connection failed, when it did: told to the request, instead of a bare
    /// "closed", when the stream ends with its connection.
    private let connectionFailure: () -> (any Error)?
    /// The request as the handler writes it, parsed back into its parts.
    private var request = ClientRequestParser(limits: .init(maxHeaderBytes: 1 << 20, maxURIBytes: 1 << 20))
    private var requestFraming: ClientRequestHead.BodyFraming = .none
    private var response = Response.awaitingHead

    private enum Response {
        case awaitingHead
        case body(chunked: Bool)
        case ended
    }

    init(scheme: String, connectionFailure: @escaping () -> (any Error)? = { nil }) {
        self.scheme = scheme
        self.connectionFailure = connectionFailure
    }

    func channelInactive(context: ChannelHandlerContext) {
        if case .ended = response {} else if let failure = connectionFailure() {
            response = .ended
            context.fireErrorCaught(failure)
        }
        context.fireChannelInactive()
    }

    // MARK: Request bytes → frames

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        request.append(unwrapOutboundIn(data))
        var frames: [HTTP2Frame.FramePayload] = []
        do throws(ProxyError) {
            while let part = try request.next() {
                switch part {
                case .head(let head):
                    requestFraming = head.framing
                    frames.append(.headers(.init(headers: Self.headers(of: head, scheme: scheme), endStream: head.framing == .none)))
                case .body(let bytes):
                    if bytes.readableBytes > 0 { frames.append(.data(.init(data: .byteBuffer(bytes)))) }
                case .end:
                    if requestFraming != .none { frames.append(.data(.init(data: .byteBuffer(ByteBuffer()), endStream: true))) }
                }
            }
        } catch {
            // The proxy's own request bytes: a defect if they do not parse.
            promise?.fail(error)
            context.fireErrorCaught(error)
            return
        }
        guard let last = frames.popLast() else {
            promise?.succeed(())
            return
        }
        for frame in frames { context.write(wrapOutboundOut(frame), promise: nil) }
        context.write(wrapOutboundOut(last), promise: promise)
    }

    /// The fields of an HTTP/1.1 request head as an HTTP/2 request's (RFC 9113 §8.3.1):
    /// `:authority` from `Host`, names lowercase, connection-specific fields left out.
    static func headers(of head: ClientRequestHead, scheme: String) -> HPACKHeaders {
        var headers = HPACKHeaders()
        headers.reserveCapacity(head.fields.count + 4)
        headers.add(name: ":method", value: head.method.rawValue)
        headers.add(name: ":scheme", value: scheme)
        headers.add(name: ":authority", value: head.first(.host) ?? "")
        headers.add(name: ":path", value: head.target)
        var grpc = false
        for field in head.fields {
            switch field.kind {
            case .host, .connection, .transferEncoding, .upgrade, .hopByHop:
                continue
            case .contentType:
                grpc = head.withBytes(field.value, ForwardingRules.isGRPC)
            default:
                break
            }
            let name = head.name(of: field).lowercased()
            if name == "keep-alive" || name == "proxy-connection" || name == "te" { continue }
            headers.add(name: name, value: head.text(field.value))
        }
        // gRPC servers require it (the client's own was a hop-by-hop field of its hop).
        if grpc { headers.add(name: "te", value: "trailers") }
        return headers
    }

    // MARK: Response frames → bytes

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .headers(let headers):
            switch response {
            case .awaitingHead:
                guard let status = headers.headers.first(name: ":status").flatMap(Int.init), (100...999).contains(status) else {
                    return fail(context: context, "the upstream's HTTP/2 response has no valid :status")
                }
                // Interim answers (100, 103) concern this hop only, as over HTTP/1.1.
                if status < 200 { return }
                let (bytes, chunked) = Self.head(status: status, headers.headers, endStream: headers.endStream)
                response = headers.endStream ? .ended : .body(chunked: chunked)
                context.fireChannelRead(wrapInboundOut(bytes))
            case .body(let chunked):
                // Trailers: they end the response (RFC 9113 §8.1), in the last chunk (a body
                // framed by its length has ended with its last byte).
                response = .ended
                switch HTTP2RequestHead.bodyEnd(trailers: headers.headers, chunked: chunked) {
                case .success(let end): if let end { context.fireChannelRead(wrapInboundOut(end)) }
                case .failure(let error): fail(context: context, "the upstream's HTTP/2 trailers are malformed: \(error.message)")
                }
            case .ended:
                break
            }
        case .data(let data):
            guard case .body(let chunked) = response, case .byteBuffer(let bytes) = data.data else { return }
            if bytes.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(HTTP2RequestHead.bodyPart(bytes, chunked: chunked))) }
            if data.endStream {
                response = .ended
                if case .success(let end?) = HTTP2RequestHead.bodyEnd(trailers: nil, chunked: chunked) { context.fireChannelRead(wrapInboundOut(end)) }
            }
        case .rstStream(let code):
            if case .ended = response { return }
            context.fireErrorCaught(UpstreamResponseError("the upstream reset the HTTP/2 stream (\(code))"))
        default:
            break
        }
    }

    private func fail(context: ChannelHandlerContext, _ reason: String) {
        response = .ended
        context.fireErrorCaught(UpstreamResponseError(reason))
    }

    /// An HTTP/2 response head as an HTTP/1.1 one; `chunked` when its body has no length.
    static func head(status: Int, _ headers: HPACKHeaders, endStream: Bool) -> (bytes: ByteBuffer, chunked: Bool) {
        var status = status
        // gRPC's Trailers-Only UNAUTHENTICATED is the token's rejection, as a 401 is.
        if endStream, status == 200, headers.first(name: "grpc-status") == "16",
            headers.first(name: "content-type").map(HTTP2RequestHead.isGRPC) == true
        {
            status = 401
        }
        var bytes = ByteBuffer()
        bytes.writeStatusLine(status)
        var length: String?
        for (name, value, _) in headers where name.utf8.first != UInt8(ascii: ":") {
            if name == "content-length" {
                length = value
                continue
            }
            bytes.writeHeaderLine(name, value)
        }
        let chunked = !endStream && length == nil
        if endStream {
            // No body follows (a response to HEAD keeps the length it would have had).
            bytes.writeHeaderLine("content-length", length ?? "0")
        } else if let length {
            bytes.writeHeaderLine("content-length", length)
        } else {
            bytes.writeHeaderLine("transfer-encoding", "chunked")
        }
        bytes.writeStaticString("\r\n")
        return (bytes, chunked)
    }
}
