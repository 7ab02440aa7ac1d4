extension StringProtocol {
    /// Without leading and trailing spaces and tabs (HTTP's optional whitespace), without
    /// Foundation's `CharacterSet`.
    func trimmingWhitespace() -> SubSequence {
        let isBlank: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let first = firstIndex(where: { !isBlank($0) }), let last = lastIndex(where: { !isBlank($0) }) else {
            return self[endIndex...]
        }
        return self[first...last]
    }
}
