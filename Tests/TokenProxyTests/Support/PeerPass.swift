import Foundation

/// The suites that start heavy real peers (Chromium; Python HTTP/2 and gRPC clients and servers)
/// run in a pass of their own, one test at a time: README's test command runs it after the rest
/// with `TOKENPROXY_PEER_TESTS=1`. Beside the timing tests of the other suites on two cores they
/// made those late.
enum PeerPass {
    static var isThisPass: Bool { ProcessInfo.processInfo.environment["TOKENPROXY_PEER_TESTS"] == "1" }
}
