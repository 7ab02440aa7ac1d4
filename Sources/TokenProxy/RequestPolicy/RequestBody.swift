import NIOCore

/// The client's request body as the proxy holds it: parts not yet sent on the current attempt,
/// and, while the body fits in `retry.replayBuffer`, every part, so that it can be sent again.
struct RequestBody {
    private(set) var parts: [ByteBuffer] = []
    /// How many of `parts` the current attempt has written.
    private var sentParts = 0
    private(set) var totalBytes = 0
    /// Bytes held but not yet written on the current attempt: when large, the proxy stops
    /// reading from the client.
    private(set) var unsentBytes = 0
    private(set) var isComplete = false
    /// Whether the whole body so far is kept (it fits in the replay buffer), so that a new
    /// attempt can send it from its first byte.
    private(set) var isReplayable = true
    let replayLimit: Int

    init(replayLimit: Int) {
        self.replayLimit = replayLimit
    }

    mutating func append(_ buffer: ByteBuffer) {
        parts.append(buffer)
        totalBytes += buffer.readableBytes
        unsentBytes += buffer.readableBytes
        if isReplayable, totalBytes > replayLimit {
            isReplayable = false
            dropSentParts()
        }
    }

    mutating func markComplete() {
        isComplete = true
    }

    /// The parts the current attempt has not written yet; they count as written from now on.
    mutating func takeUnsent() -> ArraySlice<ByteBuffer> {
        let unsent = parts[sentParts...]
        sentParts = parts.count
        unsentBytes = 0
        if !isReplayable { dropSentParts() }
        return unsent
    }

    /// Starts a new attempt: every kept part is unsent again.
    mutating func rewind() {
        precondition(isReplayable, "a body that outgrew the replay buffer cannot be sent again")
        sentParts = 0
        unsentBytes = totalBytes
    }

    private mutating func dropSentParts() {
        parts.removeFirst(sentParts)
        sentParts = 0
    }
}
