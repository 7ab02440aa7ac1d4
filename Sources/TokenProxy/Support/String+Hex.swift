extension String {
    /// The string with `"0"`s in front up to `width` characters (`"7"` → `"07"`).
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

extension Sequence<UInt8> {
    /// Lowercase hexadecimal, two digits a byte.
    var hexadecimal: String {
        map { String($0, radix: 16).leftPadded(to: 2) }.joined()
    }
}
