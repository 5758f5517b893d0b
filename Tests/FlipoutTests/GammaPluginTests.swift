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

    @Test func logProbVJPMatchesFiniteDifferences() throws {
        let g: [Float] = [1, -0.5, 2, 0.25, 1.5]
        let (dx, dp) = try gamma.logProbVJP(xs, [conc, rates], g: g)
        for i in xs.indices {
            let x = Double(xs[i]), a = Double(conc[i]), r = Double(rates[i]), gi = Double(g[i])
            let refs = [
                gi * centralDifference({ GammaDistReference.logPDF($0, a, r) }, at: x, h: 1e-6 * x),
                gi * centralDifference({ GammaDistReference.logPDF(x, $0, r) }, at: a, h: 1e-6),
                gi * centralDifference({ GammaDistReference.logPDF(x, a, $0) }, at: r, h: 1e-6),
            ]
            let got = [dx[i], dp[0][i], dp[1][i]].map(Double.init)
            for k in 0..<3 { #expect(isClose(got[k], refs[k], rtol: 1e-4, atol: 1e-3), "i=\(i) k=\(k): \(got[k]) vs \(refs[k])") }
        }
    }

    @Test(arguments: [(2.0, 20.0), (0.5, 3.0)])
    func samplerMomentsAndKolmogorovSmirnov(a: Double, r: Double) throws {
        let n = 100_000
        let u = TestNoise.uniforms(n, seed: 21)
        let x = try gamma.sample([[Float(a)], [Float(r)]], n: n, normals: [], uniforms: u)
        let mom = SampleMoments(x)
        // Gamma(a, r): mean a/r, variance a/r^2.
        #expect(abs(mom.mean - a / r) < 5 * mom.meanStandardError, "mean \(mom.mean)")
        #expect(abs(mom.variance - a / (r * r)) < 5 * mom.varianceStandardError, "variance \(mom.variance)")
        let d = kolmogorovSmirnov(x) { a == 2 ? GammaDistReference.cdf2($0, r) : GammaDistReference.cdfHalf($0, r) }
        #expect(d < ksCritical1Percent(n), "KS D = \(d)")
        #expect(x.allSatisfy { $0 > 0 })
    }

    /// Inverse-CDF sampling is continuous in the parameters for a fixed uniform, so each implicit
    /// gradient dx/dtheta = -(dF/dtheta)/p must equal the difference quotient of the plugin's own
    /// sample with the same uniform.
    @Test func implicitGradientMatchesCommonNoiseDifferences() throws {
        let n = 40
        let u = TestNoise.uniforms(n, seed: 3)
        for (a, r) in [(Float(2), Float(20)), (0.3, 1.5), (9, 2)] {
            let params: [[Float]] = [[Float](repeating: a, count: n), [Float](repeating: r, count: n)]
            let x = try gamma.sample(params, n: n, normals: [], uniforms: u)
            let dp = try gamma.sampleVJP(params, n: n, normals: [], uniforms: u, x: x, g: [Float](repeating: 1, count: n))
            let ha = 1e-3 * a, hr = 1e-3 * r
            let xap = try gamma.sample([[a + ha], [r]], n: n, normals: [], uniforms: u)
            let xam = try gamma.sample([[a - ha], [r]], n: n, normals: [], uniforms: u)
            let xrp = try gamma.sample([[a], [r + hr]], n: n, normals: [], uniforms: u)
            let xrm = try gamma.sample([[a], [r - hr]], n: n, normals: [], uniforms: u)
            for i in 0..<n {
                let fdA = (Double(xap[i]) - Double(xam[i])) / Double(2 * ha)
                let fdR = (Double(xrp[i]) - Double(xrm[i])) / Double(2 * hr)
                let scale = Double(x[i]) / Double(a)
                #expect(isClose(Double(dp[0][i]), fdA, rtol: 2e-3, atol: 1e-4 * scale), "a=\(a) r=\(r) u=\(u[i]): dx/da \(dp[0][i]) vs \(fdA)")
                #expect(isClose(Double(dp[1][i]), fdR, rtol: 2e-3, atol: 1e-4 * Double(x[i]) / Double(r)), "dx/dr \(dp[1][i]) vs \(fdR)")
            }
        }
    }

    /// Pathwise estimate of dE[x^2]/da against the derivative of E[x^2] = a(a + 1)/r^2.
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

    @Test func klVJPsMatchFiniteDifferences() throws {
        let q0: [Float] = [2, 0.7, 5, 1.5], q1: [Float] = [20, 3, 2, 1.5]
        let pk: [Float] = [1.5, 2, 0.8, 3], pr: [Float] = [4, 1, 10, 0.5]
        let g: [Float] = [1, -1, 0.5, 2]
        for (q, ref) in [(beta.dist, GammaDistReference.klBeta), (gamma.dist, GammaDistReference.klGamma)] {
            let (dq, dp) = try gamma.klVJP(posterior: q, [q0, q1], [pk, pr], n: 4, g: g)
            for i in 0..<4 {
                let a = Double(q0[i]), b = Double(q1[i]), k = Double(pk[i]), r = Double(pr[i]), gi = Double(g[i])
                let refs = [
                    gi * centralDifference({ ref($0, b, k, r) }, at: a, h: 1e-4 * a),
                    gi * centralDifference({ ref(a, $0, k, r) }, at: b, h: 1e-4 * b),
                    gi * centralDifference({ ref(a, b, $0, r) }, at: k, h: 1e-4 * k),
                    gi * centralDifference({ ref(a, b, k, $0) }, at: r, h: 1e-4 * r),
                ]
                let got = [dq[0][i], dq[1][i], dp[0][i], dp[1][i]].map(Double.init)
                for j in 0..<4 { #expect(isClose(got[j], refs[j], rtol: 1e-4, atol: 1e-3), "\(q.family.id) i=\(i) k=\(j): \(got[j]) vs \(refs[j])") }
            }
        }
    }

    @Test func invalidParametersAreDomainErrors() throws {
        #expect {
            _ = try gamma.logProb([0.1], [[0], [1]])
        } throws: { error in
            guard let e = error as? PluginCallError else { return false }
            return e.status == 3 && e.message.contains("concentration")
        }
    }
}
