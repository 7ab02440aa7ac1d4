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

@_silgen_name("LLVMFuzzerRunDriver")
private func runDriver(
    _ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
) -> Int32

/// SwiftPM links an executable's `main` to `<module>_main`; libFuzzer's driver runs from here.
@_cdecl("tokenproxy_fuzz_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var argc = argc
    var argv = argv
    return runDriver(&argc, &argv) { data, size in fuzzOneInput(data, size) }
}
