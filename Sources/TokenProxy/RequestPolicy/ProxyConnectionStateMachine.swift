import NIOCore

/// The life of one client connection (SPEC §2.2, §5): between requests → in a request (the
/// ``RequestStateMachine`` it wraps) → back, or into a WebSocket tunnel, or closing. Every
/// decision about the connection as a whole is made here — whether the next request is read,
/// whether an answer keeps the connection, what a refusal, a parse error, a half-close or a
/// graceful shutdown leads to — and returned as an ``Action`` for ``ProxyRequestHandler`` to carry
/// out, in the style of async-http-client's `HTTP1ConnectionStateMachine`.
struct ProxyConnectionStateMachine {
    enum State: Equatable {
        /// No request in progress; the next one is read when its bytes come.
        case idle
        /// `currentRequest` is in progress.
        case inRequest
        /// After a WebSocket upgrade's `101`: bytes pass both ways until a side closes.
        case tunnel
        /// The last answer is written or on its way: nothing the client sends is read any more.
        case closing
    }

    enum Action {
        case none
        /// Carry out what the request machine decided.
        case request(RequestStateMachine.Action)
        /// Answer with the proxy's own error (nothing of the request went upstream), then close.
        case refuse(ProxyError)
        /// The request is done and the connection stays: take the next request from the parser.
        case readNextRequest
        /// Close the connection (nothing is owed to the client, or what is owed is on its way).
        case close
        /// The request's body broke off malformed while it was being sent: it cannot be
        /// answered; close, and count it as aborted.
        case closeForMalformedBody(ProxyError)
    }

    private(set) var state = State.idle
    /// The request in progress (in a request or a tunnel). Kept beside the state rather than as
    /// its payload so that events mutate it in place: taking it out of an enum and putting it
    /// back copied it (a retain per field) on every event, measurably on the hot path.
    private(set) var currentRequest: RequestStateMachine?
    /// A graceful shutdown asked the connection to end after the current answer.
    private var quiescing = false
    /// The client sent its FIN: a request it sent whole is answered, nothing more is read.
    private var inputClosed = false

    // MARK: Requests

    /// A request head was read and prepared (or refused by the forwarding rules).
    mutating func requestHead(_ prepared: Result<RequestStateMachine, ProxyError>) -> Action {
        switch state {
        case .idle:
            switch prepared {
            case .success(let machine):
                state = .inRequest
                currentRequest = machine
                return .request(.obtainToken)
            case .failure(let error):
                // Nothing of this request, nor anything after it on this connection, goes upstream.
                state = .closing
                return .refuse(error)
            }
        case .inRequest, .tunnel, .closing:
            preconditionFailure("a request head was read while the connection was \(state.name): the parser reads one request at a time")
        }
    }

    /// Runs one event on the request in progress (in place) and says what to do about it.
    mutating func request(_ event: (inout RequestStateMachine) -> RequestStateMachine.Action) -> Action {
        switch state {
        case .inRequest:
            let action = event(&currentRequest!)
            if case .openTunnel = action { state = .tunnel }
            return .request(action)
        case .tunnel:
            return .request(event(&currentRequest!))
        case .idle, .closing:
            // A late callback of a request that has ended.
            return .none
        }
    }

    var isTunnel: Bool { state == .tunnel }

    /// Whether the answer now being written leaves the connection open for another request.
    func keepsConnection(responseEndsWithClose: Bool) -> Bool {
        guard state == .inRequest, currentRequest?.clientKeepAlive == true, currentRequest?.body.isComplete == true else { return false }
        return !responseEndsWithClose && mayKeepAlive
    }

    /// Whether a response head about to be written may promise keep-alive.
    var mayKeepAlive: Bool { !quiescing && !inputClosed }

    /// The request's answer and body are both complete; `keptConnection` is what its answer said.
    mutating func requestFinished(keptConnection: Bool) -> Action {
        switch state {
        case .inRequest:
            guard currentRequest?.isFinished == true else { return .none }
            currentRequest = nil
            guard keptConnection, !quiescing, !inputClosed else {
                state = .closing
                return .none
            }
            state = .idle
            return .readNextRequest
        case .tunnel, .closing:
            currentRequest = nil
            state = .closing
            return .none
        case .idle:
            preconditionFailure("a request finished while the connection was idle")
        }
    }

    /// The request machine gave up the connection (`.abort`), or the handler closed it.
    mutating func closed() {
        state = .closing
        currentRequest = nil
    }

    // MARK: The client's bytes

    /// The parser found malformed bytes. Before anything of the request went upstream the
    /// client gets the error; a body that breaks off mid-way cannot be answered.
    mutating func parseFailed(_ error: ProxyError) -> Action {
        switch state {
        case .idle:
            state = .closing
            return .refuse(error)
        case .inRequest:
            state = .closing
            switch currentRequest?.state {
            case .waitingForToken?, .connecting?: return .refuse(error)
            default: return .closeForMalformedBody(error)
            }
        case .tunnel, .closing:
            return .none
        }
    }

    /// Whether bytes the client sends are still read (after a refusal or the last answer they
    /// are left unread).
    var readsClient: Bool {
        switch state {
        case .idle, .inRequest, .tunnel: true
        case .closing: false
        }
    }

    /// The client half-closed its side.
    mutating func clientInputClosed() -> Action {
        inputClosed = true
        switch state {
        case .inRequest where currentRequest?.body.isComplete == true:
            // Answered, then closed.
            return .none
        case .inRequest, .tunnel:
            return request { $0.clientClosed() }
        case .idle:
            state = .closing
            return .close
        case .closing:
            return .none
        }
    }

    /// A graceful shutdown: idle connections close now, busy ones after their answer.
    mutating func quiesce() -> Action {
        quiescing = true
        guard state == .idle else { return .none }
        state = .closing
        return .close
    }

    /// No request started within `limits.idleTimeout`: closed without an answer.
    mutating func idleTimedOut() -> Action {
        guard state == .idle else { return .none }
        state = .closing
        return .close
    }

    /// The request head did not arrive within `limits.headerTimeout`.
    mutating func headTimedOut(_ error: ProxyError) -> Action {
        guard state == .idle else { return .none }
        state = .closing
        return .refuse(error)
    }
}

extension ProxyConnectionStateMachine.State {
    var name: String {
        switch self {
        case .idle: "idle"
        case .inRequest: "in a request"
        case .tunnel: "a tunnel"
        case .closing: "closing"
        }
    }
}
