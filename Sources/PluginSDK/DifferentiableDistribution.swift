// Gradients for free: write logProb (and for a posterior sample and center) once as differentiable
// Swift; the SDK derives log_prob_vjp, sample_vjp and center_vjp by reverse-mode automatic
// differentiation (Swift's `_Differentiation`).
import _Differentiation

/// The constrained parameters of one scalar, in slot order, as a differentiable value: `theta[k]`.
/// Stored inline (no allocation), so derived gradients cost a few times a hand-written one
/// rather than tens of times; at most `Theta.capacity` slots (families with more parameter slots
/// write `logProbGradient` by hand).
public struct Theta: Differentiable, AdditiveArithmetic {
    public static let capacity = 16
    @usableFromInline var v0 = 0.0, v1 = 0.0, v2 = 0.0, v3 = 0.0, v4 = 0.0, v5 = 0.0, v6 = 0.0, v7 = 0.0, v8 = 0.0, v9 = 0.0, v10 = 0.0, v11 = 0.0, v12 = 0.0, v13 = 0.0, v14 = 0.0, v15 = 0.0
    /// How many slots are in use.
    @noDerivative public var count: Int = 0
    public typealias TangentVector = Theta
    @inlinable public init() {}
    @inlinable public init(_ p: Params) {
        count = p.count
        for k in 0..<p.count { self[k] = p[k] }
    }
    @inlinable public init(_ values: [Double]) {
        count = values.count
        for (k, v) in values.enumerated() { self[k] = v }
    }
    @inlinable public static var zero: Theta { Theta() }
    @inlinable public static func + (a: Theta, b: Theta) -> Theta {
        var r = a; r.v0 += b.v0; r.v1 += b.v1; r.v2 += b.v2; r.v3 += b.v3; r.v4 += b.v4; r.v5 += b.v5; r.v6 += b.v6; r.v7 += b.v7; r.v8 += b.v8; r.v9 += b.v9; r.v10 += b.v10; r.v11 += b.v11; r.v12 += b.v12; r.v13 += b.v13; r.v14 += b.v14; r.v15 += b.v15; r.count = Swift.max(a.count, b.count); return r
    }
    @inlinable public static func - (a: Theta, b: Theta) -> Theta {
        var r = a; r.v0 -= b.v0; r.v1 -= b.v1; r.v2 -= b.v2; r.v3 -= b.v3; r.v4 -= b.v4; r.v5 -= b.v5; r.v6 -= b.v6; r.v7 -= b.v7; r.v8 -= b.v8; r.v9 -= b.v9; r.v10 -= b.v10; r.v11 -= b.v11; r.v12 -= b.v12; r.v13 -= b.v13; r.v14 -= b.v14; r.v15 -= b.v15; r.count = Swift.max(a.count, b.count); return r
    }
    @inlinable public mutating func move(by offset: Theta) { self = self + offset }
    @inlinable public subscript(k: Int) -> Double {
        get { switch k { case 0: return v0; case 1: return v1; case 2: return v2; case 3: return v3; case 4: return v4; case 5: return v5; case 6: return v6; case 7: return v7; case 8: return v8; case 9: return v9; case 10: return v10; case 11: return v11; case 12: return v12; case 13: return v13; case 14: return v14; default: return v15 } }
        set { switch k { case 0: v0 = newValue; case 1: v1 = newValue; case 2: v2 = newValue; case 3: v3 = newValue; case 4: v4 = newValue; case 5: v5 = newValue; case 6: v6 = newValue; case 7: v7 = newValue; case 8: v8 = newValue; case 9: v9 = newValue; case 10: v10 = newValue; case 11: v11 = newValue; case 12: v12 = newValue; case 13: v13 = newValue; case 14: v14 = newValue; default: v15 = newValue } }
    }
    @inlinable @derivative(of: subscript(_:))
    public func _vjpSubscript(_ k: Int) -> (value: Double, pullback: (Double) -> Theta) {
        (self[k], { g in var t = Theta(); t[k] = g; return t })
    }
}

