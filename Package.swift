// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "tokenproxy",
    // Linux only: the code builds on Glibc (flock, fsync, O_NOFOLLOW, malloc_trim), /proc and
    // systemd's notify socket; Sources/TokenProxy/Support/Platform.swift stops other builds.
    products: [
        .executable(name: "tokenproxy", targets: ["tokenproxy"]),
        .library(name: "TokenProxy", targets: ["TokenProxy"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.3.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        // Fleet mode (SPEC §2.3, §3.1): the shared store and lock in PostgreSQL, sealed with AES-GCM.
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        // Traces (SPEC §2.6): OTLP over HTTP only; the gRPC exporter's packages are left out.
        .package(url: "https://github.com/swift-otel/swift-otel", from: "1.6.0", traits: ["OTLPHTTP"]),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.7.3"),
        // HTTP/2 and gRPC clients (SPEC §5): h2c on the listen port.
        .package(url: "https://github.com/apple/swift-nio-http2", from: "1.46.0"),
    ],
    targets: [
        // The product: configuration, token broker and (later) proxy, admin and lifecycle.
        .target(
            name: "TokenProxy",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "OTel", package: "swift-otel"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                // The HTTP/2 fuzz target runs the connection on an embedded channel.
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),
        // Embedded stand-ins for a token issuer and an API: used by `tokenproxy demo` and by the tests.
        .target(
            name: "TokenProxyMocks",
            dependencies: [
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "tokenproxy",
            dependencies: [
                "TokenProxy",
                "TokenProxyMocks",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            linkerSettings: [
                // Packed relative relocations (DT_RELR, lld): the loader no longer reads ~2 MB of
                // relocation records at start, which stayed resident for the process's lifetime.
                .unsafeFlags(["-use-ld=lld", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs", "-Xlinker", "--no-export-dynamic"], .when(platforms: [.linux], configuration: .release)),
            ]
        ),
        .testTarget(
            name: "TokenProxyTests",
            dependencies: [
                "TokenProxy",
                "TokenProxyMocks",
                "tokenproxy",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            // Read by path from the tests (schemas; the browser tests' Python scripts), not bundled.
            exclude: ["Fixtures", "Browser"]
        ),
    ]
)

// Fuzzing (`fuzz/run.sh`): a libFuzzer binary, declared only when asked for, since it links
// only with `-sanitize=fuzzer`.
if Context.environment["TOKENPROXY_FUZZ"] != nil {
    package.targets.append(
        .executableTarget(
            name: "tokenproxy-fuzz",
            dependencies: ["TokenProxy"],
            path: "fuzz/Sources",
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        )
    )
}
