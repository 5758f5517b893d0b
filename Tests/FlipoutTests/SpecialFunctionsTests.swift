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
}
