import NIOCore
import Testing

@testable import TokenProxy

/// The request parser (RFC 9112) as a table: each row is parsed in one piece and byte by byte,
/// which must read the same.
@Suite("Client request parser")
struct ClientRequestParserTests {
    static let limits = ClientRequestParser.Limits(maxHeaderBytes: 1024, maxURIBytes: 256)

    /// What the parser reads from `bytes` fed as `pieces`: heads, body sizes, ends, or the error.
    static func transcript(_ bytes: [UInt8], byteByByte: Bool) -> [String] {
        var parser = ClientRequestParser(limits: limits)
        var transcript: [String] = []
        var body = 0
        let pieces = byteByByte ? bytes.map { [$0] } : [bytes]
        for piece in pieces {
            parser.append(ByteBuffer(bytes: piece))
            while true {
                do throws(ProxyError) {
                    guard let part = try parser.next() else { break }
                    switch part {
                    case .head(let head):
                        transcript.append("\(head.method.rawValue) \(head.target) \(head.framing)\(head.keepAlive ? "" : " close")\(head.upgradeRequested ? " upgrade" : "")")
                    case .body(let slice):
                        body += slice.readableBytes
                    case .end:
                        transcript.append("end \(body)")
                        body = 0
                        parser.startNextRequest()
                    }
                } catch {
                    transcript.append("\(error.code.status.code)")
                    return transcript
                }
            }
        }
        return transcript
    }

    static let rows: [(String, [String])] = [
        ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", ["GET / none", "end 0"]),
        ("GET / HTTP/1.1\nHost: a\n\n", ["GET / none", "end 0"]),
        ("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", ["GET / none", "end 0"]),
        ("POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", ["POST /p length(5)", "end 5"]),
        ("POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", ["POST /p length(5)", "end 5"]),
        ("POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n5;x=y\r\nhello\r\nA\r\n0123456789\r\n0\r\nT: 1\r\n\r\n", ["POST /p chunked", "end 15"]),
        ("GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.0\r\n\r\n", ["GET /1 none", "end 0", "GET /2 none close", "end 0"]),
        ("GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", ["GET /1 none", "end 0"]),
        ("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n", ["GET /ws none upgrade", "end 0"]),
        ("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", ["GET / none close", "end 0"]),
        ("GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\n\r\n", ["GET / none", "end 0"]),
        // Refused: framing.
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", ["400"]),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", ["400"]),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", ["400"]),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", ["400"]),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", ["400"]),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", ["400"]),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", ["400"]),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", ["400"]),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", ["400"]),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n", ["POST / chunked", "400"]),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n", ["POST / chunked", "400"]),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n 3\r\nabc\r\n", ["POST / chunked", "400"]),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n", ["POST / chunked", "400"]),
        // Refused: the request line and the fields.
        ("GET / HTTP/1.1\r\n\r\n", ["400"]),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", ["400"]),
        ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", ["400"]),
        ("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", ["400"]),
        ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", ["400"]),
        ("GET / http/1.1\r\nHost: a\r\n\r\n", ["400"]),
        ("GET /a\u{7F} HTTP/1.1\r\nHost: a\r\n\r\n", ["400"]),
        ("GET /\u{E9} HTTP/1.1\r\nHost: a\r\n\r\n", ["400"]),
        ("G@T / HTTP/1.1\r\nHost: a\r\n\r\n", ["400"]),
        ("GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", ["400"]),
        ("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", ["400"]),
        ("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", ["400"]),
        ("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\u{0}c\r\n\r\n", ["400"]),
        ("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", ["400"]),
        ("GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n", ["400"]),
        ("\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", ["400"]),
        // Limits.
        ("GET /" + String(repeating: "a", count: 300) + " HTTP/1.1\r\nHost: a\r\n\r\n", ["414"]),
        ("GET /" + String(repeating: "a", count: 400), ["414"]),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: " + String(repeating: "b", count: 1100) + "\r\n\r\n", ["431"]),
        ("GET / HTTP/1.1\r\nHost: a\r\n" + String(repeating: "X: b\r\n", count: 200), ["431"]),
        // Incomplete: nothing yet.
        ("GET / HTTP/1.1\r\nHost: a\r\n", []),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello", ["POST / length(10)"]),
    ]

    @Test("requests as the parser reads them, whole and byte by byte", arguments: rows)
    func parse(input: String, expected: [String]) {
        let bytes = Array(input.utf8)
        #expect(Self.transcript(bytes, byteByByte: false) == expected)
        #expect(Self.transcript(bytes, byteByByte: true) == expected)
    }

    @Test func theNextRequestWaitsUntilTheCurrentOneWasAnswered() throws {
        var parser = ClientRequestParser(limits: Self.limits)
        parser.append(ByteBuffer(string: "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGARBAGE\u{1}\r\n\r\n"))
        guard case .head = try parser.next(), case .end = try parser.next() else { throw ProxyError.badRequest("no request") }
        #expect(try parser.next() == nil, "the malformed bytes are not looked at before the answer")
        #expect(parser.isBetweenRequests)
        #expect(parser.bufferedBytes > 0)
        parser.startNextRequest()
        #expect(throws: ProxyError.self) { try parser.next() }
        #expect(try parser.next() == nil, "nothing after an error")
    }

    @Test func bytesAfterAnUpgradeRequestAreLeftForTheTunnel() throws {
        var parser = ClientRequestParser(limits: Self.limits)
        parser.append(ByteBuffer(string: "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\u{81}\u{2}hi"))
        guard case .head(let head) = try parser.next(), case .end = try parser.next() else { throw ProxyError.badRequest("no request") }
        #expect(head.upgradeRequested)
        #expect(try parser.next() == nil)
        #expect(Array(parser.takeBufferedBytes().readableBytesView) == [0xC2, 0x81, 0x02, 0x68, 0x69])
    }
}

extension ClientRequestParser.Part: Equatable {
    public static func == (lhs: Self, rhs: Self) -> Bool {
        switch (lhs, rhs) {
        case (.end, .end): true
        case (.body(let a), .body(let b)): a == b
        case (.head(let a), .head(let b)): a.bytes == b.bytes
        default: false
        }
    }
}
