import Crypto
import FoundationEssentials
import Glibc

/// Seals the fleet's token set with AES-256-GCM (SPEC §2.3, §3.1), so that a dump of the
/// database shows no token. The row's name is authenticated with it (a row copied under another
/// `fleet.name` does not open), and the row carries the key's id, so that a key can be rotated:
/// the current key seals, previous keys still open rows sealed before the rotation.
struct TokenSealing: Sendable {
    struct Key: Sendable {
        /// A short digest of the key, stored beside the sealed row; it reveals nothing of the key.
        var id: String
        /// The 32 bytes of the key (`SymmetricKey` is not `Sendable` in every swift-crypto).
        var material: [UInt8]
        /// The key file, for messages.
        var path: String

        var key: SymmetricKey { SymmetricKey(data: material) }
    }

    var current: Key
    var previous: [Key]

    /// Reads `fleet.encryptionKeyFile` and `fleet.previousEncryptionKeyFiles`.
    static func load(current path: String, previous: [String]) throws(TokenStoreError) -> TokenSealing {
        func key(_ path: String) throws(TokenStoreError) -> Key {
            switch readKey(path: path) {
            case .success(let key): return key
            case .failure(let problem): throw .refused(path: path, reason: problem.message)
            }
        }
        return TokenSealing(current: try key(path), previous: try previous.map { (path) throws(TokenStoreError) in try key(path) })
    }

    struct KeyProblem: Error {
        var message: String
    }

    /// A key file holds the base64 text of 32 random bytes (`openssl rand -base64 32`; white space
    /// around it ignored), or exactly 32 raw bytes.
    static func readKey(path: String) -> Result<Key, KeyProblem> {
        let bytes: [UInt8]
        switch SecretFile.read(path) {
        case .success(let content): bytes = content
        case .failure(let failure):
            return .failure(KeyProblem(message: "cannot read the key file \(path): \(failure.reason); create it with `openssl rand -base64 32 > \(path)` (mode 0600)"))
        }
        var material: [UInt8]?
        if bytes.count == 32, Data(base64Encoded: Data(bytes)) == nil {
            material = bytes
        } else {
            let text = Data(SecretFile.trimmingWhiteSpace(bytes))
            if let decoded = Data(base64Encoded: text), decoded.count == 32 { material = Array(decoded) }
        }
        guard let material else {
            return .failure(KeyProblem(message: "the key file \(path) must hold the base64 text of 32 random bytes, as `openssl rand -base64 32` writes it (or exactly 32 raw bytes)"))
        }
        let digest = SHA256.hash(data: Data("tokenproxy fleet key id".utf8) + material)
        let id = digest.prefix(6).hexadecimal
        return .success(Key(id: id, material: material, path: path))
    }

    /// Seals `plaintext` for the row `name` with the current key.
    func seal(_ plaintext: Data, name: String) -> (sealed: Data, keyID: String) {
        // A fresh random nonce per seal; 2^32 seals per key stay far below GCM's limits.
        let box = try! AES.GCM.seal(plaintext, using: current.key, authenticating: Data(Self.context(name).utf8))
        return (box.combined!, current.id)
    }

    /// Opens a row sealed with the key `keyID`. A key that is not configured, or that cannot
    /// open the row, is a configuration problem naming `fleet.encryptionKeyFile`; nothing is
    /// written over the row.
    func open(_ sealed: Data, keyID: String, name: String) throws(TokenStoreError) -> Data {
        guard let key = ([current] + previous).first(where: { $0.id == keyID }) else {
            throw .refused(path: current.path, reason: "the fleet row \"\(name)\" was sealed with key \(keyID), but fleet.encryptionKeyFile \(current.path) holds key \(current.id)\(previous.isEmpty ? "" : " (and fleet.previousEncryptionKeyFiles \(previous.map(\.id).joined(separator: ", ")))"); configure the key the fleet was set up with (a rotated-out key goes in fleet.previousEncryptionKeyFiles)")
        }
        do {
            let box = try AES.GCM.SealedBox(combined: sealed)
            return try AES.GCM.open(box, using: key.key, authenticating: Data(Self.context(name).utf8))
        } catch {
            throw .refused(path: key.path, reason: "the fleet row \"\(name)\" cannot be opened with key \(keyID) from \(key.path) (authentication failed): the row was damaged or sealed for another fleet.name; the row is left untouched")
        }
    }

    private static func context(_ name: String) -> String { "tokenproxy fleet row \(name)" }
}
