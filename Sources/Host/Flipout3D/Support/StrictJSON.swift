// StrictJSON: an RFC 8259 parser that refuses what Foundation's JSONSerialization lets through
// (duplicate object keys, a byte-order mark, trailing bytes, invalid UTF-8, unbounded nesting),
// keeps object keys in file order, and keeps integers exact (Int64) apart from other numbers.

/// A parsed JSON value. Objects keep their keys in file order; keys are unique (the parser refuses duplicates).
public enum JSONValue: Equatable, Sendable, CustomStringConvertible {
    case null
    case bool(Bool)
    /// A number written without fraction or exponent that fits Int64.
    case integer(Int64)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([(key: String, value: JSONValue)])

    public static func == (a: JSONValue, b: JSONValue) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case let (.bool(x), .bool(y)): return x == y
        case let (.integer(x), .integer(y)): return x == y
        case let (.number(x), .number(y)): return x == y
        case let (.string(x), .string(y)): return x == y
        case let (.array(x), .array(y)): return x == y
        case let (.object(x), .object(y)): return x.count == y.count && zip(x, y).allSatisfy { $0.key == $1.key && $0.value == $1.value }
        default: return false
        }
    }

    /// The member named `key` of an object, else nil.
    public subscript(key: String) -> JSONValue? {
        if case .object(let members) = self { return members.first { $0.key == key }?.value }
        return nil
    }

    public var stringValue: String? { if case .string(let s) = self { return s }; return nil }
    public var integerValue: Int64? { if case .integer(let i) = self { return i }; return nil }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { return a }; return nil }
    public var objectValue: [(key: String, value: JSONValue)]? { if case .object(let o) = self { return o }; return nil }

    /// Compact JSON text of the value (strings made printable), for messages.
    public var description: String {
        switch self {
        case .null: return "null"
        case .bool(let b): return "\(b)"
        case .integer(let i): return "\(i)"
        case .number(let d): return "\(d)"
        case .string(let s): return "\"\(StrictJSON.printable(s))\""
        case .array(let a): return "[" + a.map(\.description).joined(separator: ",") + "]"
        case .object(let o): return "{" + o.map { "\"\(StrictJSON.printable($0.key))\":\($0.value)" }.joined(separator: ",") + "}"
        }
    }

    /// A short name of the value's kind, for messages ("a string", "an object").
    public var kindName: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .integer: return "an integer"
        case .number: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }
}

/// Why a text is not strict JSON, with the byte offset where the parser stopped.
public struct JSONSyntaxError: Error, CustomStringConvertible, Equatable {
    public let offset: Int
    public let reason: String
    public var description: String { "\(reason) at byte \(offset)" }
}

public enum StrictJSON {
    /// Deepest nesting accepted; deeper input is refused rather than recursing without bound.
    public static let maxDepth = 64

    /// Parses exactly one JSON value from `bytes`; only JSON whitespace may surround it.
    public static func parse(_ bytes: [UInt8]) throws -> JSONValue {
        try bytes.withUnsafeBufferPointer { buffer in
            var p = Parser(b: buffer, i: 0)
            if buffer.count >= 3 && buffer[0] == 0xEF && buffer[1] == 0xBB && buffer[2] == 0xBF {
                throw JSONSyntaxError(offset: 0, reason: "a byte-order mark (JSON text must not start with one)")
            }
            p.skipWhitespace()
            let v = try p.value(depth: 0)
            p.skipWhitespace()
            guard p.i == buffer.count else { throw JSONSyntaxError(offset: p.i, reason: "trailing bytes after the JSON value") }
            return v
        }
    }

    struct Parser {
        let b: UnsafeBufferPointer<UInt8>
        var i: Int

        func fail(_ why: String) -> JSONSyntaxError { JSONSyntaxError(offset: i, reason: why) }

        mutating func skipWhitespace() {
            while i < b.count, b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09 { i += 1 }
        }

