import Atomics
import FoundationEssentials
import Glibc
import NIOCore

/// The token as the data path sees it: the ready-made `Authorization` value and the instant it
/// stops being usable. Immutable, so that handlers can hold one for the length of a request.
public final class PublishedToken: AtomicReference, Sendable {
    /// `Bearer <token>`, built once per token.
    public let authorization: String
    /// `Authorization: <authorization>` and the blank line that ends a request head: the last
    /// bytes of every request head sent with this token.
    let headEnding: ByteBuffer
    public let accessToken: String
    /// The scheme of ``authorization`` (`Bearer`, or what the endpoint named).
    public let tokenType: String
    /// When the token expires.
    public let expiresAt: Date
    /// Wall-clock nanoseconds since the Unix epoch at which the mandatory window begins.
    let mustRefreshAtNanoseconds: Int64
    /// Wall-clock nanoseconds since the Unix epoch at which the token expires.
    let expiresAtNanoseconds: Int64

    init(authorization: String, accessToken: String, tokenType: String = "Bearer", mustRefreshAt: Date, expiresAt: Date) {
        self.authorization = authorization
        self.tokenType = tokenType
        self.expiresAt = expiresAt
        var headEnding = ByteBufferAllocator().buffer(capacity: authorization.utf8.count + 19)
        headEnding.writeHeaderLine("Authorization", authorization)
        headEnding.writeStaticString("\r\n")
        self.headEnding = headEnding
        self.accessToken = accessToken
        self.mustRefreshAtNanoseconds = Self.nanosecondsSinceEpoch(mustRefreshAt)
        self.expiresAtNanoseconds = Self.nanosecondsSinceEpoch(expiresAt)
    }

    /// Saturating, so that no instant, however far away, can trap the conversion.
    static func nanosecondsSinceEpoch(_ date: Date) -> Int64 {
        let seconds = date.timeIntervalSince1970
        guard seconds.isFinite else { return seconds > 0 ? .max : .min }
        return Int64(min(max(seconds, -9e9), 9e9) * 1e9)
    }

    /// Whether the token may still be sent (outside its mandatory window), read from the clock
    /// without Foundation.
    @inline(__always)
    public var isUsable: Bool {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec) < mustRefreshAtNanoseconds
    }
}

/// Publishes the broker's current token for lock-free reads by the channel handlers: one atomic
/// load per request, no actor hop, no lock.
public final class TokenPublisher: Sendable {
    private let current = ManagedAtomic<PublishedToken?>(nil)
    /// Told about every token published (sinks, SPEC §2.5), on the publisher's caller: it must
    /// return at once.
    private let onPublish: (@Sendable (PublishedToken) -> Void)?

    public init(onPublish: (@Sendable (PublishedToken) -> Void)? = nil) {
        self.onPublish = onPublish
    }

    /// The current token, if it may be sent now.
    @inline(__always)
    public func usableToken() -> PublishedToken? {
        guard let token = current.load(ordering: .acquiring), token.isUsable else { return nil }
        return token
    }

    /// The current token, whatever its validity.
    public func latest() -> PublishedToken? {
        current.load(ordering: .acquiring)
    }

    /// Publishes `tokens`, or nothing when they hold no access token with a known expiry.
    /// A `superseded` token is published as not usable: requests ask the broker for another,
    /// and fall back to it while none can be had.
    func publish(_ tokens: TokenSet?, windows: RefreshWindows, superseded: Bool = false) {
        guard let tokens, let authorization = tokens.authorizationValue, let accessToken = tokens.accessToken,
            var deadlines = windows.deadlines(of: tokens)
        else {
            current.store(nil, ordering: .releasing)
            return
        }
        if superseded { deadlines.mustRefreshAt = Date(timeIntervalSince1970: 0) }
        let published = current.load(ordering: .acquiring)
        if published?.accessToken == accessToken,
            published?.mustRefreshAtNanoseconds == PublishedToken.nanosecondsSinceEpoch(deadlines.mustRefreshAt)
        {
            return
        }
        let token = PublishedToken(
            authorization: authorization, accessToken: accessToken, tokenType: tokens.tokenType, mustRefreshAt: deadlines.mustRefreshAt,
            expiresAt: tokens.expiresAt ?? deadlines.mustRefreshAt)
        current.store(token, ordering: .releasing)
        onPublish?(token)
    }
}
