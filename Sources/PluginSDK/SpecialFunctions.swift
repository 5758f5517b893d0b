// Special functions plugins share: log-gamma, digamma, trigamma, the normal CDF and quantile, softplus,
// log-sum-exp, the log Gamma density and log Beta (the incomplete gamma function is in IncompleteGamma.swift).
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

    // MARK: Log densities

    /// log of the standard Gamma(a, 1) density at x > 0: (a - 1) log x - x - lgamma(a).
    @inlinable public static func logGammaDensity(_ a: Double, _ x: Double) -> Double {
        (a - 1) * Glibc.log(x) - x - lgamma(a)
    }

    /// Log of the Beta function, lgamma(a) + lgamma(b) - lgamma(a + b).
    @inlinable public static func logBeta(_ a: Double, _ b: Double) -> Double {
        lgamma(a) + lgamma(b) - lgamma(a + b)
    }
}