        mutating func expect(_ word: String) throws {
            for c in word.utf8 {
                guard i < b.count, b[i] == c else { throw fail("invalid literal (expected \(word))") }
                i += 1
            }
        }

        mutating func value(depth: Int) throws -> JSONValue {
            guard depth < StrictJSON.maxDepth else { throw fail("nesting deeper than \(StrictJSON.maxDepth) levels") }
            guard i < b.count else { throw fail("unexpected end of input") }
            switch b[i] {
            case UInt8(ascii: "{"):
                i += 1
                var members: [(key: String, value: JSONValue)] = []
                var seen = Set<String>()
                skipWhitespace()
                if i < b.count && b[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
                while true {
                    skipWhitespace()
                    guard i < b.count, b[i] == UInt8(ascii: "\"") else { throw fail("expected a string key") }
                    let keyOffset = i
                    let key = try string()
                    guard seen.insert(key).inserted else {
                        throw JSONSyntaxError(offset: keyOffset, reason: "duplicate key \"\(StrictJSON.printable(key))\"")
                    }
                    skipWhitespace()
                    guard i < b.count, b[i] == UInt8(ascii: ":") else { throw fail("expected ':' after a key") }
                    i += 1
                    skipWhitespace()
                    members.append((key, try value(depth: depth + 1)))
                    skipWhitespace()
                    guard i < b.count else { throw fail("unexpected end of input in an object") }
                    if b[i] == UInt8(ascii: ",") { i += 1; continue }
                    if b[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
                    throw fail("expected ',' or '}' in an object")
                }
            case UInt8(ascii: "["):
                i += 1
                var items: [JSONValue] = []
                skipWhitespace()
                if i < b.count && b[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
                while true {
                    skipWhitespace()
                    items.append(try value(depth: depth + 1))
                    skipWhitespace()
                    guard i < b.count else { throw fail("unexpected end of input in an array") }
                    if b[i] == UInt8(ascii: ",") { i += 1; continue }
                    if b[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
                    throw fail("expected ',' or ']' in an array")
                }
            case UInt8(ascii: "\""):
                return .string(try string())
            case UInt8(ascii: "t"): try expect("true"); return .bool(true)
            case UInt8(ascii: "f"): try expect("false"); return .bool(false)
            case UInt8(ascii: "n"): try expect("null"); return .null
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                return try number()
            default:
                throw fail("unexpected byte 0x\(String(b[i], radix: 16))")
            }
        }

        mutating func number() throws -> JSONValue {
            let start = i
            if b[i] == UInt8(ascii: "-") { i += 1 }
            func digits(_ p: inout Parser) -> Int {
                let s = p.i
                while p.i < p.b.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(p.b[p.i]) { p.i += 1 }
                return p.i - s
            }
            let intStart = i
            let n = digits(&self)
            guard n > 0 else { throw fail("a number needs digits") }
            guard !(n > 1 && b[intStart] == UInt8(ascii: "0")) else { throw JSONSyntaxError(offset: intStart, reason: "a number with a leading zero") }
            var isInteger = true
            if i < b.count && b[i] == UInt8(ascii: ".") {
                i += 1; isInteger = false
                guard digits(&self) > 0 else { throw fail("a fraction needs digits") }
            }
            if i < b.count && (b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E")) {
                i += 1; isInteger = false
                if i < b.count && (b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-")) { i += 1 }
                guard digits(&self) > 0 else { throw fail("an exponent needs digits") }
            }
            let text = String(decoding: UnsafeBufferPointer(rebasing: b[start..<i]), as: UTF8.self)
            if isInteger, let v = Int64(text) { return .integer(v) }
            guard let d = Double(text), d.isFinite else { throw JSONSyntaxError(offset: start, reason: "a number out of range (\(text.prefix(40)))") }
            return .number(d)
        }

        /// A string starting at the opening quote; validates UTF-8 and escapes.
        mutating func string() throws -> String {
            i += 1 // opening quote
            var out = [UInt8]()
            while true {
                guard i < b.count else { throw fail("unterminated string") }
                let c = b[i]
                if c == UInt8(ascii: "\"") { i += 1; break }
                if c < 0x20 { throw fail("a raw control character in a string") }
                if c == UInt8(ascii: "\\") {
                    i += 1
                    guard i < b.count else { throw fail("unterminated escape") }
                    let e = b[i]; i += 1
                    switch e {
                    case UInt8(ascii: "\""): out.append(0x22)
                    case UInt8(ascii: "\\"): out.append(0x5C)
                    case UInt8(ascii: "/"): out.append(0x2F)
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0C)
                    case UInt8(ascii: "n"): out.append(0x0A)
                    case UInt8(ascii: "r"): out.append(0x0D)
                    case UInt8(ascii: "t"): out.append(0x09)
                    case UInt8(ascii: "u"):
                        var scalar = try hex4()
                        if (0xD800..<0xDC00).contains(scalar) {
                            guard i + 1 < b.count, b[i] == UInt8(ascii: "\\"), b[i + 1] == UInt8(ascii: "u") else { throw fail("an unpaired surrogate escape") }
                            i += 2
                            let low = try hex4()
                            guard (0xDC00..<0xE000).contains(low) else { throw fail("an unpaired surrogate escape") }
                            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                        } else if (0xDC00..<0xE000).contains(scalar) {
                            throw fail("an unpaired surrogate escape")
                        }
                        out.append(contentsOf: Array(String(Unicode.Scalar(scalar)!).utf8))
                    default: throw fail("an invalid escape \\\(Character(Unicode.Scalar(e)))")
                    }
                    continue
                }
                // One UTF-8 sequence, validated (no overlongs, no surrogates, at most U+10FFFF).
                let length: Int, minimum: UInt32
                var scalar: UInt32
                switch c {
                case 0x00..<0x80: out.append(c); i += 1; continue
                case 0xC2..<0xE0: length = 2; minimum = 0x80; scalar = UInt32(c & 0x1F)
                case 0xE0..<0xF0: length = 3; minimum = 0x800; scalar = UInt32(c & 0x0F)
                case 0xF0..<0xF5: length = 4; minimum = 0x10000; scalar = UInt32(c & 0x07)
                default: throw fail("invalid UTF-8")
                }
                guard i + length <= b.count else { throw fail("invalid UTF-8") }
                for k in 1..<length {
                    let cc = b[i + k]
                    guard cc & 0xC0 == 0x80 else { throw fail("invalid UTF-8") }
                    scalar = scalar << 6 | UInt32(cc & 0x3F)
                }
                guard scalar >= minimum, scalar <= 0x10FFFF, !(0xD800..<0xE000).contains(scalar) else { throw fail("invalid UTF-8") }
                out.append(contentsOf: UnsafeBufferPointer(rebasing: b[i..<(i + length)]))
                i += length
            }
            return String(decoding: out, as: UTF8.self)
        }

        mutating func hex4() throws -> UInt32 {
            guard i + 4 <= b.count else { throw fail("a short \\u escape") }
            var v: UInt32 = 0
            for _ in 0..<4 {
                let c = b[i]
                let d: UInt32
                switch c {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
                case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
                case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
                default: throw fail("a bad \\u escape")
                }
                v = v << 4 | d
                i += 1
            }
            return v
        }
    }

    /// `s` limited to 80 printable ASCII characters (others as \u{..}), safe to print on a terminal.
    public static func printable(_ s: String) -> String {
        var out = ""
        for u in s.unicodeScalars.prefix(80) {
            out += (0x20..<0x7F).contains(u.value) ? String(u) : "\\u{\(String(u.value, radix: 16))}"
        }
        return s.unicodeScalars.count > 80 ? out + "…" : out
    }
}
