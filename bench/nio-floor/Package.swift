// swift-tools-version: 6.1
// The floor of a SwiftNIO reverse proxy on this machine, for bench/floor.sh: a byte relay that
// pairs each client connection with one upstream connection and copies reads across, with no
// parsing, no header edits and no token. Whatever tokenproxy does costs at least this much in
// NIO; the gap between this relay and nginx is the part no change to tokenproxy's own code closes.
import PackageDescription

let package = Package(
    name: "nio-floor",
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-http2", from: "1.46.0"),
    ],
    targets: [
        .executableTarget(
            name: "NIOFloor",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"), .product(name: "NIOHPACK", package: "swift-nio-http2"),
            ],
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"])]
        )
    ]
)
