@_spi(Fuzzing) import TokenProxy

#if canImport(Glibc)
import Glibc
#endif

/// The target named by `TOKENPROXY_FUZZ_TARGET` (request, response, configuration, store).
private let target: FuzzTargets.Target = {
    guard let name = getenv("TOKENPROXY_FUZZ_TARGET").map({ String(cString: $0) }), let target = FuzzTargets.Target(rawValue: name) else {
        fatalError("set TOKENPROXY_FUZZ_TARGET to one of: \(FuzzTargets.Target.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    return target
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    FuzzTargets.run(target, UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
