// The Gamma plugin against closed forms, Monte Carlo, a KS test, finite differences and implicit gradients.
import Testing
import Foundation
import Flipout3D
import TestSupport

/// Independent references, written from the textbook formulas (digamma by differencing Foundation's lgamma).
enum GammaDistReference {
    /// Gamma(a, rate r) density, e.g. Johnson, Kotz & Balakrishnan vol. 1, ch. 17.
    static func logPDF(_ x: Double, _ a: Double, _ r: Double) -> Double { a * log(r) + (a - 1) * log(x) - r * x - lgamma(a) }
    /// CDF for a = 2 (Erlang): 1 - exp(-r x)(1 + r x); for a = 1/2: erf(sqrt(r x)).
    static func cdf2(_ x: Double, _ r: Double) -> Double { 1 - exp(-r * x) * (1 + r * x) }
    static func cdfHalf(_ x: Double, _ r: Double) -> Double { erf((r * x).squareRoot()) }
    /// PyTorch torch/distributions/kl.py `_kl_gamma_gamma` (p = Gamma(a, s) the posterior, q = Gamma(k, r)).
    static func klGamma(_ a: Double, _ s: Double, _ k: Double, _ r: Double) -> Double {
        k * log(s / r) + lgamma(k) - lgamma(a) + (a - k) * GammaReference.digamma(a) + (r - s) * (a / s)
    }
    /// Beta entropy, e.g. Wikipedia "Beta distribution" / PyTorch `Beta.entropy`.
    static func betaEntropy(_ al: Double, _ be: Double) -> Double {
        let ab = al + be, d = GammaReference.digamma
        return lgamma(al) + lgamma(be) - lgamma(ab) - (al - 1) * d(al) - (be - 1) * d(be) + (ab - 2) * d(ab)
    }
    /// PyTorch torch/distributions/kl.py `_kl_beta_gamma`.
    static func klBeta(_ al: Double, _ be: Double, _ k: Double, _ r: Double) -> Double {
        let d = GammaReference.digamma
        return -betaEntropy(al, be) + lgamma(k) - k * log(r) - (k - 1) * (d(al) - d(al + be)) + r * al / (al + be)
    }
}

@Suite struct GammaPluginTests {
    let gamma: PluginHarness
    let beta: PluginHarness
    init() throws {
        gamma = try PluginHarness.bundled("FlipoutGamma", "org.flipout3d.gamma")
        beta = try PluginHarness.bundled("FlipoutBeta", "org.flipout3d.beta")
    }

    let xs: [Float] = [0.01, 0.3, 1, 2.5, 7]
    let conc: [Float] = [0.4, 2, 1, 5.5, 3]
    let rates: [Float] = [1, 20, 0.5, 2, 1.3]

    @Test func logProbMatchesClosedForm() throws {
        let lp = try gamma.logProb(xs, [conc, rates])
        for i in xs.indices {
            let ref = GammaDistReference.logPDF(Double(xs[i]), Double(conc[i]), Double(rates[i]))
            #expect(isClose(Double(lp[i]), ref, rtol: 1e-6, atol: 1e-5), "i=\(i): \(lp[i]) vs \(ref)")
        }
        let outside = try gamma.logProb([0, -1], [[2], [1]])
        #expect(outside == [-.infinity, -.infinity])
    }

    @Test func implicitGradientIsUnbiasedForASmoothFunction() throws {
        let n = 100_000, a: Float = 1.7, r: Float = 3
        let u = TestNoise.uniforms(n, seed: 8)
        let params: [[Float]] = [[Float](repeating: a, count: n), [Float](repeating: r, count: n)]
        let x = try gamma.sample(params, n: n, normals: [], uniforms: u)
        let dp = try gamma.sampleVJP(params, n: n, normals: [], uniforms: u, x: x, g: x.map { 2 * $0 })
        let (da, seA) = meanAndStandardError(dp[0].map(Double.init))
        let (dr, seR) = meanAndStandardError(dp[1].map(Double.init))
        let exact = { (a: Double, r: Double) in a * (a + 1) / (r * r) }
        let refA = centralDifference({ exact($0, Double(r)) }, at: Double(a)), refR = centralDifference({ exact(Double(a), $0) }, at: Double(r))
        #expect(abs(da - refA) < 5 * seA, "d/da: \(da) ± \(seA) vs \(refA)")
        #expect(abs(dr - refR) < 5 * seR, "d/dr: \(dr) ± \(seR) vs \(refR)")
    }

