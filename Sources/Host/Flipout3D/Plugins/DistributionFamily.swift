// A distribution family as a plugin declares it: identity, parameters, hyperparameters, capabilities.
import PluginABI
import Foundation

/// How an unconstrained stored value u maps to the constrained parameter the plugin sees.
public enum ParameterTransform: Int32, Sendable, CustomStringConvertible {
    case identity = 0, softplus = 1, exp = 2, sigmoid = 3

    public func forward(_ u: Float) -> Float {
        switch self {
        case .identity: return u
        case .softplus: return u > 20 ? u : Foundation.log1p(Foundation.exp(u))
        case .exp: return Foundation.exp(u)
        case .sigmoid: return 1 / (1 + Foundation.exp(-u))
        }
    }
    /// d forward / du.
    public func derivative(_ u: Float) -> Float {
        switch self {
        case .identity: return 1
        case .softplus: return 1 / (1 + Foundation.exp(-u))
        case .exp: return Foundation.exp(u)
        case .sigmoid: let s = 1 / (1 + Foundation.exp(-u)); return s * (1 - s)
        }
    }
    /// The unconstrained value for a constrained one.
    public func inverse(_ v: Float) -> Float {
        switch self {
        case .identity: return v
        case .softplus: return v > 20 ? v : Foundation.log(Foundation.expm1(v))
        case .exp: return Foundation.log(v)
        case .sigmoid: return Foundation.log(v / (1 - v))
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
    public var description: String { ["identity", "softplus", "exp", "sigmoid"][Int(rawValue)] }
}

public struct FamilyCapabilities: OptionSet, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let sample = FamilyCapabilities(rawValue: 1 << 0)
    public static let symmetric = FamilyCapabilities(rawValue: 1 << 1)
    public static let implicitReparameterization = FamilyCapabilities(rawValue: 1 << 2)
    public static let uniformNoise = FamilyCapabilities(rawValue: 1 << 3)
    public static let positiveSupport = FamilyCapabilities(rawValue: 1 << 4)
    static let names: [(FamilyCapabilities, String)] = [
        (.sample, "sample"), (.symmetric, "symmetric"), (.implicitReparameterization, "implicit-reparam"),
        (.uniformNoise, "uniform-noise"), (.positiveSupport, "positive-support"),
    ]
    public var names: [String] { Self.names.filter { contains($0.0) }.map(\.1) }
    public var description: String { names.isEmpty ? "none" : names.joined(separator: ",") }
}

public struct ParameterInfo: Sendable {
    public let name: String
    public let description: String
    public let transform: ParameterTransform
    public let defaultValue: Float
    public let initJitter: Float
    /// The constrained value as a prior when the user sets none.
    public let priorValue: Float
    public let countHyperparameter: String?
}

public struct HyperparameterInfo: Sendable {
    public let name: String
    public let description: String
    public let defaultValue: Double
    public let minimum: Double
    public let maximum: Double
    public let isInteger: Bool
}

/// A family a plugin provides. Create instances with `instantiate`.
public final class DistributionFamily: @unchecked Sendable {
    public let id: String
    public let name: String
    public let version: String
    public let summary: String
    public let capabilities: FamilyCapabilities
    public let parameters: [ParameterInfo]
    public let hyperparameters: [HyperparameterInfo]
    /// Posterior families q for which this family (as the prior p) has an analytic KL(q || p).
    public let klFamilies: [String]
    public let toolchain: String
    public let stdlib: String
    public unowned let library: PluginLibrary
    let descriptor: UnsafePointer<flipout_distribution>

    public var file: String { library.path }
    public var isSymmetric: Bool { capabilities.contains(.symmetric) }
    public var canSample: Bool { capabilities.contains(.sample) }

