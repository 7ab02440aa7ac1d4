import FoundationEssentials

extension Configuration {
    /// `telemetry` (SPEC §2.6).
    public struct Telemetry: Sendable, Equatable {
        /// OpenTelemetry traces over OTLP/HTTP (protobuf).
        public struct OTLP: Sendable, Equatable {
            /// The collector's base URL, without a trailing `/`: spans go to `endpoint/v1/traces`.
            public var endpoint: String
            /// The share of new traces recorded (0...1); a client's sampled flag is followed.
            public var sampleRatio: Double
            /// `service.name` of every span.
            public var serviceName: String

            public init(endpoint: String = "http://127.0.0.1:4318", sampleRatio: Double = 1, serviceName: String = "tokenproxy") {
                self.endpoint = endpoint
                self.sampleRatio = sampleRatio
                self.serviceName = serviceName
            }
        }

        /// `nil`: no key; the standard `OTEL_EXPORTER_OTLP_ENDPOINT` may still turn traces on.
        public var otlp: OTLP?

        public init(otlp: OTLP? = nil) {
            self.otlp = otlp
        }
    }

    static func readTelemetry(_ root: ConfigurationReader) -> Telemetry {
        guard let reader = root.object("telemetry") else { return Telemetry() }
        var telemetry = Telemetry()
        if let otlpReader = reader.object("otlp") {
            var otlp = Telemetry.OTLP()
            if let text = otlpReader.string("endpoint") {
                switch collectorURL(text) {
                case .success(let url): otlp.endpoint = url
                case .failure(let problem): otlpReader.report("endpoint", problem.reason)
                }
            }
            otlp.sampleRatio = otlpReader.number("sampleRatio", default: 1, range: 0...1)
            if let name = otlpReader.string("serviceName") {
                if name.utf8.count > 200 || name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) {
                    otlpReader.report("serviceName", "must be at most 200 characters, without control characters")
                }
                otlp.serviceName = name
            }
            otlpReader.finish()
            telemetry.otlp = otlp
        }
        reader.finish()
        return telemetry
    }

    struct CollectorURLProblem: Error {
        var reason: String
    }

    /// `telemetry.otlp.endpoint`: an `http` or `https` URL with a host, no credentials, query
    /// or fragment (the spans' path is appended to it); returned without a trailing `/`.
    /// A problem's reason quotes the text, unless it holds credentials.
    static func collectorURL(_ text: String) -> Result<String, CollectorURLProblem> {
        let quoted = "\"\(text.prefix(200))\""
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased(), ["http", "https"].contains(scheme) else {
            return .failure(CollectorURLProblem(reason: "\(quoted) is not an http:// or https:// URL (an OTLP/HTTP collector, such as http://127.0.0.1:4318)"))
        }
        if components.user != nil || components.password != nil {
            return .failure(CollectorURLProblem(reason: "holds credentials, which would be logged with the URL; give the collector's address only"))
        }
        guard let host = components.host, !host.isEmpty else {
            return .failure(CollectorURLProblem(reason: "\(quoted) names no host"))
        }
        if components.query != nil || components.fragment != nil {
            return .failure(CollectorURLProblem(reason: "\(quoted) has a query or fragment; give the collector's base URL (/v1/traces is appended)"))
        }
        var url = text
        while url.hasSuffix("/") { url.removeLast() }
        return .success(url)
    }
}
