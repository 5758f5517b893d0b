// The ABI's constants as Swift types, shared by the host and the plugin SDK (one copy, from the header).
#if canImport(PluginABI)
import PluginABI
#endif
#if canImport(Glibc)
import Glibc
#endif

/// A function's result: `flipout_status`.
public enum Status: Int32, Sendable, CustomStringConvertible, CaseIterable {
    case ok = 0, invalidArgument = 1, unsupported = 2, domainError = 3, internalError = 4
    public var description: String {
        switch self {
        case .ok: return "ok"
        case .invalidArgument: return "invalid argument"
        case .unsupported: return "unsupported"
        case .domainError: return "domain error"
        case .internalError: return "internal error"
        }
    }
}

/// `FLIPOUT_CAP_*`: what a family can do and promises. Unknown bits are kept and ignored.
public struct Capabilities: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let sample = Capabilities(rawValue: 1 << 0)
    public static let symmetric = Capabilities(rawValue: 1 << 1)
    public static let implicitReparameterization = Capabilities(rawValue: 1 << 2)
    public static let uniformNoise = Capabilities(rawValue: 1 << 3)
    public static let positiveSupport = Capabilities(rawValue: 1 << 4)
    /// Since 1.1: the family is Normal(loc, scale) with (location, scale) roles in that order.
    public static let gaussian = Capabilities(rawValue: 1 << 5)
    public static let names: [(Capabilities, String)] = [
        (.sample, "sample"), (.symmetric, "symmetric"), (.implicitReparameterization, "implicit-reparam"),
        (.uniformNoise, "uniform-noise"), (.positiveSupport, "positive-support"), (.gaussian, "gaussian"),
    ]
    public var names: [String] { Self.names.filter { contains($0.0) }.map(\.1) }
    public var description: String { names.isEmpty ? "none" : names.joined(separator: ",") }
}

/// `FLIPOUT_ROLE_*` (since 1.1): what a parameter means to host policy.
public enum ParameterRole: Int32, Sendable, CaseIterable, CustomStringConvertible {
    case unspecified = 0, location = 1, scale = 2, shape = 3, weight = 4
    public var description: String { ["-", "location", "scale", "shape", "weight"][Int(rawValue)] }
}

/// `FLIPOUT_LOG_*`.
public enum LogLevel: Int32, Sendable {
    case debug = 0, info = 1, warning = 2, error = 3
}

/// `FLIPOUT_TRANSFORM_*`: how an unconstrained stored value u maps to the constrained parameter.
public enum ParameterTransform: Int32, Sendable, CaseIterable, CustomStringConvertible {
    case identity = 0, softplus = 1, exp = 2, sigmoid = 3

    public func forward(_ u: Float) -> Float {
        switch self {
        case .identity: return u
        case .softplus: return u > 20 ? u : log1pf(expf(u))
        case .exp: return expf(u)
        case .sigmoid: return 1 / (1 + expf(-u))
        }
    }
    /// d forward / du.
    public func derivative(_ u: Float) -> Float {
        switch self {
        case .identity: return 1
        case .softplus: return 1 / (1 + expf(-u))
        case .exp: return expf(u)
        case .sigmoid: let s = 1 / (1 + expf(-u)); return s * (1 - s)
        }
    }
    /// The unconstrained value for a constrained one.
    public func inverse(_ v: Float) -> Float {
        switch self {
        case .identity: return v
        case .softplus: return v > 20 ? v : logf(expm1f(v))
        case .exp: return logf(v)
        case .sigmoid: return logf(v / (1 - v))
        }
    }
    /// Whether a constrained value is inside the transform's range.
    public func accepts(_ v: Float) -> Bool {
        switch self {
        case .identity: return v.isFinite
        case .softplus, .exp: return v.isFinite && v > 0
        case .sigmoid: return v > 0 && v < 1
        }
    }
    /// The range in words, for messages: "> 0".
    public var range: String {
        switch self {
        case .identity: return "any finite value"
        case .softplus, .exp: return "> 0"
        case .sigmoid: return "in (0, 1)"
        }
    }
    public var description: String { ["identity", "softplus", "exp", "sigmoid"][Int(rawValue)] }
}

/// The header's HOST LIMITS.
public enum HostLimits {
    public static let parameters = Int(FLIPOUT_MAX_PARAMETERS)
    public static let slots = Int(FLIPOUT_MAX_SLOTS)
    public static let noisePerScalar = Int(FLIPOUT_MAX_NOISE_PER_SCALAR)
    public static let families = Int(FLIPOUT_MAX_FAMILIES)
    public static let nameLength = Int(FLIPOUT_MAX_NAME_LENGTH)
    public static let textLength = Int(FLIPOUT_MAX_TEXT_LENGTH)
}
