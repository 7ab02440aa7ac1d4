/// One thing wrong with a configuration: which key, and what is wrong with it.
public struct ConfigurationProblem: Sendable, Equatable, CustomStringConvertible {
    /// The dotted key path (`token.refreshBefore`), or `""` for the file as a whole.
    public var keyPath: String
    public var message: String

    public init(keyPath: String, message: String) {
        self.keyPath = keyPath
        self.message = message
    }

    public var description: String { keyPath.isEmpty ? message : "\(keyPath): \(message)" }
}

/// Every problem found in a configuration file, so that one run of `check-config` reports them all.
public struct ConfigurationError: Error, Sendable, CustomStringConvertible {
    public var path: String
    public var problems: [ConfigurationProblem]

    public var description: String {
        (["configuration \(path) is invalid:"] + problems.map { "  \($0)" }).joined(separator: "\n")
    }
}
