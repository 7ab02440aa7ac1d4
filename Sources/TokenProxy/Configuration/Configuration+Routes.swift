import FoundationEssentials

/// Reading SPEC §2.4: identities, routes and token exchange, and the checks across them.
extension Configuration {
    /// Identity and route names: safe in file names, metric labels and log lines.
    static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 64 && !name.hasPrefix(".")
            && name.utf8.allSatisfy { byte in
                switch byte {
                case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                    UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"): true
                default: false
                }
            }
    }

    /// The keys of `grant: "token_exchange"` (RFC 8693, SPEC §2.4); an error for each of them
    /// under another grant.
    static func readExchange(_ reader: ConfigurationReader, grant: Token.Grant, resolve: (String) -> String) -> Token.Exchange? {
        let file = reader.string("subjectTokenFile").map(resolve)
        let identity = reader.string("subjectIdentity")
        let subjectTokenType = reader.string("subjectTokenType")
        let requestedTokenType = reader.string("requestedTokenType")
        let audience = reader.string("audience")
        let resource = reader.string("resource")
        guard grant == .tokenExchange else {
            for key in ["subjectTokenFile", "subjectIdentity", "subjectTokenType", "requestedTokenType", "audience", "resource"] where reader.isPresent(key) {
                reader.report(key, "is used only with grant \"token_exchange\"")
            }
            return nil
        }
        let subject: Token.Subject
        switch (file, identity) {
        case (let file?, nil): subject = .file(file)
        case (nil, let identity?): subject = .identity(identity)
        case (_?, _?):
            reader.report("subjectIdentity", "set either subjectTokenFile or subjectIdentity, not both")
            subject = .file(file!)
        case (nil, nil):
            reader.report("subjectTokenFile", "grant \"token_exchange\" needs a subject: set subjectTokenFile (read at every call) or subjectIdentity (another identity's token)")
            subject = .file("")
        }
        let defaultType: String
        if case .file = subject { defaultType = "urn:ietf:params:oauth:token-type:jwt" } else { defaultType = "urn:ietf:params:oauth:token-type:access_token" }
        return Token.Exchange(
            subject: subject, subjectTokenType: subjectTokenType ?? defaultType, requestedTokenType: requestedTokenType, audience: audience, resource: resource)
    }

    /// `routes` (SPEC §2.4): each names a listener (default the top-level `listen`), a host, a
    /// prefix, an upstream, an identity, and may override `retry` and `requireHeader`.
    static func readRoutes(
        _ root: ConfigurationReader, listen: ListenAddress, allowNonLoopback: Bool, retry: Retry, requireHeader: String?, resolve: (String) -> String,
        listenAddress: (ConfigurationReader, String, String, Bool) -> ListenAddress
    ) -> (routes: [Route], positions: [Int], explicitListens: Set<Int>) {
        guard let entries = root.array("routes") else { return ([], [], []) }
        var explicitListens: Set<Int> = []
        var positions: [Int] = []
        if entries.isEmpty { root.report("routes", "an empty list routes nothing; leave the key out, or add a route") }
        var routes: [Route] = []
        for (index, entry) in entries.enumerated() {
            guard let reader = entry else { continue }
            var route = Route(
                name: reader.string("name") ?? "route-\(index + 1)", listen: listen, host: nil, pathPrefix: "/", stripPrefix: false,
                upstream: Upstream(url: UpstreamURL(scheme: .http, host: "127.0.0.1", port: 80, pathPrefix: ""), connectTimeout: .seconds(2), readTimeout: .seconds(60), tls: nil),
                identity: reader.string("identity") ?? defaultIdentity, retry: retry, requireHeader: requireHeader)
            if !isValidName(route.name) { reader.report("name", "\"\(route.name)\" must be 1 to 64 letters, digits, '.', '_' or '-'; it labels the route's metrics") }
            if reader.isPresent("listen") {
                route.listen = listenAddress(reader, "listen", listen.description, allowNonLoopback)
                explicitListens.insert(index)
            }
            if let host = reader.string("host") {
                var name = host.lowercased()
                if name.hasSuffix(".") { name.removeLast() }
                if name.isEmpty || name.contains("/") || name.contains(" ") || (name.contains(":") && !name.hasPrefix("[")) {
                    reader.report("host", "\"\(host)\" must be a host name without scheme, port or path (it is matched without regard to port)")
                }
                route.host = name
            }
            if let prefix = reader.string("pathPrefix") {
                if !prefix.hasPrefix("/") || prefix.contains("?") || prefix.contains("#") {
                    reader.report("pathPrefix", "\"\(prefix)\" must be a path starting with /, without query or fragment")
                } else if prefix.utf8.withContiguousStorageIfAvailable({ ForwardingRules.hasDotSegment(UnsafeRawBufferPointer($0)) }) == true {
                    reader.report("pathPrefix", "\"\(prefix)\" holds a dot-segment")
                }
                route.pathPrefix = prefix
            }
            route.stripPrefix = reader.bool("stripPrefix", default: false)
            if let upstream = reader.object("upstream") {
                route.upstream = readUpstream(upstream, resolve: resolve)
            } else if !reader.isPresent("upstream") {
                reader.report("upstream", "is required: an object with at least \"url\"")
            }
            if let retryReader = reader.object("retry") { route.retry = readRetry(retryReader, defaults: retry) }
            if reader.isPresent("requireHeader") { route.requireHeader = readRequireHeader(reader) }
            reader.finish()
            routes.append(route)
            positions.append(index)
        }
        return (routes, positions, explicitListens)
    }

    /// The checks across identities and routes (SPEC §2.4), each naming the key at fault.
    static func checkRoutesAndIdentities(
        _ root: ConfigurationReader, routes: [Route], positions: [Int], explicitListens: Set<Int>, identities: [String: Token], admin: Admin?, fleet: Fleet?
    ) {
        // The routes of `routes` come first (`positions`: each one's place in the file, where an
        // entry that was not an object is skipped); the top-level `upstream` is the last.
        func routePath(_ index: Int) -> String { index < positions.count ? "routes[\(positions[index])]" : "upstream" }
        var reportedListens: Set<String> = []
        var seenNames: [String: Int] = [:]
        var seenPlaces: [String: Int] = [:]
        for (index, route) in routes.enumerated() {
            let path = routePath(index)
            if identities[route.identity] == nil, !identities.isEmpty {
                let key = path == "upstream" ? "token" : "\(path).identity"
                root.report(key, "names the identity \"\(route.identity)\", which is not configured; known: \(identities.keys.sorted().joined(separator: ", "))")
            }
            if let other = seenNames[route.name] {
                root.report("\(path).name", "\"\(route.name)\" is also the name of \(routePath(other)); route names label metrics and must differ")
            }
            seenNames[route.name] = index
            let place = "\(route.listen)|\(route.host ?? "")|\(route.normalizedPrefix)"
            if let other = seenPlaces[place] {
                root.report(path, "has the same listen (\(route.listen)), host (\(route.host ?? "any")) and pathPrefix (\(route.pathPrefix)) as \(routePath(other)) (\(routes[other].name)); one of them could never be reached")
            }
            seenPlaces[place] = index
            // Port 0 asks for a free port: two of them are never one listener.
            if let admin, admin.listen == route.listen, route.listen.fixedPort {
                // A route without a listen of its own has the top-level one: that is the key to change.
                let key = index >= positions.count || !explicitListens.contains(positions[index]) ? "listen" : "\(path).listen"
                if reportedListens.insert(key).inserted {
                    root.report(key, "\(route.listen) is admin.listen; the admin API and a route cannot share a listener")
                }
            }
        }
        let names = identities.keys.sorted()
        func identityPath(_ name: String) -> String { name == defaultIdentity && root.isPresent("token") ? "token" : "identities.\(name)" }
        if fleet == nil {
            var stores: [String: String] = [:]
            for name in names {
                let token = identities[name]!
                for (key, file) in [("store", token.store), ("lockFile", token.lockFile)] {
                    if let other = stores[file] {
                        root.report("\(identityPath(name)).\(key)", "\(file) is also used by the identity \"\(other)\"; each identity needs its own store and lock file")
                    }
                    stores[file] = name
                }
            }
        }
        for name in names {
            guard case .identity(let subject)? = identities[name]!.exchange?.subject else { continue }
            guard identities[subject] != nil else {
                root.report("\(identityPath(name)).subjectIdentity", "names the identity \"\(subject)\", which is not configured; known: \(names.joined(separator: ", "))")
                continue
            }
            // Follow the chain of subjects; coming back to `name` is a loop no token could start.
            var chain = [name]
            var next: String? = subject
            while let current = next, identities[current] != nil {
                chain.append(current)
                if current == name {
                    root.report("\(identityPath(name)).subjectIdentity", "forms a loop: \(chain.joined(separator: " → ")); one identity of the chain must get its token another way")
                    break
                }
                if chain.count > identities.count + 1 { break }
                if case .identity(let further)? = identities[current]!.exchange?.subject { next = further } else { next = nil }
            }
        }
    }
}
