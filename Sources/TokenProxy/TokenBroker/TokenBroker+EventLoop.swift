import NIOCore

extension TokenBroker {
    /// ``tokenForRequest(_:)`` delivered on `eventLoop`, so that a connection handler takes it up
    /// without leaving its loop: requests and `/readyz` ask the one same question.
    nonisolated func tokenForRequest(_ need: Need, on eventLoop: any EventLoop) -> EventLoopFuture<Result<PublishedToken, TokenBrokerError>> {
        eventLoop.makeFutureWithTask {
            do throws(TokenBrokerError) {
                return .success(try await self.tokenForRequest(need))
            } catch {
                return .failure(error)
            }
        }
    }
}
