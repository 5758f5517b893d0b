// Gradients for free: write logProb (and for a posterior sample and center) once as differentiable
// Swift; the SDK derives log_prob_vjp, sample_vjp and center_vjp by reverse-mode automatic
// differentiation (Swift's `_Differentiation`).
import _Differentiation

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
///     func logProb(_ x: Double, _ theta: [Double]) -> Double
///
/// with `theta` the constrained parameters in slot order, and the SDK provides `logProb(_:_:)` on
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
    func logProb(_ x: Double, _ theta: [Double]) -> Double
}

/// A posterior family whose sample and center are differentiable Swift as well: implement
///
///     @differentiable(reverse)
///     func sample(_ noise: Noise, _ theta: [Double]) -> Double
///     @differentiable(reverse)
///     func center(_ theta: [Double]) -> Double
///
/// and the SDK derives `sampleGradient` (dx/dθ, the explicit reparameterization gradient) and
/// `centerGradient`.
public protocol DifferentiablePosterior: DifferentiablePrior {
    @differentiable(reverse)
    func sample(_ noise: Noise, _ theta: [Double]) -> Double
    @differentiable(reverse)
    func center(_ theta: [Double]) -> Double
}

extension Params {
    /// The values as an array (what differentiable code takes).
    @inlinable public var values: [Double] { Array(UnsafeBufferPointer(start: base, count: count)) }
}

extension ParamGradient {
    /// Sets every partial from a tangent (an empty tangent means all zero).
    func set(_ t: Array<Double>.TangentVector) {
        let b = t.base
        for k in 0..<count { self[k] = k < b.count ? b[k] : 0 }
    }
}

extension DifferentiablePrior {
    @inlinable public func logProb(_ x: Double, _ p: Params) -> Double { logProb(x, p.values) }

    /// d log p / dx, and d log p / dθ into `dp`, by reverse-mode autodiff of `logProb(_:_:)`.
    public func logProbGradient(_ x: Double, _ p: Params, _ dp: ParamGradient) -> Double {
        let (_, pullback) = valueWithPullback(at: x, p.values) { x, theta in self.logProb(x, theta) }
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
        sample(noise(normals, uniforms), p.values)
    }

    /// dx/dθ into `dp` by reverse-mode autodiff of `sample(_:_:)` with the noise held fixed.
    public func sampleGradient(_ x: Double, _ p: Params, normals: UnsafePointer<Float>, uniforms: UnsafePointer<Float>, _ dp: ParamGradient) {
        let n = noise(normals, uniforms)
        dp.set(gradient(at: p.values) { theta in self.sample(n, theta) })
    }

    @inlinable public func center(_ p: Params) -> Double { center(p.values) }

    public func centerGradient(_ p: Params, _ dp: ParamGradient) {
        dp.set(gradient(at: p.values) { theta in self.center(theta) })
    }
}
