import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A test upstream that answers with exactly the bytes a test gives: for responses a
/// well-behaved HTTP library would never send (framing by close, bare LF, garbage).
final class RawUpstream: Sendable {
    /// What to send for a request head (the text up to its blank line), and whether to close after.
    typealias Answer = @Sendable (_ requestHead: String) -> (bytes: String, close: Bool)

    private let channel: any Channel
    private let heads = NIOLockedValueBox<[String]>([])
    private let accepted = NIOLockedValueBox(0)

    var port: Int { channel.localAddress?.port ?? 0 }
    var url: String { "http://127.0.0.1:\(port)" }
    /// The request heads received, in order.
    var received: [String] { heads.withLockedValue { $0 } }
    /// Connections accepted so far.
    var connections: Int { accepted.withLockedValue { $0 } }

    /// With `pace`, each answer is written one byte at a time, that long apart (an upstream that
    /// trickles its response).
    init(pace: TimeAmount? = nil, answer: @escaping Answer) async throws {
        let heads = self.heads
        let accepted = self.accepted
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                accepted.withLockedValue { $0 += 1 }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Handler(answer: answer, heads: heads, pace: pace))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    func shutdown() async {
        try? await channel.close()
    }

    private final class Handler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let answer: Answer
        let heads: NIOLockedValueBox<[String]>
        let pace: TimeAmount?
        var received = ""

        init(answer: @escaping Answer, heads: NIOLockedValueBox<[String]>, pace: TimeAmount?) {
            self.answer = answer
            self.heads = heads
            self.pace = pace
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            received += String(buffer: unwrapInboundIn(data))
            // Requests without a body only: answer each complete head.
            while let end = received.range(of: "\r\n\r\n") {
                let head = String(received[..<end.lowerBound])
                received = String(received[end.upperBound...])
                heads.withLockedValue { $0.append(head) }
                let (bytes, close) = answer(head)
                if let pace {
                    let loop = context.eventLoop.assumeIsolated()
                    for (index, byte) in bytes.utf8.enumerated() {
                        loop.scheduleTask(in: pace * Int64(index)) {
                            context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(bytes: [byte])), promise: nil)
                        }
                    }
                    return
                }
                if close {
                    context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: bytes))).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
                    return
                }
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: bytes)), promise: nil)
            }
        }
    }
}
