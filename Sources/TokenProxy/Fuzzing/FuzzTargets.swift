import FoundationEssentials
import NIOCore

/// The entry points of the libFuzzer targets in `fuzz/`, also run by the tests on the committed
/// corpus: each feeds arbitrary bytes to one reader of untrusted input and traps when an
/// invariant breaks. Not part of the API.
@_spi(Fuzzing)
public enum FuzzTargets {
    public enum Target: String, CaseIterable, Sendable {
        case request, response, configuration, store, credential, http2
    }

    public static func run(_ target: Target, _ bytes: UnsafeRawBufferPointer) {
        switch target {
        case .request: requestParser(bytes)
        case .response: responseParser(bytes)
        case .configuration: configuration(bytes)
        case .store: storeDocument(bytes)
        case .credential: credentialRequest(bytes)
        case .http2: http2Frames(bytes)
        }
    }

    // MARK: Client requests

    static let rules: ForwardingRules = {
        let configuration = try! Configuration.parse(Data(#"""
            {"listen": "127.0.0.1:8787", "upstream": {"url": "http://127.0.0.1:9/api"},
             "token": {"endpoint": "http://127.0.0.1:9/token", "clientId": "fuzz", "clientSecretEnv": "FUZZ_SECRET", "store": "/nonexistent/token.json"},
             "limits": {"maxHeaderBytes": 4096, "maxUriBytes": 1024}}
            """#.utf8), path: "/nonexistent/config.json")
        return ForwardingRules(upstream: configuration.upstream.url, clientGuard: ClientGuard(configuration), limits: configuration.limits)
    }()

    /// Parsing in one piece and in several must read the same requests; nothing the rules let
    /// through may carry a bare CR, LF or NUL upstream (the smuggling invariant).
    static func requestParser(_ bytes: UnsafeRawBufferPointer) {
        let whole = requestTranscript([ByteBuffer(bytes: bytes)])
        let split = requestTranscript(pieces(of: bytes))
        precondition(whole == split, "split parsing differs:\n\(whole)\n\(split)")
    }

    private static func requestTranscript(_ pieces: [ByteBuffer]) -> [String] {
        var parser = ClientRequestParser(limits: rules.parserLimits)
        var transcript: [String] = []
        var body = ByteBuffer()
        for piece in pieces {
            parser.append(piece)
            while transcript.count < 200 {
                let part: ClientRequestParser.Part?
                do throws(ProxyError) {
                    part = try parser.next()
                } catch {
                    transcript.append("error \(error.code.rawValue)")
                    return transcript
                }
                guard let part else { break }
                switch part {
                case .head(let head):
                    transcript.append("head \(head.method.rawValue) \(head.target) \(head.framing) keepAlive=\(head.keepAlive) fields=\(head.fields.count)")
                    if case .success(let prepared) = rules.prepare(head, clientAddress: "127.0.0.1", faultsEnabled: true) {
                        checkLines(prepared.head, what: "prepared request head")
                    }
                case .body(var slice):
                    body.writeBuffer(&slice)
                case .end:
                    transcript.append("body \(body.readableBytes) bytes \(body.hashValue)")
                    transcript.append("end")
                    body.clear()
                    parser.startNextRequest()
                }
            }
        }
        if body.readableBytes > 0 { transcript.append("body \(body.readableBytes) bytes, incomplete") }
        return transcript
    }

    // MARK: Upstream responses

    /// The first byte picks HEAD and upgrade; the rest is the response. Parsing in one piece and
    /// in several must agree, and what goes to the client holds only CRLF-ended, clean lines.
    static func responseParser(_ bytes: UnsafeRawBufferPointer) {
        guard let flags = bytes.first else { return }
        let rest = UnsafeRawBufferPointer(rebasing: bytes.dropFirst())
        let whole = responseTranscript([ByteBuffer(bytes: rest)], flags: flags)
        let split = responseTranscript(pieces(of: rest), flags: flags)
        precondition(whole == split, "split parsing differs:\n\(whole)\n\(split)")
    }

    private static func responseTranscript(_ pieces: [ByteBuffer], flags: UInt8) -> [String] {
        var parser = UpstreamResponseParser()
        parser.expectResponse(toHEAD: flags & 1 == 1, upgrade: flags & 2 == 2)
        var transcript: [String] = []
        var body = ByteBuffer()
        var parts = CircularBuffer<UpstreamResponseParser.Part>()
        for piece in pieces {
            var failure: UpstreamResponseError?
            do throws(UpstreamResponseError) {
                try parser.feed(piece, into: &parts)
            } catch {
                failure = error
            }
            while let part = parts.popFirst() {
                switch part {
                case .head(let head):
                    checkLines(head.forwardedBytes, what: "response head for the client")
                    transcript.append("head \(head.status) \(head.body) keepAlive=\(head.keepAlive) \(String(buffer: head.forwardedBytes).hashValue)")
                case .body(var slice):
                    body.writeBuffer(&slice)
                case .trailers(let lines):
                    checkLines(lines, what: "response trailers for the client")
                    transcript.append("trailers \(String(buffer: lines).hashValue)")
                case .end(let reusable):
                    transcript.append("body \(body.readableBytes) bytes \(body.hashValue)")
                    transcript.append("end reusable=\(reusable)")
                    body.clear()
                }
            }
            if failure != nil {
                transcript.append("error")
                return transcript
            }
        }
        if parser.connectionClosed() != nil {
            transcript.append("body \(body.readableBytes) bytes \(body.hashValue)")
            transcript.append("end at close")
        }
        return transcript
    }

    // MARK: Files

    static func configuration(_ bytes: UnsafeRawBufferPointer) {
        _ = try? Configuration.parse(Data(bytes), path: "/nonexistent/config.json")
    }

    /// Whatever the store holds, an access token that comes out can be sent in a header.
    static func storeDocument(_ bytes: UnsafeRawBufferPointer) {
        guard let (tokens, _) = try? StoreDocument.decode(Data(bytes), now: Date(timeIntervalSince1970: 1_800_000_000)) else { return }
        if let token = tokens.accessToken {
            precondition(!token.utf8.contains { $0 < 0x20 || $0 == 0x7F }, "an access token with a control character came out of the store")
        }
    }

    // MARK: What other tools send (SPEC §2.5)

    /// git's request on stdin and kubectl's `$KUBERNETES_EXEC_INFO`: whatever arrives, a field
    /// never spans lines, and the ExecCredential version is one client-go speaks or an error.
    static func credentialRequest(_ bytes: UnsafeRawBufferPointer) {
        let text = String(decoding: bytes, as: UTF8.self)
        let request = CredentialFormats.GitRequest(parsing: text)
        for (key, value) in request.fields {
            precondition(!key.utf8.contains(10) && !value.utf8.contains(10), "a git credential field spans lines")
            precondition(!key.contains("="), "a git credential key holds '='")
        }
        if let version = try? CredentialFormats.execCredentialVersion(execInfo: text) {
            precondition(CredentialFormats.execCredentialVersions.contains(version), "an ExecCredential version client-go does not speak")
        }
    }

    // MARK: Invariants

    /// Every line ends in CRLF; no bare CR, bare LF or NUL anywhere.
    static func checkLines(_ buffer: ByteBuffer, what: String) {
        let bytes = Array(buffer.readableBytesView)
        precondition(bytes.count >= 2 && bytes.suffix(2) == [13, 10], "\(what) does not end in CRLF")
        for (index, byte) in bytes.enumerated() {
            switch byte {
            case 0: preconditionFailure("\(what) holds a NUL")
            case 13: precondition(index + 1 < bytes.count && bytes[index + 1] == 10, "\(what) holds a bare CR")
            case 10: precondition(index > 0 && bytes[index - 1] == 13, "\(what) holds a bare LF")
            default: break
            }
        }
    }

    /// The input cut in three at places it decides, and byte by byte when short: parsers must
    /// not depend on how reads fall.
    private static func pieces(of bytes: UnsafeRawBufferPointer) -> [ByteBuffer] {
        if bytes.count <= 512 { return bytes.map { ByteBuffer(bytes: [$0]) } }
        let first = Int(bytes[0]) * bytes.count / 256
        let second = first + (bytes.count - first) / 2
        return [0..<first, first..<second, second..<bytes.count].map { ByteBuffer(bytes: UnsafeRawBufferPointer(rebasing: bytes[$0])) }
    }
}