    @Test func centerIsTheMeanAndItsVJP() throws {
        let c = try gamma.center([conc, rates], n: 5)
        let g: [Float] = [1, 2, -1, 0.5, 3]
        let dp = try gamma.centerVJP([conc, rates], n: 5, g: g)
        for i in 0..<5 {
            let a = Double(conc[i]), r = Double(rates[i]), gi = Double(g[i])
            #expect(isClose(Double(c[i]), a / r, rtol: 1e-6))
            #expect(isClose(Double(dp[0][i]), gi * centralDifference({ $0 / r }, at: a), rtol: 1e-4, atol: 1e-5))
            #expect(isClose(Double(dp[1][i]), gi * centralDifference({ a / $0 }, at: r), rtol: 1e-4, atol: 1e-5))
        }
    }

    @Test func klFromBetaMatchesClosedFormMonteCarloAndIsNonNegative() throws {
        let al: [Float] = [2, 0.7, 5, 1.5], be: [Float] = [20, 3, 2, 1.5]
        let k: Float = 1.5, r: Float = 4
        let kl = try gamma.kl(posterior: beta.dist, [al, be], [[k], [r]], n: 4)
        let n = 100_000
        let u = TestNoise.uniforms(2 * n, seed: 13)
        for i in 0..<4 {
            let a = Double(al[i]), b = Double(be[i])
            let ref = GammaDistReference.klBeta(a, b, Double(k), Double(r))
            #expect(isClose(Double(kl[i]), ref, rtol: 1e-5, atol: 1e-5), "closed form i=\(i): \(kl[i]) vs \(ref)")
            #expect(kl[i] >= 0)
            let w = try beta.sample([[al[i]], [be[i]]], n: n, normals: [], uniforms: u)
            let terms = w.map { BetaReference.logPDF(Double($0), a, b) - GammaDistReference.logPDF(Double($0), Double(k), Double(r)) }
            let (mc, se) = meanAndStandardError(terms)
            #expect(abs(mc - Double(kl[i])) < 5 * se + 1e-5, "MC i=\(i): \(mc) ± \(se) vs \(kl[i])")
        }
    }

    @Test func klFromGammaMatchesClosedFormMonteCarloAndIsNonNegative() throws {
        let qa: [Float] = [2, 0.7, 5, 1.5], qr: [Float] = [20, 3, 2, 1.5]
        let k: Float = 1.5, r: Float = 4
        let kl = try gamma.kl(posterior: gamma.dist, [qa, qr], [[k], [r]], n: 4)
        let n = 100_000
        let u = TestNoise.uniforms(n, seed: 17)
        for i in 0..<4 {
            let a = Double(qa[i]), s = Double(qr[i])
            let ref = GammaDistReference.klGamma(a, s, Double(k), Double(r))
            #expect(isClose(Double(kl[i]), ref, rtol: 1e-5, atol: 1e-5), "closed form i=\(i): \(kl[i]) vs \(ref)")
            #expect(kl[i] >= 0)
            let w = try gamma.sample([[qa[i]], [qr[i]]], n: n, normals: [], uniforms: u)
            let terms = w.map { GammaDistReference.logPDF(Double($0), a, s) - GammaDistReference.logPDF(Double($0), Double(k), Double(r)) }
            let (mc, se) = meanAndStandardError(terms)
            #expect(abs(mc - Double(kl[i])) < 5 * se + 1e-5, "MC i=\(i): \(mc) ± \(se) vs \(kl[i])")
        }
        let same = try gamma.kl(posterior: gamma.dist, [[3], [2]], [[3], [2]], n: 1)
        #expect(abs(same[0]) < 1e-5)
    }

