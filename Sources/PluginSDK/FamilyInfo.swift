// What a family declares about itself: identity, parameters, hyperparameters, capabilities.
// The ABI's constants (Capabilities, ParameterTransform, ParameterRole, Status) come from FlipoutABI,
// the one module the host shares; `scripts/build-plugin` compiles its files into the plugin.
#if canImport(FlipoutABI)
@_exported import FlipoutABI
#endif

/// The transform from the unconstrained value the optimizer stores to the constrained parameter.
public typealias Transform = ParameterTransform

public struct ParameterSpec {
    public var name: String
    public var description: String
    public var transform: Transform
    public var defaultValue: Float
    public var initJitter: Float
    public var countHyperparameter: String?
    /// The value as a prior when the user sets none; nil: `defaultValue`.
    public var priorValue: Float?
    /// What the parameter means to the host (`.location` gets He-normal initialisation).
    public var role: ParameterRole
    /// - role: nil infers `.location` for a parameter named "loc" with identity transform (the
    ///   rule of ABI 1.0) and `.unspecified` otherwise; say `role: .location` for any other name.
    public init(_ name: String, _ description: String, transform: Transform = .identity,
                default defaultValue: Float, initJitter: Float = 0, countHyperparameter: String? = nil, prior priorValue: Float? = nil,
                role: ParameterRole? = nil) {
        self.name = name; self.description = description; self.transform = transform
        self.defaultValue = defaultValue; self.initJitter = initJitter
        self.countHyperparameter = countHyperparameter
        self.priorValue = priorValue
        self.role = role ?? (name == "loc" && transform == .identity ? .location : .unspecified)
    }
}

public struct HyperparameterSpec {
    public var name: String
    public var description: String
    public var defaultValue: Double
    public var minimum: Double
    public var maximum: Double
    public var isInteger: Bool
    public init(_ name: String, _ description: String, default defaultValue: Double,
                minimum: Double = -.infinity, maximum: Double = .infinity, isInteger: Bool = false) {
        self.name = name; self.description = description; self.defaultValue = defaultValue
        self.minimum = minimum; self.maximum = maximum; self.isInteger = isInteger
    }
}

/// A posterior family this prior has an analytic KL against, with that family's slot count.
public struct KLFamily {
    public var id: String
    public var parameterSlots: Int
    public init(_ id: String, parameterSlots: Int) { self.id = id; self.parameterSlots = parameterSlots }
}

public struct FamilyInfo {
    public var id: String
    public var name: String
    public var version: String
    public var description: String
    public var capabilities: Capabilities
    public var parameters: [ParameterSpec]
    public var hyperparameters: [HyperparameterSpec]
    public var klFamilies: [KLFamily]
    public init(id: String, name: String, version: String, description: String,
                capabilities: Capabilities, parameters: [ParameterSpec],
                hyperparameters: [HyperparameterSpec] = [], klFamilies: [KLFamily] = []) {
        self.id = id; self.name = name; self.version = version; self.description = description
        self.capabilities = capabilities; self.parameters = parameters
        self.hyperparameters = hyperparameters; self.klFamilies = klFamilies
    }
}
