import FoundationEssentials
import Glibc
import Logging

/// Writes one line per log event to stderr: a JSON object (`log.format: json`) or readable text.
///
/// Each line goes out in one `write(2)`, so lines from concurrent tasks never interleave.
public struct StderrLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    /// Adds `trace_id` and `span_id` inside a span (SPEC §2.6).
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let format: Configuration.Log.Format

    public init(label: String, level: Logger.Level, format: Configuration.Log.Format) {
        self.label = label
        self.logLevel = level
        self.format = format
    }

    /// Installs this handler for the whole process (once, before any logger is made).
    public static func bootstrap(level: String, format: Configuration.Log.Format) {
        let parsed = Logger.Level(rawValue: level) ?? .info
        LoggingSystem.bootstrap({ label, provider in
            var handler = StderrLogHandler(label: label, level: parsed, format: format)
            handler.metadataProvider = provider
            return handler
        }, metadataProvider: Traces.logMetadataProvider)
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get(), !provided.isEmpty { merged.merge(provided) { $1 } }
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        let time = RFC3339.format(Date())
        let line: String
        switch format {
        case .json:
            var fields = ["\"time\":\(JSONValue.quote(time))", "\"level\":\(JSONValue.quote(event.level.rawValue))", "\"message\":\(JSONValue.quote(event.message.description))"]
            for key in merged.keys.sorted() { fields.append("\(JSONValue.quote(key)):\(Self.json(merged[key]!))") }
            line = "{" + fields.joined(separator: ",") + "}\n"
        case .text:
            let details = merged.keys.sorted().map { "\($0)=\(merged[$0]!)" }.joined(separator: " ")
            line = "\(time) \(event.level.rawValue.uppercased()) \(event.message)\(details.isEmpty ? "" : " " + details)\n"
        }
        Self.writeToStandardError(line)
    }

    /// Writes `text` to stderr whole (retrying interrupted writes), without Foundation.
    public static func writeToStandardError(_ text: String) {
        var text = text
        text.withUTF8 { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = write(STDERR_FILENO, buffer.baseAddress! + offset, buffer.count - offset)
                if written <= 0 { if errno == EINTR { continue } else { return } }
                offset += written
            }
        }
    }

    private static func json(_ value: Logger.MetadataValue) -> String {
        switch value {
        case .string(let text): JSONValue.quote(text)
        case .stringConvertible(let convertible): JSONValue.quote(convertible.description)
        case .array(let items): "[" + items.map(json).joined(separator: ",") + "]"
        case .dictionary(let fields): "{" + fields.keys.sorted().map { JSONValue.quote($0) + ":" + json(fields[$0]!) }.joined(separator: ",") + "}"
        }
    }
}
