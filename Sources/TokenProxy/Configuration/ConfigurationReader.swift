/// Reads one JSON object of the configuration, recording a problem for every wrong value and,
/// on ``finish()``, for every key nobody asked for (typos must not pass silently).
final class ConfigurationReader {
    /// Where this object is in the file (`identities.graph`, `routes[1]`); empty for the top level.
    let keyPath: String
    private let object: [String: JSONValue]
    private var consumedKeys: Set<String> = []
    private let problems: ProblemList

    final class ProblemList {
        var items: [ConfigurationProblem] = []
        func add(_ keyPath: String, _ message: String) { items.append(.init(keyPath: keyPath, message: message)) }
    }

    init(object: [String: JSONValue], keyPath: String = "", problems: ProblemList) {
        self.object = object
        self.keyPath = keyPath
        self.problems = problems
    }

    /// `key`'s path; an empty `key` is this object itself.
    func path(_ key: String) -> String { key.isEmpty ? keyPath : keyPath.isEmpty ? key : "\(keyPath).\(key)" }

    /// The object's keys, sorted (for objects whose keys are names, such as `identities`).
    var keys: [String] { object.keys.sorted() }

    func report(_ key: String, _ message: String) { problems.add(path(key), message) }

    /// The raw value of `key`, marking it as known.
    func value(_ key: String) -> JSONValue? {
        consumedKeys.insert(key)
        return object[key]
    }

    func isPresent(_ key: String) -> Bool { object[key] != nil }

    func string(_ key: String, default defaultValue: String? = nil, required: Bool = false) -> String? {
        switch value(key) {
        case nil:
            if required { report(key, "is required") }
            return defaultValue
        case .string(let text):
            guard !text.isEmpty else {
                report(key, "must not be empty")
                return defaultValue
            }
            return text
        case let other?:
            report(key, "expected a string, found \(other.kindDescription)")
            return defaultValue
        }
    }

    func bool(_ key: String, default defaultValue: Bool) -> Bool {
        switch value(key) {
        case nil: return defaultValue
        case .bool(let flag): return flag
        case let other?:
            report(key, "expected true or false, found \(other.kindDescription)")
            return defaultValue
        }
    }

    func number(_ key: String, default defaultValue: Double, range: ClosedRange<Double>, integer: Bool = false) -> Double {
        switch value(key) {
        case nil: return defaultValue
        case .number(let number):
            if integer, number.rounded() != number {
                report(key, "expected a whole number, found \(number)")
                return defaultValue
            }
            guard range.contains(number) else {
                report(key, "must be from \(Self.format(range.lowerBound)) to \(Self.format(range.upperBound)), found \(Self.format(number))")
                return defaultValue
            }
            return number
        case let other?:
            report(key, "expected a number, found \(other.kindDescription)")
            return defaultValue
        }
    }

    func integer(_ key: String, default defaultValue: Int, range: ClosedRange<Int>) -> Int {
        Int(number(key, default: Double(defaultValue), range: Double(range.lowerBound)...Double(range.upperBound), integer: true))
    }

    func duration(_ key: String, default defaultValue: Duration, atLeast minimum: Duration = .zero) -> Duration {
        guard let text = string(key) else { return defaultValue }
        guard let duration = Duration(configString: text) else {
            report(key, "\"\(text)\" is not a duration; write a whole number with a unit: 250ms, 5s, 5m, 1h")
            return defaultValue
        }
        guard duration >= minimum else {
            report(key, "must be at least \(minimum.configString), found \(text)")
            return defaultValue
        }
        return duration
    }

    func choice<T: RawRepresentable & CaseIterable>(_ key: String, default defaultValue: T) -> T where T.RawValue == String {
        guard let text = string(key) else { return defaultValue }
        guard let choice = T(rawValue: text) else {
            report(key, "\"\(text)\" is not one of \(T.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", "))")
            return defaultValue
        }
        return choice
    }

    /// The nested object at `key`; `nil` (and a problem) when it is there but not an object.
    func object(_ key: String) -> ConfigurationReader? {
        switch value(key) {
        case nil, .null?: return nil
        case .object(let nested)?: return ConfigurationReader(object: nested, keyPath: path(key), problems: problems)
        case let other?:
            report(key, "expected an object, found \(other.kindDescription)")
            return nil
        }
    }

    /// A list of objects (`routes`), each read at `key[i]`; an entry that is not an object is
    /// reported and `nil`. `nil` when the key is absent.
    func array(_ key: String) -> [ConfigurationReader?]? {
        switch value(key) {
        case nil, .null?: return nil
        case .array(let items)?:
            return items.enumerated().map { index, item in
                guard case .object(let fields) = item else {
                    report("\(key)[\(index)]", "expected an object, found \(item.kindDescription)")
                    return nil
                }
                return ConfigurationReader(object: fields, keyPath: path("\(key)[\(index)]"), problems: problems)
            }
        case let other?:
            report(key, "expected a list of objects, found \(other.kindDescription)")
            return nil
        }
    }

    /// Every key of the object that is a string-to-string map, e.g. `token.extraParams`.
    func stringMap(_ key: String) -> [String: String] {
        guard let nested = object(key) else { return [:] }
        var map: [String: String] = [:]
        for name in nested.object.keys.sorted() {
            if let value = nested.string(name) { map[name] = value }
        }
        return map
    }

    /// A list of strings, e.g. `allowedHosts`; `nil` when the key is absent.
    func stringList(_ key: String) -> [String]? {
        switch value(key) {
        case nil, .null?: return nil
        case .array(let items)?:
            var list: [String] = []
            for (index, item) in items.enumerated() {
                guard case .string(let text) = item, !text.isEmpty else {
                    report("\(key)[\(index)]", "expected a non-empty string, found \(item.kindDescription)")
                    continue
                }
                list.append(text)
            }
            return list
        case let other?:
            report(key, "expected a list of strings, found \(other.kindDescription)")
            return nil
        }
    }

    /// Reports every key that no accessor asked for.
    func finish() {
        for key in object.keys.sorted() where !consumedKeys.contains(key) {
            report(key, "unknown key (check the spelling; config.example.json lists every key)")
        }
    }

    private static func format(_ number: Double) -> String {
        number.rounded() == number && abs(number) < 1e15 ? String(Int64(number)) : String(number)
    }
}
