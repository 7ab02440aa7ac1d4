import Logging
import NIOConcurrencyHelpers
import NIOCore
import OTel
import ServiceLifecycle
import Tracing

/// This process's traces (SPEC §2.6): OpenTelemetry spans posted over OTLP/HTTP by swift-otel.
/// Made only when `telemetry.otlp` or the standard `OTEL_*` variables ask for them; without,
/// nothing here exists and the data path tests one optional per request.
public final class Traces: Sendable {
    let tracer: any Tracer
    /// The exporter and batch processor: run beside the proxy, flushed when it stops.
    let service: any Service
    /// Where the spans go, for the startup line.
    let endpoint: String

    private init(tracer: any Tracer, service: any Service, endpoint: String) {
        self.tracer = tracer
        self.service = service
        self.endpoint = endpoint
    }

    /// The traces `telemetry` and `environment` ask for, or `nil` when tracing is off. A
    /// configuration that swift-otel refuses (an `OTEL_*` value, say) is logged and tracing
    /// stays off: traces are never a reason not to serve.
    public static func make(_ telemetry: Configuration.Telemetry, environment: [String: String], logger: Logger) -> Traces? {
        guard let settings = settings(telemetry, environment: environment) else { return nil }
        var otel = OTel.Configuration.default
        otel.serviceName = settings.serviceName
        otel.diagnosticLogger = .custom(logger)
        otel.metrics.enabled = false
        otel.logs.enabled = false
        otel.propagators = [.traceContext]
        otel.traces.exporter = .otlp
        otel.traces.otlpExporter.protocol = .httpProtobuf
        if let endpoint = settings.endpoint { otel.traces.otlpExporter.endpoint = endpoint }
        if let sampler = OTel.Configuration.TracesConfiguration.SamplerConfiguration.parentBasedTraceIDRatio(ratio: settings.sampleRatio) {
            otel.traces.sampler = sampler
        }
        do {
            // The `OTEL_*` variables are applied over these settings by swift-otel, as every
            // OpenTelemetry SDK applies them.
            let (tracer, service) = try OTel.makeTracingBackend(configuration: otel)
            return Traces(tracer: tracer, service: service, endpoint: settings.endpoint ?? environment["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] ?? environment["OTEL_EXPORTER_OTLP_ENDPOINT"] ?? "")
        } catch {
            logger.error("traces are off: the OpenTelemetry settings were refused", metadata: ["error": "\(error)"])
            return nil
        }
    }

    struct Settings: Equatable {
        /// The OTLP/HTTP traces URL; `nil`: from `OTEL_EXPORTER_OTLP_*`.
        var endpoint: String?
        var sampleRatio: Double
        var serviceName: String
    }

    /// Whether tracing is on, and with what (SPEC §2.6): `telemetry.otlp` when present, else
    /// the standard variables when they name an endpoint. `OTEL_SDK_DISABLED=true` turns it off.
    static func settings(_ telemetry: Configuration.Telemetry, environment: [String: String]) -> Settings? {
        if environment["OTEL_SDK_DISABLED"]?.lowercased() == "true" { return nil }
        if let otlp = telemetry.otlp {
            return Settings(endpoint: otlp.endpoint + "/v1/traces", sampleRatio: otlp.sampleRatio, serviceName: otlp.serviceName)
        }
        let named = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"].contains { !(environment[$0] ?? "").isEmpty }
        guard named, environment["OTEL_TRACES_EXPORTER"].map({ $0.lowercased() == "otlp" }) ?? true else { return nil }
        return Settings(endpoint: nil, sampleRatio: 1, serviceName: environment["OTEL_SERVICE_NAME"] ?? "tokenproxy")
    }

    /// Adds `trace_id` and `span_id` to the log lines of a task running inside a span (a
    /// refresh); the data path adds them to its own lines (``RequestTrace/logMetadata``).
    static let logMetadataProvider: Logger.MetadataProvider = {
        let otel = OTel.makeLoggingMetadataProvider()
        return Logger.MetadataProvider {
            guard InstrumentationContext.current != nil else { return [:] }
            var metadata = otel.get()
            metadata["trace_flags"] = nil
            return metadata
        }
    }()
}

/// One proxied request's spans (SPEC §2.6): the server span, continued from the client's
/// `traceparent`, and a client span per upstream attempt, whose `traceparent` goes upstream.
/// Lives in the connection's handler, on its event loop; no token, secret or query string is
/// ever put in a span.
///
/// A span's attributes are gathered here and handed over once, when it ends (each handover
/// takes the span's lock and copies its attributes), and not at all for a span the sampler
/// dropped: that keeps an unsampled request close to the cost of an untraced one.
struct RequestTrace {
    private let tracer: any Tracer
    private let server: any Span
    private var serverAttributes: [String: SpanAttribute] = [:]
    private var attempt: (any Span)?
    private var attemptAttributes: [String: SpanAttribute] = [:]
    private var attempts = 0

    /// `path` is the request's path without its query (which may carry secrets).
    init(tracer: any Tracer, method: String, path: Substring, route: Configuration.Route?, incoming: TraceHeaders) {
        self.tracer = tracer
        var context = InstrumentationContext.topLevel
        if incoming.traceparent != nil { tracer.extract(incoming, into: &context, using: TraceHeaders.Extract()) }
        server = tracer.startSpan(route.map { "\(method) \($0.pathPrefix)" } ?? method, context: context, ofKind: .server)
        guard server.isRecording else { return }
        serverAttributes.reserveCapacity(10)
        serverAttributes["http.request.method"] = .string(method)
        serverAttributes["url.path"] = .string(String(path))
        if let route {
            serverAttributes["tokenproxy.route"] = .string(route.name)
            serverAttributes["http.route"] = .string(route.pathPrefix)
        }
    }

    /// Starts an upstream attempt's client span (ending one still open); returns the header
    /// lines that name it upstream.
    mutating func startAttempt(method: String, upstream: UpstreamURL) -> ByteBuffer {
        endAttempt(failure: "replaced by another attempt")
        attempts += 1
        let span = tracer.startSpan(method, context: server.context, ofKind: .client)
        attempt = span
        if span.isRecording {
            attemptAttributes = [:]
            attemptAttributes.reserveCapacity(7)
            attemptAttributes["http.request.method"] = .string(method)
            attemptAttributes["server.address"] = .string(upstream.host)
            attemptAttributes["server.port"] = .int64(Int64(upstream.port))
            attemptAttributes["tokenproxy.attempt"] = .int64(Int64(attempts))
        }
        var lines = TraceHeaderLines()
        tracer.inject(span.context, into: &lines, using: TraceHeaderLines.Inject())
        return lines.buffer
    }

    /// The upstream's status for the attempt under way.
    mutating func attemptAnswered(status: Int) {
        guard let attempt, attempt.isRecording else { return }
        attemptAttributes["http.response.status_code"] = .int64(Int64(status))
        if status >= 500 { attempt.setStatus(SpanStatus(code: .error)) }
    }

    /// Ends the attempt under way, if any: answered (`failure` nil), or why it was given up.
    mutating func endAttempt(status: Int? = nil, failure: String? = nil) {
        guard let attempt else { return }
        if attempt.isRecording {
            if let status { attemptAnswered(status: status) }
            if let failure {
                attemptAttributes["error.type"] = .string(failure)
                attempt.setStatus(SpanStatus(code: .error, message: failure))
            }
            attempt.attributes = SpanAttributes(attemptAttributes)
        }
        attempt.end()
        self.attempt = nil
    }

    /// The request waited for the refresh `refresh` names.
    func link(toRefresh refresh: InstrumentationContext) {
        guard server.isRecording else { return }
        server.addLink(SpanLink(context: refresh, attributes: ["tokenproxy.link": "waited for token refresh"]))
    }

    /// Ends both spans: the status the client got (`0`: none), and the proxy's error code or
    /// abort reason when the proxy ended it.
    mutating func finish(status: UInt, attempts tries: Int, replayed: Bool, error: String?) {
        if attempt != nil { endAttempt(failure: status == 0 ? (error ?? "not answered") : nil) }
        if server.isRecording {
            if status > 0 { serverAttributes["http.response.status_code"] = .int64(Int64(status)) }
            serverAttributes["tokenproxy.attempts"] = .int64(Int64(tries))
            serverAttributes["tokenproxy.replayed"] = .bool(replayed)
            if let error { serverAttributes["error.type"] = .string(error) }
            server.attributes = SpanAttributes(serverAttributes)
            if status >= 500 || error != nil { server.setStatus(SpanStatus(code: .error, message: error)) }
        }
        server.end()
    }

    /// `trace_id` and `span_id` of the server span, for the request's log lines (SPEC §2.6).
    var logMetadata: Logger.Metadata {
        InstrumentationContext.withValue(server.context) { Traces.logMetadataProvider.get() }
    }
}

/// A client's `traceparent` and `tracestate`, as the propagator reads them.
struct TraceHeaders {
    var traceparent: String?
    var tracestate: String?

    struct Extract: Extractor {
        func extract(key: String, from carrier: TraceHeaders) -> String? {
            switch key {
            case "traceparent": carrier.traceparent
            case "tracestate": carrier.tracestate
            default: nil
            }
        }
    }
}

/// The header lines the propagator writes for an upstream attempt (`traceparent`, and
/// `tracestate` when the client sent one), ready to go between the head and its last line.
struct TraceHeaderLines {
    var buffer = ByteBuffer()

    struct Inject: Injector {
        func inject(_ value: String, forKey key: String, into carrier: inout TraceHeaderLines) {
            // The propagator's values are its own hex and the client's `tracestate`, which the
            // parser already refused to hold a CR or LF; checked again, so a line never splits.
            guard !value.utf8.contains(where: { $0 == UInt8(ascii: "\r") || $0 == UInt8(ascii: "\n") }) else { return }
            carrier.buffer.writeString(key)
            carrier.buffer.writeString(": ")
            carrier.buffer.writeString(value)
            carrier.buffer.writeString("\r\n")
        }
    }
}

/// One identity's refresh spans (SPEC §2.6), and the latest one, which requests that waited
/// for a token link to.
final class RefreshTraces: Sendable {
    let tracer: any Tracer
    let identity: String
    /// The token endpoint's host (never its URL, whose query might hold a secret).
    let endpointHost: String
    private let board = NIOLockedValueBox(Board())

    private struct Board {
        /// Refresh spans started so far.
        var started = 0
        var latest: InstrumentationContext?
        var running = false
    }

    /// What a request saw when it asked for a token.
    struct Mark {
        fileprivate var started: Int
        fileprivate var running: InstrumentationContext?
    }

    init(tracer: any Tracer, identity: String, endpointHost: String) {
        self.tracer = tracer
        self.identity = identity
        self.endpointHost = endpointHost
    }

    func mark() -> Mark {
        board.withLockedValue { Mark(started: $0.started, running: $0.running ? $0.latest : nil) }
    }

    /// The refresh a request that asked at `mark` waited for: one running then, or started since.
    func refresh(since mark: Mark) -> InstrumentationContext? {
        board.withLockedValue { board in board.started > mark.started ? board.latest : mark.running }
    }

    /// Starts a refresh's span; `reason` is `expiry`, `proactive`, `401` or `forced`.
    func start(reason: String) -> any Span {
        let span = tracer.startSpan("token refresh", context: .topLevel, ofKind: .client)
        span.updateAttributes { attributes in
            attributes["tokenproxy.identity"] = identity
            attributes["tokenproxy.refresh.reason"] = reason
            attributes["server.address"] = endpointHost
        }
        board.withLockedValue { board in
            board.started += 1
            board.latest = span.context
            board.running = true
        }
        return span
    }

    /// Ends a refresh's span with its result (`refreshed`, `adopted`, `failed`, `refused`).
    func end(_ span: any Span, result: String, failure: String?) {
        span.attributes["tokenproxy.refresh.result"] = result
        if let failure { span.setStatus(SpanStatus(code: .error, message: failure)) }
        board.withLockedValue { $0.running = false }
        span.end()
    }
}
