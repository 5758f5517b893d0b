// Special functions plugins share: log-gamma, digamma, trigamma, the normal CDF, softplus, log-sum-exp,
// the regularized incomplete gamma function, its inverse and its derivative in the shape.
#if canImport(Glibc)
import Glibc
#endif

public enum Special {
    public static let logSqrt2Pi = 0.918_938_533_204_672_7
    public static let sqrt2 = 1.414_213_562_373_095_1

    @inlinable public static func lgamma(_ x: Double) -> Double { Glibc.lgamma(x) }

    /// digamma(x) for x > 0: recurrence up to x >= 10, then the asymptotic series (absolute error ~1e-14).
    public static func digamma(_ x: Double) -> Double {
        var x = x, result = 0.0
        while x < 10 { result -= 1 / x; x += 1 }
        let f = 1 / (x * x)
        let series = f * (-1.0 / 12 + f * (1.0 / 120 + f * (-1.0 / 252 + f * (1.0 / 240 + f * (-1.0 / 132)))))
        return result + Glibc.log(x) - 0.5 / x + series
    }

    /// trigamma(x) for x > 0: recurrence up to x >= 10, then the asymptotic series (absolute error ~1e-13).
    public static func trigamma(_ x: Double) -> Double {
        var x = x, result = 0.0
        while x < 10 { result += 1 / (x * x); x += 1 }
        let f = 1 / (x * x)
        let series = 1 / x + f / 2 + f / x * (1.0 / 6 + f * (-1.0 / 30 + f * (1.0 / 42 + f * (-1.0 / 30))))
        return result + series
    }

    /// Standard normal CDF.
    @inlinable public static func normalCDF(_ z: Double) -> Double { 0.5 * Glibc.erfc(-z / sqrt2) }
    /// Standard normal density.
    @inlinable public static func normalPDF(_ z: Double) -> Double { Glibc.exp(-0.5 * z * z - logSqrt2Pi) }

