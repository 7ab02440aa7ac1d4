import Foundation
import Testing

@testable import TokenProxy

/// `telemetry` (SPEC §2.6): the key as read, and whether traces are on, from the key and the
/// standard `OTEL_*` variables.
@Suite("Telemetry configuration (SPEC §2.6)")
struct TelemetryConfigurationTests {
    static func json(_ telemetry: String) -> String {
        #"{"upstream": {"url": "http://127.0.0.1:9000"}, "token": {"endpoint": "http://127.0.0.1:9001/token", "grant": "client_credentials", "clientId": "c", "clientSecretEnv": "SECRET"}, "telemetry": \#(telemetry)}"#
    }

    private func problems(_ telemetry: String) -> [String] {
        do {
            _ = try Configuration.parse(Data(Self.json(telemetry).utf8), path: "/etc/tokenproxy/config.json")
            return []
        } catch {
            return error.problems.map(\.description)
        }
    }

    @Test func absentMeansNoKey() throws {
        let configuration = try Configuration.parse(Data(ConfigurationTests.minimal.utf8), path: "/etc/tokenproxy/config.json")
        #expect(configuration.telemetry.otlp == nil)
    }

    @Test("defaults and values", arguments: [
        (#"{"otlp": {}}"#, Configuration.Telemetry.OTLP(endpoint: "http://127.0.0.1:4318", sampleRatio: 1, serviceName: "tokenproxy")),
        (#"{"otlp": {"endpoint": "https://collector.internal:4318/", "sampleRatio": 0.25, "serviceName": "billing-proxy"}}"#,
         Configuration.Telemetry.OTLP(endpoint: "https://collector.internal:4318", sampleRatio: 0.25, serviceName: "billing-proxy")),
        (#"{"otlp": {"endpoint": "http://127.0.0.1:4318/otlp", "sampleRatio": 0}}"#,
         Configuration.Telemetry.OTLP(endpoint: "http://127.0.0.1:4318/otlp", sampleRatio: 0, serviceName: "tokenproxy")),
    ])
    func values(telemetry: String, expected: Configuration.Telemetry.OTLP) throws {
        let configuration = try Configuration.parse(Data(Self.json(telemetry).utf8), path: "/etc/tokenproxy/config.json")
        #expect(configuration.telemetry.otlp == expected)
    }

    @Test("each problem names its key", arguments: [
        (#"{"otlp": {"endpoint": "127.0.0.1:4318"}}"#, "telemetry.otlp.endpoint"),
        (#"{"otlp": {"endpoint": "grpc://127.0.0.1:4317"}}"#, "telemetry.otlp.endpoint"),
        (#"{"otlp": {"endpoint": "http://user:pw@127.0.0.1:4318"}}"#, "telemetry.otlp.endpoint"),
        (#"{"otlp": {"endpoint": "http://127.0.0.1:4318/?token=x"}}"#, "telemetry.otlp.endpoint"),
        (#"{"otlp": {"sampleRatio": 1.5}}"#, "telemetry.otlp.sampleRatio"),
        (#"{"otlp": {"sampleRatio": -0.1}}"#, "telemetry.otlp.sampleRatio"),
        (#"{"otlp": {"serviceName": ""}}"#, "telemetry.otlp.serviceName"),
        (#"{"otlp": {"endpont": "http://127.0.0.1:4318"}}"#, "telemetry.otlp.endpont"),
        (#"{"jaeger": {}}"#, "telemetry.jaeger"),
        (#""on""#, "telemetry"),
    ])
    func problems(telemetry: String, key: String) {
        let found = problems(telemetry)
        #expect(found.contains { $0.hasPrefix(key) }, "\(found)")
    }

    @Test("a collector URL with credentials is not echoed back")
    func credentialsNotEchoed() {
        let found = problems(#"{"otlp": {"endpoint": "http://user:hunter2@127.0.0.1:4318"}}"#)
        #expect(!found.isEmpty)
        #expect(found.allSatisfy { !$0.contains("hunter2") }, "\(found)")
    }

    typealias Settings = Traces.Settings

    @Test("whether traces are on", arguments: [
        // No key, no variables: off.
        (nil, [:], nil),
        // The key: its endpoint with /v1/traces, its ratio and name.
        (Configuration.Telemetry.OTLP(endpoint: "http://c:4318", sampleRatio: 0.5, serviceName: "p"), [:],
         Settings(endpoint: "http://c:4318/v1/traces", sampleRatio: 0.5, serviceName: "p")),
        // The standard variables, when the key is absent.
        (nil, ["OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"], Settings(endpoint: nil, sampleRatio: 1, serviceName: "tokenproxy")),
        (nil, ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces", "OTEL_SERVICE_NAME": "s"], Settings(endpoint: nil, sampleRatio: 1, serviceName: "s")),
        (nil, ["OTEL_EXPORTER_OTLP_ENDPOINT": ""], nil),
        (nil, ["OTEL_SERVICE_NAME": "s"], nil),
        (nil, ["OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"], nil),
        // Turned off, whatever asks for them.
        (Configuration.Telemetry.OTLP(), ["OTEL_SDK_DISABLED": "true"], nil),
        (nil, ["OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "TRUE"], nil),
    ] as [(Configuration.Telemetry.OTLP?, [String: String], Settings?)])
    func tracesOn(otlp: Configuration.Telemetry.OTLP?, environment: [String: String], expected: Settings?) {
        #expect(Traces.settings(Configuration.Telemetry(otlp: otlp), environment: environment) == expected)
    }

    @Test("traceparent and tracestate are recognised in any case")
    func headerNames() {
        #expect(HeaderName("traceparent") == .traceparent)
        #expect(HeaderName("TraceParent") == .traceparent)
        #expect(HeaderName("tracestate") == .tracestate)
        #expect(HeaderName("Retry-After") == .retryAfter)
        #expect(HeaderName("Keep-Alive") == .hopByHop)
    }
}
