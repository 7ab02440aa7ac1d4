import FoundationEssentials
import Glibc
import Logging
import NIOConcurrencyHelpers

/// Keeps the token files of `sinks` (SPEC §2.5) fresh for programs that read a token from a
/// file: each is replaced atomically (``AtomicFile``), with its mode and the folder checks of the
/// store, at start and within a second of every new token of its identity, refreshed here or
/// adopted from another process. Only a usable token is written (never one inside its
/// `minValidity` window). A sink that cannot be written is logged, shown in `/status`, tried
/// again every ``retryInterval``, and never stops the proxy.
///
/// Brokers tell it about tokens from inside their actor; it only queues them, and one task
/// (``run()``) writes, off the event loops and in order.
public actor TokenSinks {
    /// One sink as `/status` shows it (never the token).
    public struct Status: Sendable, Equatable {
        public var sink: Configuration.Sink
        /// When the file was last written.
        public var writtenAt: Date?
        /// The expiry of the token the file holds, when this process wrote it.
        public var expiresAt: Date?
        /// Why the last write failed; `nil` once a write succeeded.
        public var error: String?
        public var writes: Int = 0
    }

    /// What brokers and reloads handed over since the writer last looked: kept apart from the
    /// actor so that a broker never waits for a write, and so that nothing is dropped — only
    /// superseded (a sink needs its identity's latest token, not every one).
    private struct Pending: Sendable {
        var tokens: [String: PublishedToken] = [:]
        var sinks: [Configuration.Sink]?
    }

    /// How long a failed sink waits before it is tried again (a new token tries at once).
    static let retryInterval = Duration.seconds(5)

    private var sinks: [Configuration.Sink]
    /// Each identity's latest token.
    private var tokens: [String: PublishedToken] = [:]
    /// By path.
    private var states: [String: Status] = [:]
    /// The access token and the settings each file was last written with, by path.
    private var written: [String: (accessToken: String, sink: Configuration.Sink)] = [:]
    private let logger: Logger
    private nonisolated let pending = NIOLockedValueBox(Pending())
    /// Wakes the writer; one pending wake-up is enough, whatever happened meanwhile.
    private nonisolated let wakeUps: AsyncStream<Void>
    private nonisolated let wake: AsyncStream<Void>.Continuation

    public init(sinks: [Configuration.Sink], logger: Logger) {
        self.sinks = sinks
        self.logger = logger
        (wakeUps, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// A broker published `token` for `identity`. Returns at once.
    public nonisolated func tokenPublished(identity: String, token: PublishedToken) {
        pending.withLockedValue { $0.tokens[identity] = token }
        wake.yield()
    }

    /// A reload's sinks: new ones and changed ones are written at once with the current token.
    /// A sink that goes keeps its file (it may still be read; tokenproxy stops updating it).
    public nonisolated func reconfigure(_ sinks: [Configuration.Sink]) {
        pending.withLockedValue { $0.sinks = sinks }
        wake.yield()
    }

    /// Writes the sinks until the task is cancelled; a failed sink is tried again every
    /// ``retryInterval``.
    public func run() async {
        await withDiscardingTaskGroup { group in
            var retryScheduled = false
            for await _ in wakeUps {
                let handed = pending.withLockedValue { pending in
                    defer { pending = Pending() }
                    return pending
                }
                tokens.merge(handed.tokens) { $1 }
                if let next = handed.sinks { sinks = next }
                let failed = await writeDue()
                if failed, !retryScheduled {
                    retryScheduled = true
                    group.addTask { [wake] in
                        try? await Task.sleep(for: Self.retryInterval)
                        wake.yield()
                    }
                } else if !failed {
                    retryScheduled = false
                }
            }
            group.cancelAll()
        }
    }

    /// Every sink, in the order of the configuration.
    public func status() -> [Status] {
        sinks.map { sink in
            var state = states[sink.path] ?? Status(sink: sink)
            state.sink = sink
            return state
        }
    }

    /// Writes every sink whose file does not hold its identity's usable token yet; returns
    /// whether one failed.
    private func writeDue() async -> Bool {
        var failed = false
        for sink in sinks {
            guard let token = tokens[sink.identity], token.isUsable else { continue }
            if let last = written[sink.path], last.accessToken == token.accessToken, last.sink == sink { continue }
            let contents = Self.contents(of: token, format: sink.format, now: Date())
            var state = states[sink.path] ?? Status(sink: sink)
            // Leftovers of a writer killed mid-write hold a token too; this process is the sink's
            // one writer, so before its first write, any there are abandoned.
            let first = written[sink.path] == nil && state.writes == 0
            do {
                try await BlockingIO.run { () throws(SinkError) in
                    if first { AtomicFile.removeTemporaryFiles(of: sink.path) }
                    try Self.write(contents, to: sink)
                }
                written[sink.path] = (token.accessToken, sink)
                let recovered = state.error != nil
                state.writtenAt = Date()
                state.expiresAt = token.expiresAt
                state.error = nil
                state.writes += 1
                logger.info(recovered ? "token sink written again" : "token sink written", metadata: [
                    "sink": "\(sink.path)", "identity": "\(sink.identity)", "expiresAt": "\(RFC3339.format(token.expiresAt))",
                ])
            } catch {
                failed = true
                if state.error != error.description {
                    logger.error("cannot write the token sink; the proxy keeps serving and tries again", metadata: [
                        "sink": "\(sink.path)", "identity": "\(sink.identity)", "error": "\(error)", "retryInSeconds": "\(Self.retryInterval.components.seconds)",
                    ])
                }
                state.error = error.description
            }
            states[sink.path] = state
        }
        return failed
    }

    /// What a sink file holds: the token alone (`raw`), or the `credential json` document.
    static func contents(of token: PublishedToken, format: Configuration.Sink.Format, now: Date) -> Data {
        switch format {
        case .raw: Data(token.accessToken.utf8)
        case .json: Data(CredentialFormats.json(token: token.accessToken, tokenType: token.tokenType, expiresAt: token.expiresAt, now: now).utf8)
        }
    }

    /// Replaces the sink's file, after the folder checks of SPEC §3 (missing folders are created
    /// 0700; a folder others can write, or a symbolic link, is refused).
    static func write(_ contents: Data, to sink: Configuration.Sink) throws(SinkError) {
        if let refusal = StoreFolder.refusal(of: sink.path, key: "sink", create: true) { throw .refused(refusal) }
        do {
            try AtomicFile.replace(sink.path, with: contents, mode: sink.mode)
        } catch {
            throw .system(path: error.path, operation: error.operation, code: error.code)
        }
    }
}

/// A sink file could not be written: which file and why.
enum SinkError: Error, Sendable, CustomStringConvertible {
    case refused(String)
    case system(path: String, operation: String, code: Int32)

    var description: String {
        switch self {
        case .refused(let reason): reason
        case .system(let path, let operation, let code): "cannot \(operation) \(path): \(String(cString: strerror(code)))"
        }
    }
}
