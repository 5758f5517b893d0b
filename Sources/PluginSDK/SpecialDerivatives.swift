// Derivatives of the Special functions, so differentiable plugin code can call them: the route for
// anything the compiler cannot differentiate itself (loops with data-dependent trip counts, C calls).
import _Differentiation
#if canImport(Glibc)
import Glibc
#endif

extension Special {
    /// d lgamma(x)/dx = digamma(x).
    @derivative(of: lgamma)
    @inlinable public static func _vjpLgamma(_ x: Double) -> (value: Double, pullback: (Double) -> Double) {
        (lgamma(x), { v in v * digamma(x) })
    }

    /// d digamma(x)/dx = trigamma(x) (digamma's recurrence loop has a data-dependent trip count).
    @derivative(of: digamma)
    @inlinable public static func _vjpDigamma(_ x: Double) -> (value: Double, pullback: (Double) -> Double) {
        (digamma(x), { v in v * trigamma(x) })
    }

    /// d Phi(z)/dz = phi(z).
    @derivative(of: normalCDF)
    @inlinable public static func _vjpNormalCDF(_ z: Double) -> (value: Double, pullback: (Double) -> Double) {
        (normalCDF(z), { v in v * normalPDF(z) })
    }

    /// d phi(z)/dz = -z phi(z).
    @derivative(of: normalPDF)
    @inlinable public static func _vjpNormalPDF(_ z: Double) -> (value: Double, pullback: (Double) -> Double) {
        let p = normalPDF(z)
        return (p, { v in -v * z * p })
    }

    /// d softplus(x)/dx = sigmoid(x).
    @derivative(of: softplus)
    @inlinable public static func _vjpSoftplus(_ x: Double) -> (value: Double, pullback: (Double) -> Double) {
        (softplus(x), { v in v / (1 + Glibc.exp(-x)) })
    }

    /// d log B(a, b)/da = digamma(a) - digamma(a + b), and symmetrically in b.
    @derivative(of: logBeta)
    @inlinable public static func _vjpLogBeta(_ a: Double, _ b: Double) -> (value: Double, pullback: (Double) -> (Double, Double)) {
        let psiAB = digamma(a + b)
        return (logBeta(a, b), { v in (v * (digamma(a) - psiAB), v * (digamma(b) - psiAB)) })
    }

    /// log Gamma(a, 1) density at x: d/da = log x - digamma(a), d/dx = (a - 1)/x - 1.
    @derivative(of: logGammaDensity)
    @inlinable public static func _vjpLogGammaDensity(_ a: Double, _ x: Double) -> (value: Double, pullback: (Double) -> (Double, Double)) {
        (logGammaDensity(a, x), { v in (v * (Glibc.log(x) - digamma(a)), v * ((a - 1) / x - 1)) })
    }
}
