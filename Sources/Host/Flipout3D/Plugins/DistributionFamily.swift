// A distribution family as a plugin declares it: identity, parameters, hyperparameters, capabilities.
import PluginABI
@_exported import FlipoutABI
import Foundation
import CPluginIsolation

/// Where an isolated family's calls go: its library's child process and its index there.
public struct RemoteFamily {
    let plugin: IsolatedPlugin
    let index: UInt32
}

/// The ABI's capability flags (FlipoutABI.Capabilities, shared with the SDK).
public typealias FamilyCapabilities = Capabilities

public struct ParameterInfo: Sendable {
    public let name: String
    public let description: String
    public let transform: ParameterTransform
    public let defaultValue: Float
    public let initJitter: Float
    /// The constrained value as a prior when the user sets none.
    public let priorValue: Float
    public let countHyperparameter: String?
    /// What the parameter means to host policy: declared (parameter_roles, ABI 1.1), or without
    /// roles the 1.0 rule: a parameter named "loc" with identity transform is a location.
    public let role: ParameterRole
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
    /// Set when the family lives in a child process: every call goes there (the descriptor is then
    /// the host's copy of the child's description, its function pointers never called).
    public let remote: RemoteFamily?
    public var isIsolated: Bool { remote != nil }
    /// Per function, the line the crash guard prints if an in-process call dies (never freed).
    private let crashLines: [String: UnsafePointer<CChar>]

    public var file: String { library.path }
    public var isSymmetric: Bool { capabilities.contains(.symmetric) }
    public var canSample: Bool { capabilities.contains(.sample) }

    /// The descriptor as its writer sized it (fields of later minors read as absent), copied once.
    let table: flipout_distribution

