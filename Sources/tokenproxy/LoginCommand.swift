import ArgumentParser
import FoundationEssentials
import Glibc
import TokenProxy

struct LoginCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "login",
        abstract: "Put a first refresh token into the store, through the lock.",
        discussion: """
            --device signs in with the device authorization grant (RFC 8628): open the printed address on any \
            device and enter the code. --browser signs in with the authorization code grant and PKCE, redirected \
            to 127.0.0.1. Without either, the browser is used where there is a display, else the device flow. --refresh-token-file FILE (or - for standard input) imports a refresh \
            token obtained elsewhere; no call is made to the token endpoint. A running proxy sharing the store \
            picks the new token up without a restart.
            Exit 0 stored, 1 runtime failure, 2 usage or configuration error, 3 refused or expired.
            """
    )

    @OptionGroup var options: ConfigOptions
    @OptionGroup var identityOption: IdentityOption

    @Option(name: .customLong("refresh-token-file"), help: ArgumentHelp("Import the refresh token in this file (- reads standard input).", valueName: "file"))
    var refreshTokenFile: String?

    @Flag(help: "Sign in with the device authorization grant (RFC 8628): a code to enter on any device.")
    var device = false

    @Flag(help: "Sign in in a browser: authorization code with PKCE and a redirect to 127.0.0.1 (the address is printed, and opened with xdg-open when there is a display).")
    var browser = false

    @Option(help: ArgumentHelp("How long --browser waits for the sign-in, in seconds.", valueName: "seconds"))
    var timeout: Int = 300

    func run() async throws {
        let configuration = try identityOption.select(in: options.load())
        guard let refreshTokenFile else {
            // Neither flag: the browser where there is a display, else the device flow (a
            // server's shell has no browser that could reach its 127.0.0.1).
            let environment = ProcessInfo.processInfo.environment
            let hasDisplay = environment["DISPLAY"] != nil || environment["WAYLAND_DISPLAY"] != nil
            if device || (!browser && !hasDisplay) {
                try await deviceLogin(configuration)
            } else {
                try await browserLogin(configuration)
            }
            return
        }
        let refreshToken = try Self.readRefreshToken(from: refreshTokenFile)
        try await withTokenBroker(configuration) { broker in
            do throws(TokenBrokerError) {
                try await broker.importRefreshToken(refreshToken)
                print("refresh token stored in \(configuration.storeDescription)")
            } catch {
                printError("tokenproxy login: \(error)")
                throw ExitStatus.forBrokerError(error)
            }
        }
    }

    private func browserLogin(_ configuration: Configuration) async throws {
        let store = configuration.storeDescription
        try await withTokenBroker(configuration) { broker in
            do throws(LoginError) {
                _ = try await broker.loginWithBrowser(timeout: .seconds(max(timeout, 1))) { url in
                    print("To sign in, open this address in a browser on this machine:\n\(url)")
                    fflush(nil)
                    Browser.open(url)
                }
                print("signed in; refresh token stored in \(store)")
            } catch {
                printError("tokenproxy login: \(error)")
                throw Self.exitStatus(error)
            }
        }
    }

    static func exitStatus(_ error: LoginError) -> ExitCode {
        switch error {
        case .misconfigured: ExitStatus.configurationError
        case .refused: ExitStatus.reauthenticationRequired
        case .unavailable: ExitStatus.runtimeFailure
        }
    }

    private func deviceLogin(_ configuration: Configuration) async throws {
        let store = configuration.storeDescription
        try await withTokenBroker(configuration) { broker in
            do throws(LoginError) {
                let tokens = try await broker.loginWithDevice { authorization in
                    var lines = ["To sign in, open \(authorization.verificationURI) and enter the code \(authorization.userCode)"]
                    if let complete = authorization.verificationURIComplete { lines.append("(or open \(complete))") }
                    lines.append("Waiting for the sign-in; the code expires in \(authorization.expiresIn.configString).")
                    print(lines.joined(separator: "\n"))
                    fflush(nil)  // all streams: the code must show before the wait
                }
                print("signed in; refresh token stored in \(store)\(tokens.refreshToken == nil ? " (the issuer sent no refresh token: only the access token was stored)" : "")")
            } catch {
                printError("tokenproxy login: \(error)")
                throw Self.exitStatus(error)
            }
        }
    }

    /// Opens `url` in the user's browser when there is a display and `xdg-open`; the address
    /// is printed either way, so nothing depends on it.
    enum Browser {
        static func open(_ url: String) {
            let environment = ProcessInfo.processInfo.environment
            guard environment["DISPLAY"] != nil || environment["WAYLAND_DISPLAY"] != nil else { return }
            var pid: pid_t = 0
            let words: [String] = ["xdg-open", url]
            let argv = words.map { strdup($0) } + [nil]
            defer { argv.forEach { free($0) } }
            // The browser it starts may live on: it gets none of this process's descriptors (the
            // redirect listener, the connections to the issuer), only the standard streams.
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            SpawnActions.closeDescriptors(from: 3, in: &actions)
            _ = posix_spawnp(&pid, "xdg-open", &actions, nil, argv, environ)
        }
    }

    /// The refresh token in `source` (`-`: standard input), surrounding white space removed.
    static func readRefreshToken(from source: String) throws -> String {
        let bytes: [UInt8]
        switch SecretFile.read(source == "-" ? "/dev/stdin" : source, limit: 64 * 1024) {
        case .success(let content): bytes = content
        case .failure(let failure):
            printError("tokenproxy login: cannot read --refresh-token-file \(source): \(failure.reason)")
            throw ExitStatus.configurationError
        }
        let text = String(decoding: SecretFile.trimmingWhiteSpace(bytes), as: UTF8.self)
        guard !text.isEmpty, text.utf8.count <= 16 * 1024, text.utf8.allSatisfy({ (0x21...0x7E).contains($0) }) else {
            printError("tokenproxy login: --refresh-token-file \(source) must hold one refresh token: printable ASCII without spaces, at most 16 KiB")
            throw ExitStatus.configurationError
        }
        return text
    }
}
