// The protocol a plugin author implements: a scalar distribution family written as plain Swift math.

/// Why a call failed; the SDK turns each case into the matching ABI status code and message.
public enum PluginError: Error {
    case invalidArgument(String)
    case unsupported(String)
    case domain(String)
    case `internal`(String)
}

/// The parameters of one scalar, constrained (a scale is > 0), in the family's slot order.
public struct Params {
    @usableFromInline let base: UnsafeMutablePointer<Double>
    public let count: Int
    @inlinable public subscript(i: Int) -> Double { base[i] }
    public init(base: UnsafeMutablePointer<Double>, count: Int) { self.base = base; self.count = count }
}

/// Partial derivatives with respect to the parameters of one scalar, in slot order. Starts at zero;
/// the author sets (or adds to) each partial derivative. The SDK scales by the upstream gradient.
public struct ParamGradient {
    @usableFromInline let base: UnsafeMutablePointer<Double>
    public let count: Int
    @inlinable public subscript(i: Int) -> Double {
        get { base[i] }
        nonmutating set { base[i] = newValue }
    }
    public init(base: UnsafeMutablePointer<Double>, count: Int) { self.base = base; self.count = count }
}

/// A family of distributions over scalars, exported through the plugin ABI with `PluginExport`.
///
/// Only `family`, `init(hyperparameters:)`, `logProb` and `logProbGradient` are required; a family
/// that declares `.sample` also implements `sample`, `sampleGradient`, `center`, `centerGradient`;
/// a family that lists `klFamilies` implements `kl` and `klGradient`. All math is in Double;
/// the SDK converts from and to the ABI's Float buffers. Methods must be pure: the host calls them
/// concurrently.
public protocol ScalarDistribution {
    /// The family's description: id, parameters, hyperparameters, capabilities.
    static var family: FamilyInfo { get }
    /// An instance for these hyperparameter values (declared order, range-checked by the host).
    init(hyperparameters: [Double]) throws

    /// Number of parameter slots (more than `family.parameters.count` when a parameter repeats).
    var parameterSlotCount: Int { get }
    /// Standard normals one sample of one scalar consumes.
    var normalsPerScalar: Int { get }
    /// Uniforms in (0, 1) one sample of one scalar consumes.
    var uniformsPerScalar: Int { get }

    /// Throw `.domain` if these parameters are outside the parameter space.
    func validate(_ p: Params) throws

    func logProb(_ x: Double, _ p: Params) -> Double
    /// Returns d logProb/dx and sets d logProb/dθ in `dp`.
    func logProbGradient(_ x: Double, _ p: Params, _ dp: ParamGradient) -> Double

    /// A reparameterized sample from noise the host provides.
    func sample(_ p: Params, normals: UnsafePointer<Float>, uniforms: UnsafePointer<Float>) -> Double
    /// Sets dx/dθ in `dp` for the sample `x` drawn with this noise.
    func sampleGradient(_ x: Double, _ p: Params, normals: UnsafePointer<Float>, uniforms: UnsafePointer<Float>, _ dp: ParamGradient)

    /// The center Flipout perturbs around (location for symmetric families, else the mean).
    func center(_ p: Params) -> Double
    /// Sets d center/dθ in `dp`.
    func centerGradient(_ p: Params, _ dp: ParamGradient)

    /// KL(q || self) for a posterior of family `qFamily` (listed in `family.klFamilies`).
    func kl(qFamily: String, q: Params, p: Params) throws -> Double
    /// Sets dKL/dq in `dq` and dKL/dp in `dp`.
    func klGradient(qFamily: String, q: Params, p: Params, dq: ParamGradient, dp: ParamGradient) throws
}

extension ScalarDistribution {
    public var parameterSlotCount: Int { Self.family.parameters.count }
    public var normalsPerScalar: Int { Self.family.capabilities.contains(.sample) ? 1 : 0 }
    public var uniformsPerScalar: Int { 0 }
    public func validate(_ p: Params) throws {}

    public func sample(_ p: Params, normals: UnsafePointer<Float>, uniforms: UnsafePointer<Float>) -> Double { .nan }
    public func sampleGradient(_ x: Double, _ p: Params, normals: UnsafePointer<Float>, uniforms: UnsafePointer<Float>, _ dp: ParamGradient) {}
    public func center(_ p: Params) -> Double { .nan }
    public func centerGradient(_ p: Params, _ dp: ParamGradient) {}
    public func kl(qFamily: String, q: Params, p: Params) throws -> Double {
        throw PluginError.unsupported("no analytic KL(\(qFamily) || \(Self.family.id))")
    }
    public func klGradient(qFamily: String, q: Params, p: Params, dq: ParamGradient, dp: ParamGradient) throws {
        throw PluginError.unsupported("no analytic KL(\(qFamily) || \(Self.family.id))")
    }
}