    init(descriptor d: UnsafePointer<flipout_distribution>, library: PluginLibrary) throws {
        let file = library.path
        let size = d.pointee.struct_size
        guard size >= UInt32(PluginLibrary.minimumDistributionSize) else {
            throw PluginLoadError(.structTooSmall, file: file, "flipout_distribution is \(size) bytes; this host needs at least \(PluginLibrary.minimumDistributionSize) (ABI 1.0). Rebuild the plugin against this host's header.")
        }
        let v = d.pointee
        func string(_ p: UnsafePointer<CChar>?, _ field: String, required: Bool = true) throws -> String {
            guard let p else {
                if required { throw PluginLoadError(.invalidDescriptor, file: file, "flipout_distribution.\(field) is NULL.") }
                return ""
            }
            return String(cString: p)
        }
        id = try string(v.id, "id")
        guard !id.isEmpty, id.contains("."), !id.contains(where: { $0 == " " || $0 == "=" || $0 == "," }) else {
            throw PluginLoadError(.invalidDescriptor, file: file, "id \"\(id)\" is not a reverse-DNS name such as org.example.myprior.")
        }
        name = try string(v.name, "name")
        version = try string(v.version, "version")
        summary = try string(v.description, "description", required: false)
        capabilities = FamilyCapabilities(rawValue: v.capabilities)
        toolchain = try string(v.build_toolchain, "build_toolchain", required: false)
        stdlib = try string(v.build_stdlib, "build_stdlib", required: false)
        self.library = library
        descriptor = d

        var params: [ParameterInfo] = []
        if v.parameter_count > 0 {
            guard let ps = v.parameters else { throw PluginLoadError(.invalidDescriptor, file: file, "\(id): parameters is NULL but parameter_count is \(v.parameter_count).") }
            for i in 0..<Int(v.parameter_count) {
                let p = ps[i]
                guard p.struct_size >= UInt32(MemoryLayout<flipout_parameter_desc>.size) else {
                    throw PluginLoadError(.structTooSmall, file: file, "\(id): flipout_parameter_desc \(i) is \(p.struct_size) bytes; this host needs \(MemoryLayout<flipout_parameter_desc>.size).")
                }
                guard let t = ParameterTransform(rawValue: p.transform) else {
                    throw PluginLoadError(.invalidDescriptor, file: file, "\(id): parameter \(i) has unknown transform \(p.transform).")
                }
                params.append(ParameterInfo(name: try string(p.name, "parameters[\(i)].name"), description: try string(p.description, "parameters[\(i)].description", required: false),
                                            transform: t, defaultValue: p.default_value, initJitter: p.init_jitter,
                                            priorValue: p.prior_value.isNaN ? p.default_value : p.prior_value,
                                            countHyperparameter: p.count_hyperparameter.map { String(cString: $0) }))
            }
        } else {
            throw PluginLoadError(.invalidDescriptor, file: file, "\(id): declares no parameters.")
        }
        parameters = params
        var hypers: [HyperparameterInfo] = []
        if v.hyperparameter_count > 0 {
            guard let hs = v.hyperparameters else { throw PluginLoadError(.invalidDescriptor, file: file, "\(id): hyperparameters is NULL but hyperparameter_count is \(v.hyperparameter_count).") }
            for i in 0..<Int(v.hyperparameter_count) {
                let h = hs[i]
                guard h.struct_size >= UInt32(MemoryLayout<flipout_hyperparameter_desc>.size) else {
                    throw PluginLoadError(.structTooSmall, file: file, "\(id): flipout_hyperparameter_desc \(i) is \(h.struct_size) bytes; this host needs \(MemoryLayout<flipout_hyperparameter_desc>.size).")
                }
                hypers.append(HyperparameterInfo(name: try string(h.name, "hyperparameters[\(i)].name"), description: try string(h.description, "hyperparameters[\(i)].description", required: false),
                                                 defaultValue: h.default_value, minimum: h.minimum, maximum: h.maximum, isInteger: h.is_integer != 0))
            }
        }
        hyperparameters = hypers
        for p in params { if let c = p.countHyperparameter, !hypers.contains(where: { $0.name == c && $0.isInteger }) {
            throw PluginLoadError(.invalidDescriptor, file: file, "\(id): parameter \(p.name) repeats by \"\(c)\", which is not an integer hyperparameter.")
        } }
        var kls: [String] = []
        if var k = v.kl_families { while let s = k.pointee { kls.append(String(cString: s)); k += 1 } }
        klFamilies = kls

        func require(_ present: Bool, _ fn: String, _ why: String) throws {
            if !present { throw PluginLoadError(.missingFunction, file: file, "\(id): required function \(fn) is NULL (\(why)). Set \(fn) in the plugin's flipout_distribution (or drop the capability that requires it) and rebuild the plugin.") }
        }
        try require(v.create != nil, "create", "every family")
        try require(v.destroy != nil, "destroy", "every family")
        try require(v.layout != nil, "layout", "every family")
        try require(v.log_prob != nil, "log_prob", "every family")
        try require(v.log_prob_vjp != nil, "log_prob_vjp", "every family")
        if capabilities.contains(.sample) {
            try require(v.sample != nil, "sample", "declared FLIPOUT_CAP_SAMPLE")
            try require(v.sample_vjp != nil, "sample_vjp", "declared FLIPOUT_CAP_SAMPLE")
            try require(v.center != nil, "center", "declared FLIPOUT_CAP_SAMPLE")
            try require(v.center_vjp != nil, "center_vjp", "declared FLIPOUT_CAP_SAMPLE")
        }
        if !kls.isEmpty {
            try require(v.kl != nil, "kl", "lists kl_families")
            try require(v.kl_vjp != nil, "kl_vjp", "lists kl_families")
        }
        if v.kl != nil { try require(v.kl_vjp != nil, "kl_vjp", "provides kl") }
    }

    /// Values for every hyperparameter: declared defaults overridden by `values` (by name), checked.
    public func resolveHyperparameters(_ values: [String: Double]) throws -> [Double] {
        for key in values.keys where !hyperparameters.contains(where: { $0.name == key }) {
            let known = hyperparameters.map(\.name)
            throw PluginLoadError(.badHyperparameter, file: file, "\(id) has no hyperparameter \"\(key)\"" + (known.isEmpty ? " (it has none)." : "; it has: \(known.joined(separator: ", ")).") )
        }
        return try hyperparameters.map { h in
            let v = values[h.name] ?? h.defaultValue
            guard v >= h.minimum && v <= h.maximum else {
                throw PluginLoadError(.badHyperparameter, file: file, "\(id): hyperparameter \(h.name) = \(v) is outside [\(h.minimum), \(h.maximum)].")
            }
            if h.isInteger && v.rounded() != v {
                throw PluginLoadError(.badHyperparameter, file: file, "\(id): hyperparameter \(h.name) must be an integer (got \(v)).")
            }
            return v
        }
    }

    /// Create an instance with hyperparameters by name (missing ones take their defaults).
    public func instantiate(_ hyperparameters: [String: Double] = [:]) throws -> Distribution {
        try Distribution(family: self, hyperparameters: try resolveHyperparameters(hyperparameters))
    }
}