    init(descriptor d: UnsafePointer<flipout_distribution>, library: PluginLibrary, remote: RemoteFamily? = nil) throws {
        let file = library.path
        self.remote = remote
        guard let read = Versioned<flipout_distribution>(UnsafeRawPointer(d)) else {
            throw PluginLoadError(.structTooSmall, file: file, "flipout_distribution is \(Versioned<flipout_distribution>.declaredSize(UnsafeRawPointer(d))) bytes; this host needs at least \(flipout_distribution.minimumSize) (ABI 1.0). Rebuild the plugin against this host's header.")
        }
        let v = read.value
        var where_ = "flipout_distribution"
        func text(_ p: UnsafePointer<CChar>?, _ field: String, required: Bool = true, identifier: Bool = true) throws -> String {
            guard let p else {
                if required { throw PluginLoadError(.invalidDescriptor, file: file, "\(where_).\(field) is NULL.") }
                return ""
            }
            do {
                return try PluginString.read(p, limit: identifier ? HostLimits.nameLength : HostLimits.textLength, identifier: identifier)
            } catch let problem as PluginString.Problem {
                let why: String
                switch problem {
                case .tooLong(let n): why = "is longer than \(n) bytes"
                case .notPrintableASCII(let shown): why = "\"\(shown)\" is not printable ASCII (0x20-0x7e; escape codes are refused)"
                case .controlCharacter(let shown): why = "\"\(shown)\" holds control characters (terminal escape codes are refused)"
                case .notUTF8: why = "is not UTF-8"
                }
                throw PluginLoadError(.invalidDescriptor, file: file, "\(where_).\(field) \(why).")
            }
        }
        id = try text(v.id, "id")
        guard !id.isEmpty, id.contains("."), !id.contains(where: { $0 == " " || $0 == "=" || $0 == "," || $0 == ":" || $0 == "@" }) else {
            throw PluginLoadError(.invalidDescriptor, file: file, "id \"\(id)\" is not a reverse-DNS name such as org.example.myprior.")
        }
        where_ = id
        name = try text(v.name, "name")
        version = try text(v.version, "version")
        summary = try text(v.description, "description", required: false, identifier: false)
        capabilities = FamilyCapabilities(rawValue: v.capabilities)
        toolchain = try text(v.build_toolchain, "build_toolchain", required: false)
        stdlib = try text(v.build_stdlib, "build_stdlib", required: false)
        self.library = library
        descriptor = d
        table = v
        var lines: [String: UnsafePointer<CChar>] = [:]
        if remote == nil && PluginLibrary.installsCrashGuard {
            for fn in ["create", "destroy", "layout", "log_prob", "log_prob_vjp", "sample", "sample_vjp", "center", "center_vjp", "kl", "kl_vjp"] {
                lines[fn] = UnsafePointer(strdup("flipout: the process died inside a plugin call: plugin \(file), family \(id), function \(fn)")!)
            }
        }
        crashLines = lines

        guard v.parameter_count > 0 else { throw PluginLoadError(.invalidDescriptor, file: file, "\(id): declares no parameters.") }
        guard v.parameter_count <= UInt32(HostLimits.parameters), v.hyperparameter_count <= UInt32(HostLimits.parameters) else {
            throw PluginLoadError(.invalidDescriptor, file: file, "\(id): declares \(v.parameter_count) parameters and \(v.hyperparameter_count) hyperparameters; this host accepts at most \(HostLimits.parameters) of each.")
        }
        guard let ps = v.parameters else { throw PluginLoadError(.invalidDescriptor, file: file, "\(id): parameters is NULL but parameter_count is \(v.parameter_count).") }
        var params: [ParameterInfo] = []
        let roles = read.parameterRoles
        for i in 0..<Int(v.parameter_count) {
            let element = Versioned<flipout_parameter_desc>.element(UnsafeRawPointer(ps), i)
            guard let r = Versioned<flipout_parameter_desc>(element), r.size == flipout_parameter_desc.minimumSize else {
                throw PluginLoadError(.structTooSmall, file: file, "\(id): flipout_parameter_desc \(i) is \(Versioned<flipout_parameter_desc>.declaredSize(element)) bytes; it is exactly \(flipout_parameter_desc.minimumSize) in every minor of ABI 1 (structs in arrays never grow).")
            }
            let p = r.value
            guard let t = ParameterTransform(rawValue: p.transform) else {
                throw PluginLoadError(.invalidDescriptor, file: file, "\(id): parameter \(i) has unknown transform \(p.transform).")
            }
            let pname = try text(p.name, "parameters[\(i)].name")
            guard p.default_value.isFinite, t.accepts(p.default_value), p.init_jitter.isFinite, p.init_jitter >= 0,
                  p.prior_value.isNaN || (p.prior_value.isFinite && t.accepts(p.prior_value)) else {
                throw PluginLoadError(.invalidDescriptor, file: file, "\(id): parameter \(pname) declares default_value \(p.default_value), init_jitter \(p.init_jitter), prior_value \(p.prior_value); the default and prior value must be finite and inside the \(t) transform's range (prior_value NaN means \"use the default\"), the jitter finite and >= 0.")
            }
            let role = roles?[i] ?? (pname == "loc" && t == .identity ? .location : .unspecified)
            guard role != .location || t == .identity else {
                throw PluginLoadError(.invalidDescriptor, file: file, "\(id): parameter \(pname) has role location but transform \(t); a location is unconstrained (identity).")
            }
            params.append(ParameterInfo(name: pname, description: try text(p.description, "parameters[\(i)].description", required: false, identifier: false),
                                        transform: t, defaultValue: p.default_value, initJitter: p.init_jitter,
                                        priorValue: p.prior_value.isNaN ? p.default_value : p.prior_value,
                                        countHyperparameter: try p.count_hyperparameter.map { try text($0, "parameters[\(i)].count_hyperparameter") },
                                        role: role))
        }
        parameters = params
        var hypers: [HyperparameterInfo] = []
        if v.hyperparameter_count > 0 {
            guard let hs = v.hyperparameters else { throw PluginLoadError(.invalidDescriptor, file: file, "\(id): hyperparameters is NULL but hyperparameter_count is \(v.hyperparameter_count).") }
            for i in 0..<Int(v.hyperparameter_count) {
                let element = Versioned<flipout_hyperparameter_desc>.element(UnsafeRawPointer(hs), i)
                guard let r = Versioned<flipout_hyperparameter_desc>(element), r.size == flipout_hyperparameter_desc.minimumSize else {
                    throw PluginLoadError(.structTooSmall, file: file, "\(id): flipout_hyperparameter_desc \(i) is \(Versioned<flipout_hyperparameter_desc>.declaredSize(element)) bytes; it is exactly \(flipout_hyperparameter_desc.minimumSize) in every minor of ABI 1 (structs in arrays never grow).")
                }
                let h = r.value
                hypers.append(HyperparameterInfo(name: try text(h.name, "hyperparameters[\(i)].name"), description: try text(h.description, "hyperparameters[\(i)].description", required: false, identifier: false),
                                                 defaultValue: h.default_value, minimum: h.minimum, maximum: h.maximum, isInteger: h.is_integer != 0))
            }
        }
        hyperparameters = hypers
        for p in params { if let c = p.countHyperparameter {
            guard let h = hypers.first(where: { $0.name == c && $0.isInteger }) else {
                throw PluginLoadError(.invalidDescriptor, file: file, "\(id): parameter \(p.name) repeats by \"\(c)\", which is not an integer hyperparameter.")
            }
            guard h.defaultValue >= 1, h.defaultValue <= Double(HostLimits.slots) else {
                throw PluginLoadError(.invalidDescriptor, file: file, "\(id): count hyperparameter \(c) defaults to \(h.defaultValue); a count must be in 1...\(HostLimits.slots).")
            }
        } }
        var kls: [String] = []
        if var k = v.kl_families {
            while let s = k.pointee {
                guard kls.count < HostLimits.families else { throw PluginLoadError(.invalidDescriptor, file: file, "\(id): kl_families lists more than \(HostLimits.families) families (is it NULL-terminated?).") }
                kls.append(try text(s, "kl_families[\(kls.count)]")); k += 1
            }
        }
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
        if capabilities.contains(.gaussian) {
            guard params.count == 2, params[0].role == .location, params[1].role == .scale, capabilities.contains(.sample) else {
                throw PluginLoadError(.invalidDescriptor, file: file, "\(id): declares FLIPOUT_CAP_GAUSSIAN, which promises a samplable Normal(loc, scale) with parameter roles (location, scale); it has \(params.map { "\($0.name) (\($0.role))" }.joined(separator: ", ")).")
            }
        }
        // The declared capabilities against the layout of an instance with default hyperparameters.
        _ = try instantiate()
    }

    /// Runs an in-process call with the crash guard naming this family and `function`.
    func guarded<R>(_ function: String, _ body: () throws -> R) rethrows -> R {
        guard let line = crashLines[function] else { return try body() }
        let previous = flipout_crash_guard_enter(line)
        defer { flipout_crash_guard_leave(previous) }
        return try body()
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
            if parameters.contains(where: { $0.countHyperparameter == h.name }), !(v >= 1 && v <= Double(HostLimits.slots)) {
                throw PluginLoadError(.badHyperparameter, file: file, "\(id): hyperparameter \(h.name) = \(v) counts parameter slots, so it must be in 1...\(HostLimits.slots).")
            }
            return v
        }
    }

    /// Create an instance with hyperparameters by name (missing ones take their defaults).
    public func instantiate(_ hyperparameters: [String: Double] = [:]) throws -> Distribution {
        try Distribution(family: self, hyperparameters: try resolveHyperparameters(hyperparameters))
    }
}
