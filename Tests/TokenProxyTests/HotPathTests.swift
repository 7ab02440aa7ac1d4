import NIOCore
import Testing

@testable import TokenProxy

/// The pieces the data path was made faster with, against plain versions of the same rules.
@Suite("Hot path pieces")
struct HotPathTests {
    @Test func controlCharactersAreFoundAtEveryOffsetAndLength() {
        // Eight bytes at a time plus a tail: every length up to three words, every offset.
        let candidates: [UInt8] = [0x00, 0x01, 0x08, 0x09, 0x0A, 0x0D, 0x1F, 0x20, 0x41, 0x7E, 0x7F, 0x80, 0x9F, 0xFF]
        for length in 1...24 {
            for offset in 0..<length {
                for byte in candidates {
                    var bytes = [UInt8](repeating: UInt8(ascii: "a"), count: length)
                    bytes[offset] = byte
                    let expected = (byte < 0x20 && byte != 0x09) || byte == 0x7F
                    let found = bytes.withUnsafeBufferPointer { HeadLines.containsControlCharacter($0.baseAddress!, 0..<length) }
                    #expect(found == expected, "byte \(byte) at \(offset) of \(length)")
                }
            }
        }
    }

    @Test func tokenCharactersAreThoseOfRFC9110() {
        let tchar = Set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)
        for byte in UInt8.min...UInt8.max {
            #expect(HeaderName.isTokenCharacter(byte) == tchar.contains(byte), "byte \(byte)")
        }
    }

    @Test func headsAreWrittenInOnePieceWithDecimals() {
        var buffer = ByteBuffer()
        buffer.writeInOnePiece(maximumBytes: 64) { writer in
            writer.write("Content-Length: ")
            writer.writeDecimal(0)
            writer.write(", ")
            writer.writeDecimal(Int.max)
            writer.write("\r\n")
        }
        #expect(String(buffer: buffer) == "Content-Length: 0, 9223372036854775807\r\n")
    }

    @Test func requestCountsAndDurationsAreSummedOverTheLoopsPerRoute() {
        let statistics = ProxyStatistics()
        let route = statistics.route("default", loops: 2)
        let (first, second) = (route.loops[0], route.loops[1])
        first.requestStarted()
        first.requestStarted()
        second.requestStarted()
        first.requestFinished(after: .microseconds(300))
        first.requestFinished(after: .milliseconds(1))
        second.requestFinished(after: .seconds(20))
        #expect(statistics.requests == 3)
        let text = statistics.render()
        for line in [
            #"tokenproxy_requests_total{route="default"} 3"#,
            #"tokenproxy_request_duration_seconds_bucket{route="default",le="0.0005"} 1"#,
            #"tokenproxy_request_duration_seconds_bucket{route="default",le="0.001"} 2"#,
            #"tokenproxy_request_duration_seconds_bucket{route="default",le="10.0"} 2"#,
            #"tokenproxy_request_duration_seconds_bucket{route="default",le="+Inf"} 3"#,
            #"tokenproxy_request_duration_seconds_sum{route="default"} 20.0013"#,
            #"tokenproxy_request_duration_seconds_count{route="default"} 3"#,
        ] {
            #expect(text.contains(line + "\n"), "\(line)")
        }
        // A second render publishes no count twice.
        #expect(statistics.render().contains(#"tokenproxy_requests_total{route="default"} 3"# + "\n"))
    }
}