    /// Inverse of the standard normal CDF (Acklam's rational approximation, one Newton step).
    public static func normalQuantile(_ p: Double) -> Double {
        let a = [-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00]
        let b = [-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01, -1.328068155288572e+01]
        let c = [-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00]
        let d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00]
        var x: Double
        if p < 0.02425 {
            let q = Glibc.sqrt(-2 * Glibc.log(p))
            x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
        } else if p > 1 - 0.02425 {
            let q = Glibc.sqrt(-2 * Glibc.log(1 - p))
            x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
        } else {
            let q = p - 0.5, r = q * q
            x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
        }
        let e = normalCDF(x) - p
        let u = e * Glibc.exp(0.5 * x * x + logSqrt2Pi)
        x -= u / (1 + x * u / 2)
        return x
    }

    /// log(1 + exp(x)) without overflow.
    @inlinable public static func softplus(_ x: Double) -> Double {
        x > 30 ? x : (x < -30 ? Glibc.exp(x) : Glibc.log1p(Glibc.exp(x)))
    }

    /// log(sum(exp(values))) without overflow.
    public static func logSumExp(_ values: UnsafeBufferPointer<Double>) -> Double {
        guard let m = values.max(), m > -.infinity else { return -.infinity }
        var s = 0.0
        for v in values { s += Glibc.exp(v - m) }
        return m + Glibc.log(s)
    }

    // MARK: Regularized incomplete gamma function

    /// log of the standard Gamma(a, 1) density at x > 0: (a - 1) log x - x - lgamma(a).
    @inlinable public static func logGammaDensity(_ a: Double, _ x: Double) -> Double {
        (a - 1) * Glibc.log(x) - x - lgamma(a)
    }

    /// Log of the Beta function, lgamma(a) + lgamma(b) - lgamma(a + b).
    @inlinable public static func logBeta(_ a: Double, _ b: Double) -> Double {
        lgamma(a) + lgamma(b) - lgamma(a + b)
    }

    /// The regularized lower and upper incomplete gamma functions (P(a, x), Q(a, x) = 1 - P) for
    /// a > 0, each computed directly where it is the small one: the power series of P for
    /// x < a + 1, the Legendre continued fraction of Q (modified Lentz) otherwise
    /// (Abramowitz & Stegun 6.5.29 and 6.5.31). NaN for a <= 0 or NaN inputs.
    public static func regularizedGamma(_ a: Double, _ x: Double) -> (p: Double, q: Double) {
        guard a > 0, a.isFinite, !x.isNaN else { return (.nan, .nan) }
        if x <= 0 { return (0, 1) }
        if x == .infinity { return (1, 0) }
        let logPrefactor = a * Glibc.log(x) - x - lgamma(a)
        if x < a + 1 {
            var term = 1 / a, sum = term, n = a
            for _ in 0..<100_000 {
                n += 1
                term *= x / n
                sum += term
                if Swift.abs(term) < Swift.abs(sum) * 1e-17 { break }
            }
            let p = Swift.min(1, sum * Glibc.exp(logPrefactor))
            return (p, 1 - p)
        }
        let tiny = 1e-300
        var b = x + 1 - a, c = 1 / tiny, d = 1 / b, h = d
        for i in 1..<100_000 {
            let an = -Double(i) * (Double(i) - a)
            b += 2
            d = an * d + b
            if Swift.abs(d) < tiny { d = tiny }
            c = b + an / c
            if Swift.abs(c) < tiny { c = tiny }
            d = 1 / d
            let delta = d * c
            h *= delta
            if Swift.abs(delta - 1) < 1e-16 { break }
        }
        let q = Swift.min(1, Glibc.exp(logPrefactor) * h)
        return (1 - q, q)
    }

    /// P(a, x), the CDF of the standard Gamma(a, 1) distribution at x.
    @inlinable public static func gammaP(_ a: Double, _ x: Double) -> Double { regularizedGamma(a, x).p }

    /// dP(a, x)/da by a central difference in a with step h = 1e-4 a, in Double. Uses the smaller of
    /// P and Q (dP/da = -dQ/da) so the derivative keeps its relative accuracy in the upper tail.
    public static func gammaPDerivativeA(_ a: Double, _ x: Double) -> Double {
        if x <= 0 || x == .infinity { return 0 }
        let h = 1e-4 * a
        let plus = regularizedGamma(a + h, x), minus = regularizedGamma(a - h, x)
        if x < a + 1 { return (plus.p - minus.p) / (2 * h) }
        return -(plus.q - minus.q) / (2 * h)
    }

    /// The inverse of P(a, .): the x >= 0 with P(a, x) = p, for a > 0 and p in [0, 1].
    /// Starts from the Wilson-Hilferty approximation (a > 1) or the small-x power law
    /// x ~ (p Gamma(a + 1))^(1/a) (a <= 1), then Halley steps kept inside a bracket [lo, hi]
    /// that every evaluation tightens; a step leaving the bracket is replaced by bisection
    /// (geometric when the bracket spans orders of magnitude). Relative accuracy about 1e-14.
    /// NaN for a <= 0 or p outside [0, 1].
    public static func gammaPInverse(_ a: Double, _ p: Double) -> Double {
        guard a > 0, a.isFinite, p >= 0, p <= 1 else { return .nan }
        if p == 0 { return 0 }
        if p == 1 { return .infinity }
        let lgammaA = lgamma(a)
        var x: Double
        if a > 1 {
            let z = normalQuantile(p)
            let c = 1 - 1 / (9 * a) + z / (3 * Glibc.sqrt(a))
            x = Swift.max(1e-3 * a, a * c * c * c)
        } else {
            let logX = (Glibc.log(p) + lgamma(a + 1)) / a
            x = logX < 0 ? Swift.max(Glibc.exp(logX), 1e-300) : 1 - Glibc.log1p(-p)
        }
        var lo = 0.0, hi = Double.infinity
        for _ in 0..<300 {
            let (pp, qq) = regularizedGamma(a, x)
            // Residual in whichever tail keeps precision.
            let err = p < 0.5 ? pp - p : (1 - p) - qq
            if err < 0 { lo = x } else if err > 0 { hi = x } else { return x }
            let logDensity = (a - 1) * Glibc.log(x) - x - lgammaA
            let density = Glibc.exp(logDensity)
            var next = x
            if density > 0 && density.isFinite {
                let u = err / density
                // Halley: f''/f' = (a - 1)/x - 1 for the Gamma density.
                let correction = Swift.max(-0.5, Swift.min(0.5, 0.5 * u * ((a - 1) / x - 1)))
                next = x - u / (1 - correction)
            } else {
                next = .nan
            }
            if !(next > lo && next < hi) {
                if hi == .infinity { next = Swift.max(2 * x, 1) }
                else if lo > 0 && hi / lo > 4 { next = Glibc.sqrt(lo * hi) }
                else if lo == 0 { next = hi / 16 }
                else { next = 0.5 * (lo + hi) }
            }
            if Swift.abs(next - x) <= 1e-15 * x || (hi.isFinite && hi - lo <= 1e-15 * hi) { return next }
            x = next
        }
        return x
    }

    /// dz/da for a standard Gamma(a, 1) sample z by implicit reparameterization (Figurnov et al. 2018):
    /// -(dP/da)(a, z) / p(z; a). 0 where z is 0 or infinite or the density underflows.
    public static func gammaSampleDerivativeA(_ a: Double, _ z: Double) -> Double {
        guard z > 0, z.isFinite else { return 0 }
        let density = Glibc.exp(logGammaDensity(a, z))
        guard density > 0 else { return 0 }
        return -gammaPDerivativeA(a, z) / density
    }
}
