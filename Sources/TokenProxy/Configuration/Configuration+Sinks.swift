import FoundationEssentials
import Glibc

extension Configuration {
    /// A token file the running proxy keeps fresh (SPEC §2.5), for a program that reads its
    /// token from a file, as Vault Agent's sinks and Kubernetes' projected tokens do.
    public struct Sink: Sendable, Equatable {
        public enum Format: String, Sendable, CaseIterable {
            /// The access token alone, no newline.
            case raw
            /// The `tokenproxy credential json` document.
            case json
        }

        /// Absolute (a relative path in the file is resolved against the file's folder).
        public var path: String
        /// Whose token the file holds.
        public var identity: String
        public var format: Format
        /// The file's permission bits (default 0600).
        public var mode: mode_t

        public init(path: String, identity: String = Configuration.defaultIdentity, format: Format = .raw, mode: mode_t = 0o600) {
            self.path = path
            self.identity = identity
            self.format = format
            self.mode = mode
        }
    }

    /// `sinks` (SPEC §2.5), checked against the identities and the files the configuration
    /// names (`otherFiles`: path → what it is).
    static func readSinks(_ root: ConfigurationReader, identities: [String: Token], otherFiles: [String: String], resolve: (String) -> String) -> [Sink] {
        guard let entries = root.array("sinks") else { return [] }
        var sinks: [Sink] = []
        // Every file the configuration names: a sink over one of them would destroy it.
        var tokenFiles: [String: String] = [:]
        for (path, what) in otherFiles { tokenFiles[normalized(path)] = what }
        for (name, token) in identities {
            let identity = "the identity \"\(name)\""
            tokenFiles[normalized(token.store)] = "the store of \(identity)"
            tokenFiles[normalized(token.lockFile)] = "the lock file of \(identity)"
            if case .file(let path)? = token.clientSecret { tokenFiles[normalized(path)] = "the client secret of \(identity)" }
            if let path = token.clientKeyFile { tokenFiles[normalized(path)] = "the client key of \(identity)" }
            if let path = token.clientAssertionFile { tokenFiles[normalized(path)] = "the client assertion of \(identity)" }
            if case .file(let path)? = token.exchange?.subject { tokenFiles[normalized(path)] = "the subject token file of \(identity)" }
        }
        var seen: [String: Int] = [:]
        for (index, entry) in entries.enumerated() {
            guard let reader = entry else { continue }
            var sink = Sink(path: "")
            if let path = reader.string("path", required: true) {
                if path.isEmpty || path.hasSuffix("/") {
                    reader.report("path", "\"\(path)\" must name a file")
                }
                sink.path = normalized(resolve(path))
                if let what = tokenFiles[sink.path] {
                    reader.report("path", "\(sink.path) is \(what); a sink needs a file of its own")
                } else if let other = seen[sink.path] {
                    reader.report("path", "\(sink.path) is also the path of sinks[\(other)]; each sink needs a file of its own")
                }
                seen[sink.path] = index
            }
            if let identity = reader.string("identity") {
                sink.identity = identity
                if identities[identity] == nil, !identities.isEmpty {
                    reader.report("identity", "names the identity \"\(identity)\", which is not configured; known: \(identities.keys.sorted().joined(separator: ", "))")
                }
            } else if identities[defaultIdentity] == nil, !identities.isEmpty {
                reader.report("identity", "is required: there is no identity \"default\" (no top-level token); known: \(identities.keys.sorted().joined(separator: ", "))")
            }
            sink.format = reader.choice("format", default: .raw)
            if let text = reader.string("mode") {
                switch parseMode(text) {
                case .success(let mode): sink.mode = mode
                case .failure(let problem): reader.report("mode", "\"\(text)\" \(problem.reason)")
                }
            }
            reader.finish()
            sinks.append(sink)
        }
        return sinks
    }

    /// `path` without `.`, `..` or repeated slashes, so that two spellings of a file compare equal.
    static func normalized(_ path: String) -> String {
        URL(fileURLWithPath: path).standardized.path
    }

    struct ModeProblem: Error {
        var reason: String
    }

    /// A sink's `mode`: three or four octal digits (`"0640"`), without special bits, and never
    /// writable by others than its owner and group.
    static func parseMode(_ text: String) -> Result<mode_t, ModeProblem> {
        guard (3...4).contains(text.count), text.allSatisfy({ ("0"..."7").contains($0) }), let mode = mode_t(text, radix: 8) else {
            return .failure(ModeProblem(reason: "is not a file mode: write three or four octal digits, such as \"0600\" or \"0640\""))
        }
        if mode & ~0o777 != 0 {
            return .failure(ModeProblem(reason: "sets setuid, setgid or sticky bits, which a token file has no use for; use permission bits only, such as \"0640\""))
        }
        if mode & 0o002 != 0 {
            return .failure(ModeProblem(reason: "lets every user replace the token; use a mode without write for others, such as \"0640\""))
        }
        return .success(mode)
    }
}
