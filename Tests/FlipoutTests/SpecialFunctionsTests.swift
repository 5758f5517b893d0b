// The SDK's special functions against known values, closed forms and numerical integration.
import Testing
import Foundation
import PluginSDK
import TestSupport

/// Independent references for the incomplete gamma function.
enum GammaReference {
    /// P(n, x) for integer n: 1 - exp(-x) sum_{k<n} x^k / k! (Abramowitz & Stegun 6.5.13, Erlang CDF).
    static func pInteger(_ n: Int, _ x: Double) -> Double {
        var term = 1.0, sum = 1.0
        for k in 1..<max(n, 1) { term *= x / Double(k); sum += term }
        return 1 - exp(-x) * sum
    }
    /// P(a, x) by composite Simpson integration of the density after a substitution that makes the
    /// integrand smooth: t = v^(1/a) for a < 1 (integrand (1/a) exp(-v^(1/a)) on [0, x^a]), t = v^2 for
    /// a >= 1 (integrand 2 v^(2a-1) exp(-v^2) on [0, sqrt x]), divided by Gamma(a).
    static func pSimpson(_ a: Double, _ x: Double, intervals: Int = 20000) -> Double {
        let upper = a < 1 ? pow(x, a) : x.squareRoot(), h = upper / Double(intervals)
        func f(_ v: Double) -> Double { a < 1 ? exp(-pow(v, 1 / a)) / a : 2 * pow(v, 2 * a - 1) * exp(-v * v) }
        var s = f(0) + f(upper)
        for i in 1..<intervals { s += f(Double(i) * h) * (i % 2 == 1 ? 4 : 2) }
        return s * h / 3 / exp(lgamma(a))
    }
    /// digamma as the central difference of Foundation's lgamma (independent of the SDK's series).
    static func digamma(_ x: Double) -> Double { (lgamma(x + 1e-5) - lgamma(x - 1e-5)) / 2e-5 }
}

/// d log z/da of the standard Gamma(a, 1) quantile z = P^-1(a, u) at fixed u, by quadrature:
/// independent of the SDK's series and continued fraction. With dP/da = E[log T; T < z] Q - P
/// E[log T; T > z] (digamma cancels; any shift of log T too, so log(T/z)), t = z e^y and
/// g(y) = p(t)/p(z) (t/z) = exp(a y - z (e^y - 1)), the moments A_k = int_{-inf}^0 g y^k dy and
/// B_k = int_0^inf g y^k dy give P = A0/(A0 + B0) and
///     d log z/da = -(dP/da) / (z p(z)) = (A0 B1 - B0 A1) / (A0 + B0),
/// a sum of positive terms (A1 < 0 < B1). g is log-concave: each side is integrated by adaptive
/// 20-point Gauss-Legendre (nodes by Newton on P_20) to where it falls 50 nats below its maximum.
/// Agrees with mpmath's derivative of its incomplete gamma function to about 1e-13.
enum GammaQuantileReference {
    static let gaussLegendre: (nodes: [Double], weights: [Double]) = {
        let n = 20
        var nodes: [Double] = [], weights: [Double] = []
        for i in 1...n {
            var x = cos(Double.pi * (Double(i) - 0.25) / (Double(n) + 0.5))
            func legendre(_ x: Double) -> (p: Double, dp: Double) {
                var p0 = 1.0, p1 = x
                for k in 2...n { let pk = ((2 * Double(k) - 1) * x * p1 - (Double(k) - 1) * p0) / Double(k); p0 = p1; p1 = pk }
                return (p1, Double(n) * (x * p1 - p0) / (x * x - 1))
            }
            for _ in 0..<100 {
                let (p, dp) = legendre(x)
                x -= p / dp
                if abs(p / dp) < 1e-16 { break }
            }
            let dp = legendre(x).dp
            nodes.append(x); weights.append(2 / ((1 - x * x) * dp * dp))
        }
        return (nodes, weights)
    }()

    static func gauss(_ f: (Double) -> Double, _ lo: Double, _ hi: Double) -> Double {
        let c = (lo + hi) / 2, r = (hi - lo) / 2
        var s = 0.0
        for (x, w) in zip(gaussLegendre.nodes, gaussLegendre.weights) { s += w * f(c + r * x) }
        return s * r
    }

    /// The integral of a one-signed f over [lo, hi]: each panel is halved until the halves agree
    /// with it to 1e-14 of a first estimate of the whole (64 panels); at most 40 levels and 20,000
    /// panels; NaN if f is not finite somewhere.
    static func adaptive(_ f: (Double) -> Double, _ lo: Double, _ hi: Double) -> Double {
        let rough = (0..<64).reduce(0.0) { s, i in s + gauss(f, lo + (hi - lo) * Double(i) / 64, lo + (hi - lo) * Double(i + 1) / 64) }
        let tolerance = 1e-14 * abs(rough)
        var budget = 20_000
        func panel(_ lo: Double, _ hi: Double, _ whole: Double, _ depth: Int) -> Double {
            let mid = (lo + hi) / 2, left = gauss(f, lo, mid), right = gauss(f, mid, hi)
            budget -= 1
            guard left.isFinite && right.isFinite else { return .nan }
            if abs(whole - (left + right)) <= tolerance || depth == 0 || budget <= 0 { return left + right }
            return panel(lo, mid, left, depth - 1) + panel(mid, hi, right, depth - 1)
        }
        return panel(lo, hi, gauss(f, lo, hi), 40)
    }