/// The noise one scalar's sample reads: its normals and uniforms, as the host drew them.
/// Its tangent is empty: gradients flow to the parameters only.
public struct Noise: Differentiable {
    @noDerivative @usableFromInline let normals: UnsafePointer<Float>
    @noDerivative @usableFromInline let uniforms: UnsafePointer<Float>
    @noDerivative public let normalCount: Int
    @noDerivative public let uniformCount: Int
    /// The j-th standard normal of this scalar.
    @inlinable public func normal(_ j: Int) -> Double { Double(normals[j]) }
    /// The j-th uniform in (0, 1) of this scalar.
    @inlinable public func uniform(_ j: Int) -> Double { Double(uniforms[j]) }
    public init(normals: UnsafePointer<Float>, count normalCount: Int, uniforms: UnsafePointer<Float>, count uniformCount: Int) {
        self.normals = normals; self.uniforms = uniforms; self.normalCount = normalCount; self.uniformCount = uniformCount
    }
}

/// A family whose log density is differentiable Swift: implement
///
///     @differentiable(reverse)
///     func logProb(_ x: Double, _ theta: Theta) -> Double
///
/// with `theta` the constrained parameters in slot order (`theta[0]`, ...), and the SDK provides `logProb(_:_:)` on
/// `Params` and `logProbGradient` (d/dx and every d/dθ_k) by reverse-mode autodiff. Write your
/// own `logProbGradient` to override it where speed matters (a hand-written one wins).
///
/// What the compiler cannot differentiate (a loop whose trip count depends on the data, a C
/// function) gets a custom derivative: `@derivative(of: f)` returning the value and a pullback.
/// `Special.lgamma`, `digamma`, `normalCDF`, `normalPDF`, `softplus`, `logBeta` and
/// `logGammaDensity` carry theirs; Glibc's `log`, `exp`, `log1p`, `sqrt`, `pow`, `erf`, ... are
/// registered by `_Differentiation` itself.
public protocol DifferentiablePrior: ScalarDistribution {
    @differentiable(reverse)
    func logProb(_ x: Double, _ theta: Theta) -> Double
}

/// A posterior family whose sample and center are differentiable Swift as well: implement
///
///     @differentiable(reverse)
///     func sample(_ noise: Noise, _ theta: Theta) -> Double
///     @differentiable(reverse)
///     func center(_ theta: Theta) -> Double
///
/// and the SDK derives `sampleGradient` (dx/dθ, the explicit reparameterization gradient) and
/// `centerGradient`.
public protocol DifferentiablePosterior: DifferentiablePrior {
    @differentiable(reverse)
    func sample(_ noise: Noise, _ theta: Theta) -> Double
    @differentiable(reverse)
    func center(_ theta: Theta) -> Double
}

extension ParamGradient {
    /// Sets every partial from a tangent.
    func set(_ t: Theta) {
        for k in 0..<count { self[k] = t[k] }
    }
}

extension DifferentiablePrior {
    @inlinable public func logProb(_ x: Double, _ p: Params) -> Double { logProb(x, Theta(p)) }

    /// d log p / dx, and d log p / dθ into `dp`, by reverse-mode autodiff of `logProb(_:_:)`.
    public func logProbGradient(_ x: Double, _ p: Params, _ dp: ParamGradient) -> Double {
        let (_, pullback) = valueWithPullback(at: x, Theta(p)) { x, theta in self.logProb(x, theta) }
        let (dx, dtheta) = pullback(1)
        dp.set(dtheta)
        return dx
    }
}

extension DifferentiablePosterior {
    @inlinable func noise(_ normals: UnsafePointer<Float>, _ uniforms: UnsafePointer<Float>) -> Noise {
        Noise(normals: normals, count: normalsPerScalar, uniforms: uniforms, count: uniformsPerScalar)
    }

    @inlinable public func sample(_ p: Params, normals: UnsafePointer<Float>, uniforms: UnsafePointer<Float>) -> Double {
        sample(noise(normals, uniforms), Theta(p))
    }

    /// dx/dθ into `dp` by reverse-mode autodiff of `sample(_:_:)` with the noise held fixed.
    public func sampleGradient(_ x: Double, _ p: Params, normals: UnsafePointer<Float>, uniforms: UnsafePointer<Float>, _ dp: ParamGradient) {
        let n = noise(normals, uniforms)
        dp.set(gradient(at: Theta(p)) { theta in self.sample(n, theta) })
    }

    @inlinable public func center(_ p: Params) -> Double { center(Theta(p)) }

    public func centerGradient(_ p: Params, _ dp: ParamGradient) {
        dp.set(gradient(at: Theta(p)) { theta in self.center(theta) })
    }
}
