// The host <-> child protocol of an isolated plugin: operations, byte encoding, and the library description.
//
// One SOCK_SEQPACKET socketpair carries small messages (one request, one reply, each one packet);
// every float array travels through a memfd both processes map (SharedMemory). A request names
// its arrays by (offset, stride) into that memory; stride is 0 (broadcast) or 1. The child
// answers with the plugin's status and, on failure, its message.
import Foundation

enum WireOp: UInt32 {
    case create = 1, destroy, layout, logProb, logProbVJP, sample, sampleVJP, center, centerVJP, kl, klVJP
    /// Several posted requests in one message (`IsolatedPlugin.post`): run in order, stopping at the first failure.
    case batch

    /// The operations the host may post without waiting: VJPs whose outputs only ADD into
    /// gradients, which the host reads after `PostedPluginCalls.collect()`.
    var canBePosted: Bool { self == .centerVJP || self == .sampleVJP || self == .klVJP }
    /// The operations a batch may hold: posted VJPs, and center, sample and kl, which a layer
    /// (`Distribution.centerAndSample`) or a training step's draw of all layers' weights
    /// (`WeightPrefetch`) posts and collects at once.
    var canBeBatched: Bool { canBePosted || self == .center || self == .sample || self == .kl }

    /// The ABI function's name, for messages.
    var function: String {
        switch self {
        case .create: return "create"
        case .destroy: return "destroy"
        case .layout: return "layout"
        case .logProb: return "log_prob"
        case .logProbVJP: return "log_prob_vjp"
        case .sample: return "sample"
        case .sampleVJP: return "sample_vjp"
        case .center: return "center"
        case .centerVJP: return "center_vjp"
        case .kl: return "kl"
        case .klVJP: return "kl_vjp"
        case .batch: return "batch"
        }
    }
}

/// A float array in shared memory: byte offset and element stride; `absent` is a NULL pointer.
struct WireArray: Equatable {
    var offset: UInt64
    var stride: UInt64
    static let absent = WireArray(offset: .max, stride: 0)
    var isAbsent: Bool { offset == .max }
}

/// Little-endian encoder of one message.
struct WireWriter {
    var bytes: [UInt8] = []
    /// Moves every array written (not `absent`) to where the call's frame really lies in the
    /// shared memory (after posted calls' arrays, or onto a posted call's gradient array).
    typealias Relocation = (WireArray) -> WireArray
    var relocate: Relocation?
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func i32(_ v: Int32) { u32(UInt32(bitPattern: v)) }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func f64(_ v: Double) { u64(v.bitPattern) }
    mutating func string(_ s: String) { let u = Array(s.utf8); u32(UInt32(u.count)); bytes += u }
    mutating func array(_ a: WireArray) {
        let moved = a.isAbsent ? a : relocate?(a) ?? a
        u64(moved.offset); u64(moved.stride)
    }
    mutating func arrays(_ a: [WireArray]) { u32(UInt32(a.count)); for x in a { array(x) } }
}

/// Decoder of one message; any read past the end throws (a truncated or hostile message).
struct WireReader {
    struct Truncated: Error {}
    let bytes: [UInt8]
    var at = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    mutating func take(_ n: Int) throws -> ArraySlice<UInt8> {
        guard n >= 0, at + n <= bytes.count else { throw Truncated() }
        defer { at += n }
        return bytes[at..<at + n]
    }
    mutating func u32() throws -> UInt32 { try take(4).reversed().reduce(0) { $0 << 8 | UInt32($1) } }
    mutating func i32() throws -> Int32 { Int32(bitPattern: try u32()) }
    mutating func u64() throws -> UInt64 { try take(8).reversed().reduce(0) { $0 << 8 | UInt64($1) } }
    mutating func f64() throws -> Double { Double(bitPattern: try u64()) }
    mutating func string(limit: Int = 1 << 16) throws -> String {
        let n = Int(try u32())
        guard n <= limit else { throw Truncated() }
        return String(decoding: try take(n), as: UTF8.self)
    }
    mutating func array() throws -> WireArray { WireArray(offset: try u64(), stride: try u64()) }
    mutating func arrays(limit: Int = Int(HostLimits.slots)) throws -> [WireArray] {
        let n = Int(try u32())
        guard n <= limit else { throw Truncated() }
        return try (0..<n).map { _ in try array() }
    }
}

/// What the child reports after loading: the library and every family's descriptor, as values.
/// The host rebuilds a descriptor from it and validates it again (the child is not trusted).
struct WireLibrary: Codable {
    var name: String
    var abiMinor: Int
    var families: [WireFamily]
}

struct WireFamily: Codable {
    struct Parameter: Codable {
        var name: String; var description: String; var transform: Int32
        var defaultValue: Float; var initJitter: Float; var countHyperparameter: String?; var priorValue: Float
    }
    struct Hyperparameter: Codable {
        var name: String; var description: String; var defaultValue: Double; var minimum: Double; var maximum: Double; var isInteger: Bool
    }
    var id: String; var name: String; var version: String; var description: String
    var capabilities: UInt64
    var parameters: [Parameter]
    var roles: [Int32]?
    var hyperparameters: [Hyperparameter]
    var klFamilies: [String]
    var toolchain: String; var stdlib: String
    /// Names of the functions the plugin provides (non-NULL pointers).
    var functions: [String]

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return e
    }()
    static let decoder: JSONDecoder = {
        let d = JSONDecoder()
        d.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return d
    }()
}