    /// Issue 20, must show: through the C ABI, sample_vjp's dx/dconcentration within 1e-6 relative
    /// of the implicit derivative -(dP/da)(a, r x) / (r p(r x)) computed by quadrature
    /// (GammaQuantileReference), from a = 0.3 to a = 1e6 and u = 1e-30 to 1 - 2^-24 (rate = a, so x
    /// is near 1; draws that underflow float are counted, not compared). dx/drate = -x/rate.
    @Test func sampleGradientIsTheImplicitDerivativeUpToAMillion() throws {
        var compared = 0, worst = 0.0
        for a: Float in [0.3, 2, 30, 1e3, 1e5, 1e6] {
            for u: Float in [1e-30, 1e-10, 0.01, 0.5, 0.99, 1 - .ulpOfOne / 2] {
                let params: [[Float]] = [[a], [a]]
                let x = try gamma.sample(params, n: 1, normals: [], uniforms: [u])
                guard x[0] >= .leastNormalMagnitude else { continue }
                let dp = try gamma.sampleVJP(params, n: 1, normals: [], uniforms: [u], x: x, g: [1])
                let z = Double(a) * Double(x[0])
                let ref = Double(x[0]) * GammaQuantileReference.logDerivative(Double(a), logZ: log(z))
                let rel = abs(Double(dp[0][0]) - ref) / abs(ref)
                worst = max(worst, rel)
                compared += 1
                #expect(rel < 1e-6, "a=\(a) u=\(u) x=\(x[0]): dx/da = \(dp[0][0]) vs implicit \(ref) (relative \(rel))")
                #expect(isClose(Double(dp[1][0]), -Double(x[0]) / Double(a), rtol: 1e-6, atol: 0))
            }
        }
        #expect(compared >= 34, "only \(compared) of 36 draws were normal floats")
        #expect(worst < 1e-6, "worst relative error \(worst)")
    }

    /// A draw below float's range (a = 0.005: half the mass under e^-139) is 0, with a 0 gradient
    /// (the limit x d log z/da), not NaN; a tiny rate brings it back into range.
    @Test func drawsBelowFloatRangeAreZeroNotNaN() throws {
        let params: [[Float]] = [[0.005, 0.005, 0.005], [1, 1, 1]]
        let x = try gamma.sample(params, n: 3, normals: [], uniforms: [1e-7, 0.5, 0.9])
        #expect(x[0] == 0 && x[1] == 0 && x[2] > 0, "\(x)")
        let dp = try gamma.sampleVJP(params, n: 3, normals: [], uniforms: [1e-7, 0.5, 0.9], x: x, g: [1, 1, 1])
        #expect(dp.allSatisfy { $0.allSatisfy(\.isFinite) } && dp[0][0] == 0 && dp[0][1] == 0 && dp[0][2] > 0, "\(dp)")
        // z = P^-1(0.005, 0.5) = e^-139.2: with rate 1e-38 the draw is e^-139.2 / 1e-38 = 3.4e-23.
        let small = try gamma.sample([[0.005], [1e-38]], n: 1, normals: [], uniforms: [0.5])
        let logZ = (log(0.5) + lgamma(1.005)) / 0.005
        #expect(isClose(Double(small[0]), exp(logZ + 38 * log(10.0)), rtol: 1e-5, atol: 0), "\(small)")
    }

    /// Gradients (finite differences over a parameter grid with extremes), sentinels, NULL outputs,
    /// broadcast, n = 0, domain errors, sampling, KL and threads: `flipout plugins check`.
    @Test func passesTheConformanceSuite() throws { try expectConformance("FlipoutGamma") }
}
