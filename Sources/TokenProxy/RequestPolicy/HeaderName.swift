/// The header names the forwarding rules act on, recognised without allocating (header names
/// are case-insensitive; `lowercased()` per header per request would allocate).
enum HeaderName: Equatable {
    case host, contentLength, transferEncoding, connection, authorization, expect
    case forwardedFor, forwardedHost, forwardedProto, idempotencyKey, fault
    case wwwAuthenticate, retryAfter
    case origin, secFetchSite, requestID
    /// `Content-Type`: `application/grpc…` needs an upstream that speaks HTTP/2 (SPEC §5).
    case contentType
    /// W3C trace context (SPEC §2.6): replaced per upstream attempt while tracing is on.
    case traceparent, tracestate
    /// `Upgrade`: hop-by-hop, and a sign that the client may send bytes that are not HTTP.
    case upgrade
    /// Hop-by-hop (RFC 9110 §7.6.1) other than `Connection` itself.
    case hopByHop
    case other

    init(_ name: String) {
        var name = name
        self = name.withUTF8 { Self.classify($0) }
    }

    /// Whether `bytes` spell `lowercased`, ignoring ASCII case.
    static func equalsIgnoringCase(_ bytes: UnsafeBufferPointer<UInt8>, _ lowercased: StaticString) -> Bool {
        guard lowercased.utf8CodeUnitCount == bytes.count else { return false }
        for index in 0..<bytes.count {
            var byte = bytes[index]
            if byte >= UInt8(ascii: "A"), byte <= UInt8(ascii: "Z") { byte += 32 }
            if byte != lowercased.utf8Start[index] { return false }
        }
        return true
    }

    init(bytes: UnsafeRawBufferPointer) {
        self = Self.classify(bytes.assumingMemoryBound(to: UInt8.self))
    }

    private static func classify(_ bytes: UnsafeBufferPointer<UInt8>) -> HeaderName {
        func matches(_ candidate: StaticString) -> Bool { equalsIgnoringCase(bytes, candidate) }
        switch bytes.count {
        case 2: return matches("te") ? .hopByHop : .other
        case 4: return matches("host") ? .host : .other
        case 6:
            if matches("expect") { return .expect }
            return matches("origin") ? .origin : .other
        case 7:
            if matches("upgrade") { return .upgrade }
            return matches("trailer") ? .hopByHop : .other
        case 10:
            if matches("connection") { return .connection }
            if matches("tracestate") { return .tracestate }
            return matches("keep-alive") ? .hopByHop : .other
        case 11:
            if matches("traceparent") { return .traceparent }
            return matches("retry-after") ? .retryAfter : .other
        case 12:
            if matches("x-request-id") { return .requestID }
            return matches("content-type") ? .contentType : .other
        case 13: return matches("authorization") ? .authorization : .other
        case 14:
            if matches("content-length") { return .contentLength }
            return matches("sec-fetch-site") ? .secFetchSite : .other
        case 15:
            if matches("x-forwarded-for") { return .forwardedFor }
            return matches("idempotency-key") ? .idempotencyKey : .other
        case 16:
            if matches("x-forwarded-host") { return .forwardedHost }
            if matches("www-authenticate") { return .wwwAuthenticate }
            return matches("proxy-connection") ? .hopByHop : .other
        case 17:
            if matches("transfer-encoding") { return .transferEncoding }
            return matches("x-forwarded-proto") ? .forwardedProto : .other
        case 18:
            if matches("x-tokenproxy-fault") { return .fault }
            return matches("proxy-authenticate") ? .hopByHop : .other
        case 19: return matches("proxy-authorization") ? .hopByHop : .other
        default: return .other
        }
    }
}

extension HeaderName {
    /// RFC 9110 §5.6.2 `tchar`: what a header name is made of. A bit per ASCII byte (two
    /// words), tested for every byte of every header name.
    @inline(__always)
    static func isTokenCharacter(_ byte: UInt8) -> Bool {
        byte < 64 ? (tokenCharactersBelow64 >> UInt64(byte)) & 1 == 1 : byte < 128 && (tokenCharactersFrom64 >> UInt64(byte - 64)) & 1 == 1
    }

    /// `!#$%&'*+-.` and digits.
    private static let tokenCharactersBelow64: UInt64 = 0x03FF_6CFA_0000_0000
    /// Letters and `^_`|~`.
    private static let tokenCharactersFrom64: UInt64 = 0x57FF_FFFF_C7FF_FFFE
}

/// A fast pseudo-random source for retry jitter and fault draws, seeded once per connection:
/// the system generator makes a `getrandom` system call per number.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64 = UInt64.random(in: .min ... .max)) {
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var mixed = state
        mixed = (mixed ^ (mixed >> 30)) &* 0xBF58_476D_1CE4_E5B9
        mixed = (mixed ^ (mixed >> 27)) &* 0x94D0_49BB_1331_11EB
        return mixed ^ (mixed >> 31)
    }

    /// A number in 0..<1.
    mutating func unit() -> Double {
        Double(next() >> 11) * 0x1.0p-53
    }
}
