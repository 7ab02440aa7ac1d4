import Atomics
import NIOCore

/// A per-request fault from `X-TokenProxy-Fault: STATUS[;times=N]` or `reset[;times=N]` (SPEC §6):
/// the first N attempts are answered as if by the upstream.
struct FaultPlan: Equatable, Sendable {
    enum Kind: Equatable, Sendable {
        case status(Int)
        case reset

        var headerValue: String {
            switch self {
            case .status(let status): String(status)
            case .reset: "reset"
            }
        }
    }

    static let headerName = "x-tokenproxy-fault"

    var kind: Kind
    var times: Int

    static func parse(_ text: String) -> Result<FaultPlan, ProxyError> {
        let parts = text.split(separator: ";").map { String($0.trimmingWhitespace()) }
        let usage = ProxyError.badRequest("X-TokenProxy-Fault: expected STATUS[;times=N] or reset[;times=N] (e.g. 401 or 503;times=2), found \"\(text.prefix(60))\"")
        guard let first = parts.first else { return .failure(usage) }
        let kind: Kind
        if first.lowercased() == "reset" {
            kind = .reset
        } else if let status = Int(first), (200...599).contains(status) {
            kind = .status(status)
        } else {
            return .failure(usage)
        }
        var times = 1
        for parameter in parts.dropFirst() {
            guard parameter.hasPrefix("times="), let count = Int(parameter.dropFirst(6)), (1...100).contains(count) else {
                return .failure(usage)
            }
            times = count
        }
        return .success(FaultPlan(kind: kind, times: times))
    }
}

/// Fault settings that `PUT /faults` changes at run time, read once per request without a lock.
public final class FaultSettings: Sendable {
    // -1: faults disabled; otherwise the share of first attempts answered 401, in 1/10000.
    private let state: ManagedAtomic<Int>

    public init(enabled: Bool, upstream401Percent: Double) {
        state = ManagedAtomic(Self.encode(enabled: enabled, percent: upstream401Percent))
    }

    public func update(enabled: Bool, upstream401Percent: Double) {
        state.store(Self.encode(enabled: enabled, percent: upstream401Percent), ordering: .relaxed)
    }

    public var enabled: Bool { state.load(ordering: .relaxed) >= 0 }

    public var upstream401Percent: Double {
        Double(max(state.load(ordering: .relaxed), 0)) / 100
    }

    /// Whether this first attempt should be answered with an injected 401.
    func drawUpstream401<Source: RandomNumberGenerator>(using random: inout Source) -> Bool {
        let basisPoints = state.load(ordering: .relaxed)
        return basisPoints > 0 && Int.random(in: 0..<10_000, using: &random) < basisPoints
    }

    private static func encode(enabled: Bool, percent: Double) -> Int {
        enabled ? Int((min(max(percent, 0), 100) * 100).rounded()) : -1
    }
}