    static func logDerivative(_ a: Double, logZ: Double) -> Double {
        // With the mode m = log(a / z) and s = y - m: log g = a (phi(-m) - phi(s)), phi(s) = e^s - 1 - s
        // (a Taylor series near 0): no cancellation between a y and z e^y, and z may underflow.
        func phi(_ s: Double) -> Double {
            guard abs(s) < 0.05 else { return expm1(s) - s }
            var term = s * s / 2, sum = term
            for k in 3...9 { term *= s / Double(k); sum += term }
            return sum
        }
        let mode = log(a) - logZ, width = 1 / a.squareRoot(), peak = a * phi(-mode)
        func logG(_ y: Double) -> Double { peak - a * phi(y - mode) }
        /// Where g has fallen 50 nats below its maximum on the side away from 0, starting at `from`.
        func cut(_ from: Double, _ direction: Double) -> Double {
            var d = width
            while logG(from + direction * d) > logG(from) - 50 && d < 1e6 { d *= 2 }
            return from + direction * d
        }
        let lo = cut(min(mode, 0), -1), hi = cut(max(mode, 0), 1)
        let a0 = adaptive({ exp(logG($0)) }, lo, 0), a1 = adaptive({ $0 * exp(logG($0)) }, lo, 0)
        let b0 = adaptive({ exp(logG($0)) }, 0, hi), b1 = adaptive({ $0 * exp(logG($0)) }, 0, hi)
        return (a0 * b1 - b0 * a1) / (a0 + b0)
    }
}

@Suite struct SpecialFunctionsTests {
    @Test func digammaAndTrigammaKnownValues() {
        let euler = 0.577_215_664_901_532_9
        #expect(abs(Special.digamma(1) + euler) < 1e-12)                           // A&S 6.3.2
        #expect(abs(Special.digamma(0.5) + euler + 2 * log(2)) < 1e-12)            // A&S 6.3.3
        #expect(abs(Special.trigamma(1) - Double.pi * Double.pi / 6) < 1e-12)      // A&S 6.4.2
        #expect(abs(Special.trigamma(0.5) - Double.pi * Double.pi / 2) < 1e-12)    // A&S 6.4.4
        for x in [0.03, 0.7, 2.5, 13.0, 250.0] {
            // Central differences with a step relative to x (truncation error ~ (h/x)^2).
            let h = 1e-4 * x
            let fdLgamma = (lgamma(x + h) - lgamma(x - h)) / (2 * h)
            #expect(isClose(Special.digamma(x), fdLgamma, rtol: 1e-7, atol: 1e-8), "digamma(\(x))")
            let fd = (Special.digamma(x + h) - Special.digamma(x - h)) / (2 * h)
            #expect(isClose(Special.trigamma(x), fd, rtol: 1e-7, atol: 1e-8), "trigamma(\(x))")
        }
    }

    @Test func incompleteGammaMatchesClosedFormsAndIntegration() {
        for n in [1, 2, 5, 30] {
            for x in [0.01, 0.5, 1, 3, 8, 25, 60] {
                let (p, q) = Special.regularizedGamma(Double(n), x)
                let ref = GammaReference.pInteger(n, x)
                #expect(abs(p - ref) < 1e-13, "P(\(n), \(x)) = \(p) vs \(ref)")
                #expect(abs(p + q - 1) < 1e-15)
            }
        }
        for x in [1e-6, 0.1, 0.7, 2.4, 9.0] {
            // P(1/2, x) = erf(sqrt x) (A&S 6.5.17 with 7.1.1).
            #expect(abs(Special.gammaP(0.5, x) - erf(x.squareRoot())) < 1e-14, "P(0.5, \(x))")
        }
        for a in [0.05, 0.3, 2.7, 11.5] {
            for x in [0.02, 0.9, 3.5, 14.0] {
                let ref = GammaReference.pSimpson(a, x)
                #expect(abs(Special.gammaP(a, x) - ref) < 1e-9, "P(\(a), \(x)) = \(Special.gammaP(a, x)) vs \(ref)")
            }
        }
        #expect(Special.gammaP(2, 0) == 0 && Special.gammaP(2, -1) == 0)
        #expect(Special.gammaP(-1, 1).isNaN)
    }

