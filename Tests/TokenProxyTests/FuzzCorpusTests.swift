import Foundation
import Testing

@_spi(Fuzzing) import TokenProxy

/// Every input in the committed fuzzing corpus and every input that once crashed a fuzz target
/// (`fuzz/regressions`) is run through the same entry points as `fuzz/run.sh`: a broken
/// invariant traps, which fails the run.
@Suite("Fuzzing corpus")
struct FuzzCorpusTests {
    static let fuzzFolder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("fuzz")

    static func inputs(_ target: FuzzTargets.Target) -> [URL] {
        ["corpus", "regressions"].flatMap { kind -> [URL] in
            let folder = fuzzFolder.appendingPathComponent(kind).appendingPathComponent(target.rawValue)
            let names = (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
            return names.filter { !$0.hasPrefix(".") }.sorted().map { folder.appendingPathComponent($0) }
        }
    }

    @Test("the committed inputs run clean", arguments: FuzzTargets.Target.allCases)
    func replay(target: FuzzTargets.Target) throws {
        let inputs = Self.inputs(target)
        #expect(inputs.count >= 3, "a seed corpus for \(target.rawValue) is committed")
        for input in inputs {
            let data = try Data(contentsOf: input)
            data.withUnsafeBytes { FuzzTargets.run(target, $0) }
        }
    }
}
