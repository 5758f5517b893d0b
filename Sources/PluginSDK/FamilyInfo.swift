// What a family declares about itself: identity, parameters, hyperparameters, capabilities.

public enum Transform: Int32 {
    case identity = 0, softplus = 1, exp = 2, sigmoid = 3
}

public struct Capabilities: OptionSet, Sendable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let sample = Capabilities(rawValue: 1 << 0)
    public static let symmetric = Capabilities(rawValue: 1 << 1)
    public static let implicitReparameterization = Capabilities(rawValue: 1 << 2)
    public static let uniformNoise = Capabilities(rawValue: 1 << 3)
    public static let positiveSupport = Capabilities(rawValue: 1 << 4)
}

public struct ParameterSpec {
    public var name: String
    public var description: String
    public var transform: Transform
    public var defaultValue: Float
    public var initJitter: Float
    public var countHyperparameter: String?
    /// The value as a prior when the user sets none; nil: `defaultValue`.
    public var priorValue: Float?
    public init(_ name: String, _ description: String, transform: Transform = .identity,
                default defaultValue: Float, initJitter: Float = 0, countHyperparameter: String? = nil, prior priorValue: Float? = nil) {
        self.name = name; self.description = description; self.transform = transform
        self.defaultValue = defaultValue; self.initJitter = initJitter
        self.countHyperparameter = countHyperparameter
        self.priorValue = priorValue
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
