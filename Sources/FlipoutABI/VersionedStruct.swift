// Reading a struct whose writer may be older or newer than the reader: the header's VERSIONING rules.
#if canImport(PluginABI)
import PluginABI
#endif
#if canImport(Glibc)
import Glibc
#endif

/// A C struct of the ABI that begins with `uint32_t struct_size`, with its pinned minor-0 size.
public protocol VersionedStruct {
    init()
    /// FLIPOUT_SIZE_V1_0_*: the smallest struct_size a reader accepts (never this reader's sizeof).
    static var minimumSize: Int { get }
    static var cName: String { get }
}

extension flipout_error: VersionedStruct {
    public static var minimumSize: Int { Int(FLIPOUT_SIZE_V1_0_ERROR) }
    public static var cName: String { "flipout_error" }
}
extension flipout_host: VersionedStruct {
    public static var minimumSize: Int { Int(FLIPOUT_SIZE_V1_0_HOST) }
    public static var cName: String { "flipout_host" }
}
extension flipout_parameter_desc: VersionedStruct {
    public static var minimumSize: Int { Int(FLIPOUT_SIZE_V1_0_PARAMETER_DESC) }
    public static var cName: String { "flipout_parameter_desc" }
}
extension flipout_hyperparameter_desc: VersionedStruct {
    public static var minimumSize: Int { Int(FLIPOUT_SIZE_V1_0_HYPERPARAMETER_DESC) }
    public static var cName: String { "flipout_hyperparameter_desc" }
}
extension flipout_distribution: VersionedStruct {
    public static var minimumSize: Int { Int(FLIPOUT_SIZE_V1_0_DISTRIBUTION) }
    public static var cName: String { "flipout_distribution" }
}
extension flipout_library: VersionedStruct {
    public static var minimumSize: Int { Int(FLIPOUT_SIZE_V1_0_LIBRARY) }
    public static var cName: String { "flipout_library" }
}

/// A copy of a struct as its writer sized it: fields past the writer's `struct_size` read as
/// absent (zero / NULL), fields the writer has but this reader does not know are never touched.
public struct Versioned<S: VersionedStruct> {
    /// The writer's struct_size.
    public let size: Int
    /// The fields, zero past `size`.
    public let value: S

    /// Reads the struct at `pointer`; nil if it is smaller than the minor-0 size.
    public init?(_ pointer: UnsafeRawPointer) {
        let size = Int(pointer.load(as: UInt32.self))
        guard size >= S.minimumSize else { return nil }
        var v = S()
        withUnsafeMutableBytes(of: &v) { dst in
            dst.copyMemory(from: UnsafeRawBufferPointer(start: pointer, count: Swift.min(size, MemoryLayout<S>.size)))
        }
        self.size = size
        value = v
    }

    /// Whether the writer's struct holds the field at `offset` (from MemoryLayout.offset(of:)) of `width` bytes.
    public func has(offset: Int?, width: Int) -> Bool {
        guard let offset else { return false }
        return size >= offset + width
    }

    /// The struct_size of a struct at `pointer`, for messages.
    public static func declaredSize(_ pointer: UnsafeRawPointer) -> Int { Int(pointer.load(as: UInt32.self)) }

    /// Element `i` of an array of such structs. Array structs never grow (flipout_plugin.h,
    /// VERSIONING), so the stride is the minor-0 size, as every 1.0 reader assumes.
    public static func element(_ base: UnsafeRawPointer, _ i: Int) -> UnsafeRawPointer {
        base + i * S.minimumSize
    }
}

extension Versioned where S == flipout_distribution {
    /// The declared parameter roles (since 1.1), or nil when the writer declares none.
    /// An unknown future role reads as `.unspecified`.
    public var parameterRoles: [ParameterRole]? {
        guard has(offset: MemoryLayout<flipout_distribution>.offset(of: \.parameter_roles), width: 8),
              let roles = value.parameter_roles else { return nil }
        return (0..<Int(value.parameter_count)).map { ParameterRole(rawValue: roles[$0]) ?? .unspecified }
    }
}

/// Bounded, validated C strings from a plugin (the header's HOST LIMITS).
public enum PluginString {
    public enum Problem: Error, Equatable { case tooLong(Int), notPrintableASCII(String), controlCharacter(String), notUTF8 }

    /// The string at `p`, read at most `limit` bytes; throws if longer or not of the allowed alphabet.
    /// - identifier: printable ASCII only (ids, names, versions, parameter names).
    public static func read(_ p: UnsafePointer<CChar>, limit: Int, identifier: Bool) throws -> String {
        let length = strnlen(p, limit + 1)
        guard length <= limit else { throw Problem.tooLong(limit) }
        let bytes = UnsafeRawBufferPointer(start: p, count: length)
        if identifier {
            if bytes.contains(where: { $0 < 0x20 || $0 > 0x7e }) { throw Problem.notPrintableASCII(escaped(bytes)) }
        } else if bytes.contains(where: { ($0 < 0x20 && $0 != 0x0a) || $0 == 0x7f }) {
            throw Problem.controlCharacter(escaped(bytes))
        }
        guard let s = String(validating: bytes, as: UTF8.self) else { throw Problem.notUTF8 }
        return s
    }

    /// The bytes with everything outside printable ASCII shown as \xNN, safe to print to a terminal.
    public static func escaped(_ bytes: UnsafeRawBufferPointer) -> String {
        var out = ""
        for b in bytes {
            if b >= 0x20 && b <= 0x7e && b != 0x5c { out.unicodeScalars.append(Unicode.Scalar(b)) }
            else { out += "\\x" + String(b, radix: 16, uppercase: true).leftPadded(2) }
        }
        return out
    }

    /// `s` with control characters (and everything outside printable ASCII) escaped.
    public static func escaped(_ s: String) -> String {
        Array(s.utf8).withUnsafeBytes { escaped($0) }
    }
}

extension String {
    fileprivate func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}
