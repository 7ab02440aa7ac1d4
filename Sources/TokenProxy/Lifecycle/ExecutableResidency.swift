import Glibc

/// Gives back the executable's pages that only start-up touched. The binary is large (two
/// BoringSSL copies, postgres-nio, the Swift runtime's metadata), and start-up (static
/// initialisers, argument parsing, the runtime's conformance scan) touches code and read-only
/// data spread across it; with the kernel's fault-around each touch maps 64 KiB of neighbours,
/// and all of it stayed resident in an idle proxy (measured: ~4 MiB more than before fleet mode).
/// `MADV_PAGEOUT` on the executable's read-only mappings drops them from the process; the pages
/// the proxy does use come back on their first touch, from the page cache.
enum ExecutableResidency {
    /// Call once the proxy is listening and has its first token (start-up is over).
    static func releaseStartupPages() {
        for (start, length) in readOnlyMappingsOfExecutable() {
            _ = madvise(UnsafeMutableRawPointer(bitPattern: start), length, 21 /* MADV_PAGEOUT, Linux 5.4 */)
        }
    }

    private static func readOnlyMappingsOfExecutable() -> [(UInt, Int)] {
        var executable = [CChar](repeating: 0, count: 4096)
        let length = readlink("/proc/self/exe", &executable, executable.count - 1)
        guard length > 0, let maps = fopen("/proc/self/maps", "r") else { return [] }
        defer { fclose(maps) }
        executable[length] = 0
        let path = String(cString: executable)
        var mappings: [(UInt, Int)] = []
        var line = [CChar](repeating: 0, count: 4096)
        while fgets(&line, Int32(line.count), maps) != nil {
            let fields = String(cString: line).split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 6, fields[5].hasPrefix(path), !fields[1].contains("w") else { continue }
            let bounds = fields[0].split(separator: "-")
            guard bounds.count == 2, let start = UInt(bounds[0], radix: 16), let end = UInt(bounds[1], radix: 16), end > start else { continue }
            mappings.append((start, Int(end - start)))
        }
        return mappings
    }
}
