import NIOCore

extension TokenBroker {
    /// A token for `need` as the data path uses it: the published one (a token the broker could
    /// not publish, having no expiry, is refused like any unusable one), delivered on
    /// `eventLoop` so that a connection handler can take it up without leaving its loop.
    nonisolated func publishedToken(for need: Need, on eventLoop: any EventLoop) -> EventLoopFuture<Result<PublishedToken, TokenBrokerError>> {
        let publisher = self.publisher
        return eventLoop.makeFutureWithTask {
            do throws(TokenBrokerError) {
                _ = try await self.token(for: need)
                guard let token = publisher.latest() else {
                    return .failure(.unavailable(reason: "the token has no usable expiry", retryAfter: nil))
                }
                return .success(token)
            } catch {
                return .failure(error)
            }
        }
    }
}