    @Test func inverseIncompleteGammaRoundTrips() {
        for a in [0.05, 0.3, 1, 2, 7.5, 50, 400, 5000] {
            for p in [1e-7, 1e-3, 0.1, 0.5, 0.9, 0.999, 1 - 6e-8] {
                let x = Special.gammaPInverse(a, p)
                let (pp, qq) = Special.regularizedGamma(a, x)
                let err = p < 0.5 ? abs(pp - p) / p : abs(qq - (1 - p)) / (1 - p)
                #expect(x > 0 && err < 1e-9, "a=\(a) p=\(p): x=\(x) relative error \(err)")
            }
        }
        #expect(Special.gammaPInverse(2, 0) == 0)
        #expect(Special.gammaPInverse(2, 1.5).isNaN)
    }

    @Test func shapeDerivativeMatchesIntegratedDerivative() {
        for a in [0.3, 2.0, 9.0] {
            for x in [0.05, 1.0, 4.0, 20.0] {
                let h = 1e-3 * a
                let ref = (GammaReference.pSimpson(a + h, x) - GammaReference.pSimpson(a - h, x)) / (2 * h)
                #expect(isClose(Special.gammaPDerivativeA(a, x), ref, rtol: 1e-5, atol: 1e-7), "dP/da(\(a), \(x))")
            }
        }
    }

    /// Issue 20, must show: the implicit derivative of the Gamma quantile, d log z/da =
    /// -(dP/da)(a, z) / (z p(z)), within 1e-6 relative of quadrature (GammaQuantileReference) from
    /// a = 0.005 to a = 1e6, u from 1e-30 to the largest float below 1 (analytic: about 1e-12; the
    /// central difference it replaces was off by 1.7e-3 at a = 1e6).
    @Test func quantileShapeDerivativeMatchesQuadratureUpToAMillion() {
        var worst = 0.0
        for a in [0.005, 0.3, 1, 2.5, 30, 1e3, 1e5, 1e6] {
            for u in [1e-30, 1e-10, 1e-3, 0.3, 0.5, 0.9, 0.999, 1 - 0x1p-24] {
                let logZ = Special.logGammaPInverse(a, u)
                let got = Special.gammaQuantileLogDerivativeA(a, logZ: logZ)
                let ref = GammaQuantileReference.logDerivative(a, logZ: logZ)
                let rel = abs(got - ref) / abs(ref)
                worst = max(worst, rel)
                #expect(rel < 1e-6, "a=\(a) u=\(u) log z=\(logZ): \(got) vs quadrature \(ref) (relative \(rel))")
            }
        }
        #expect(worst < 1e-6, "worst relative error \(worst)")
    }

    /// The quadrature reference itself against central differences in a of an independent P
    /// (Simpson integration of the density, GammaReference.pSimpson) at moderate shapes, where
    /// those differences hold about 1e-8.
    @Test func quadratureReferenceAgreesWithDifferencesOfIntegratedP() {
        for (a, z) in [(1.0, 0.3), (2.0, 1.7), (0.6, 2.5)] {
            let h = 1e-4 * a
            let dP = (GammaReference.pSimpson(a + h, z, intervals: 200_000) - GammaReference.pSimpson(a - h, z, intervals: 200_000)) / (2 * h)
            let density = exp((a - 1) * log(z) - z - lgamma(a))
            let fd = -dP / (z * density)
            let ref = GammaQuantileReference.logDerivative(a, logZ: log(z))
            #expect(isClose(ref, fd, rtol: 1e-6, atol: 0), "a=\(a) z=\(z): quadrature \(ref) vs Simpson differences \(fd)")
        }
    }

    /// log P^-1(a, u) is finite where the quantile underflows Double (Beta(0.005, 0.005)'s Gammas):
    /// P(a, e^L) = u by the series where e^L is representable, and a L - lgamma(a + 1) = log u (the
    /// leading term of P, exact to O(z)) below that; the two sides of the switch at e^-40 agree.
    @Test func logQuantileHoldsBelowDoubleRange() {
        for a in [0.005, 0.05, 0.3] {
            for u in [1e-30, 1e-7, 0.01, 0.3, 0.8, 0.99] {
                let logZ = Special.logGammaPInverse(a, u)
                #expect(logZ.isFinite, "a=\(a) u=\(u)")
                if logZ > -700 {
                    let p = Special.regularizedGamma(a, exp(logZ)).p
                    #expect(abs(p - u) <= 1e-10 * u, "a=\(a) u=\(u): P(a, e^\(logZ)) = \(p)")
                } else {
                    let logP = a * logZ - lgamma(a + 1)
                    #expect(abs(logP - log(u)) <= 1e-12 * abs(log(u)), "a=\(a) u=\(u): log P = \(logP) vs \(log(u))")
                }
                #expect(Special.gammaQuantileLogDerivativeA(a, logZ: logZ).isFinite)
            }
        }
        // Across the switch to the closed form (z = e^-40 at a = 0.3): continuous to 1e-12 in log z.
        let u = exp(0.3 * -40 - lgamma(1.3))
        let below = Special.logGammaPInverse(0.3, u * (1 - 1e-9)), above = Special.logGammaPInverse(0.3, u * (1 + 1e-9))
        #expect(abs(below - above) < 1e-7 && below < above, "\(below) \(above)")
    }
}
