// The Laplace plugin against closed forms, Monte Carlo, a KS test and central finite differences.
import Testing
import Foundation
import Flipout3D
import TestSupport

/// Independent references, written from the textbook formulas.
enum LaplaceReference {
    /// Laplace density, e.g. Johnson, Kotz & Balakrishnan, Continuous Univariate Distributions vol. 2, ch. 24.
    static func logPDF(_ x: Double, _ m: Double, _ b: Double) -> Double { -log(2 * b) - abs(x - m) / b }
    static func cdf(_ x: Double, _ m: Double, _ b: Double) -> Double {
        x < m ? 0.5 * exp((x - m) / b) : 1 - 0.5 * exp(-(x - m) / b)
    }
    /// PyTorch torch/distributions/kl.py `_kl_normal_laplace`.
    static func klNormal(_ mu: Double, _ s: Double, _ m: Double, _ b: Double) -> Double {
        let d = mu - m
        let t2 = (2 / Double.pi).squareRoot() * s * exp(-0.5 * (d / s) * (d / s))
        let t3 = d * erf((0.5).squareRoot() * d / s)
        return -log(s / b) + (t2 + t3) / b - 0.5 * (1 + log(0.5 * Double.pi))
    }
    /// KL between Laplace distributions, e.g. Gil, Alajaji & Hoseinzadeh (2013) / PyTorch `_kl_laplace_laplace`.
    static func klLaplace(_ mu: Double, _ c: Double, _ m: Double, _ b: Double) -> Double {
        let d = abs(mu - m)
        return log(b / c) + d / b + (c / b) * exp(-d / c) - 1
    }
}

@Suite struct LaplacePluginTests {
    let laplace: PluginHarness
    let normal: PluginHarness
    init() throws {
        laplace = try PluginHarness.bundled("FlipoutLaplace", "org.flipout3d.laplace")
        normal = try PluginHarness.bundled("FlipoutNormal", "org.flipout3d.normal")
    }

    let xs: [Float] = [-2.5, -0.3, 0.01, 0.7, 3.1]
    let locs: [Float] = [0.1, -1, 0.5, 0.2, 2]
    let scales: [Float] = [0.5, 1.3, 0.05, 2, 0.9]

    @Test func layoutAndCapabilities() throws {
        #expect(laplace.dist.normalsPerScalar == 0 && laplace.dist.uniformsPerScalar == 1)
        #expect(laplace.dist.family.capabilities.contains([.sample, .symmetric, .uniformNoise]))
    }

    @Test func logProbMatchesClosedForm() throws {
        let lp = try laplace.logProb(xs, [locs, scales])
        for i in xs.indices {
            let ref = LaplaceReference.logPDF(Double(xs[i]), Double(locs[i]), Double(scales[i]))
            #expect(isClose(Double(lp[i]), ref, rtol: 1e-6, atol: 1e-5), "i=\(i): \(lp[i]) vs \(ref)")
        }
    }

    @Test func logProbVJPMatchesFiniteDifferences() throws {
        let g: [Float] = [1, -0.5, 2, 0.25, 1.5]
        let (dx, dp) = try laplace.logProbVJP(xs, [locs, scales], g: g)
        for i in xs.indices {
            let x = Double(xs[i]), m = Double(locs[i]), b = Double(scales[i]), gi = Double(g[i])
            let refs = [
                gi * centralDifference({ LaplaceReference.logPDF($0, m, b) }, at: x, h: 1e-6),
                gi * centralDifference({ LaplaceReference.logPDF(x, $0, b) }, at: m, h: 1e-6),
                gi * centralDifference({ LaplaceReference.logPDF(x, m, $0) }, at: b, h: 1e-7),
            ]
            let got = [dx[i], dp[0][i], dp[1][i]].map(Double.init)
            for k in 0..<3 { #expect(isClose(got[k], refs[k], rtol: 1e-4, atol: 1e-3), "i=\(i) k=\(k): \(got[k]) vs \(refs[k])") }
        }
    }

    @Test func samplerMomentsAndKolmogorovSmirnov() throws {
        let n = 100_000, m = 0.3, b = 0.7
        let u = TestNoise.uniforms(n, seed: 11)
        let x = try laplace.sample([[Float(m)], [Float(b)]], n: n, normals: [], uniforms: u)
        let mom = SampleMoments(x)
        // Laplace(m, b): mean m, variance 2 b^2.
        #expect(abs(mom.mean - m) < 5 * mom.meanStandardError, "mean \(mom.mean)")
        #expect(abs(mom.variance - 2 * b * b) < 5 * mom.varianceStandardError, "variance \(mom.variance)")
        let d = kolmogorovSmirnov(x) { LaplaceReference.cdf($0, m, b) }
        #expect(d < ksCritical1Percent(n), "KS D = \(d)")
    }

    @Test func sampleVJPMatchesFiniteDifferencesOfTheSample() throws {
        let u: [Float] = [0.03, 0.4, 0.5, 0.77, 0.995]
        let x = try laplace.sample([locs, scales], n: 5, normals: [], uniforms: u)
        let g: [Float] = [1, 2, -1, 0.5, 3]
        let dp = try laplace.sampleVJP([locs, scales], n: 5, normals: [], uniforms: u, x: x, g: g)
        let h: Float = 1e-2
        let xlp = try laplace.sample([locs.map { $0 + h }, scales], n: 5, normals: [], uniforms: u)
        let xlm = try laplace.sample([locs.map { $0 - h }, scales], n: 5, normals: [], uniforms: u)
        let xsp = try laplace.sample([locs, scales.map { $0 + h * 0.01 }], n: 5, normals: [], uniforms: u)
        let xsm = try laplace.sample([locs, scales.map { $0 - h * 0.01 }], n: 5, normals: [], uniforms: u)
        for i in 0..<5 {
            let gi = Double(g[i])
            let fdLoc = gi * Double(xlp[i] - xlm[i]) / Double(2 * h)
            let fdScale = gi * Double(xsp[i] - xsm[i]) / Double(2 * h * 0.01)
            #expect(isClose(Double(dp[0][i]), fdLoc, rtol: 1e-3, atol: 1e-3), "dloc i=\(i)")
            #expect(isClose(Double(dp[1][i]), fdScale, rtol: 2e-3, atol: 2e-3), "dscale i=\(i): \(dp[1][i]) vs \(fdScale)")
        }
        #expect(try laplace.center([locs, scales], n: 5) == locs)
    }

    @Test func klFromNormalMatchesClosedFormMonteCarloAndIsNonNegative() throws {
        let qm: [Float] = [0.1, -0.4, 0, 1.2], qs: [Float] = [0.3, 0.05, 1, 0.8]
        let pm: Float = 0.2, pb: Float = 0.5
        let kl = try laplace.kl(posterior: normal.dist, [qm, qs], [[pm], [pb]], n: 4)
        let n = 100_000
        let eps = TestNoise.normals(n, seed: 5)
        for i in 0..<4 {
            let mu = Double(qm[i]), s = Double(qs[i])
            let ref = LaplaceReference.klNormal(mu, s, Double(pm), Double(pb))
            #expect(isClose(Double(kl[i]), ref, rtol: 1e-5, atol: 1e-5), "closed form i=\(i)")
            #expect(kl[i] >= 0)
            let terms = eps.map { e -> Double in
                let w = mu + s * Double(e)
                return NormalReference.logPDF(w, mu, s) - LaplaceReference.logPDF(w, Double(pm), Double(pb))
            }
            let (mc, se) = meanAndStandardError(terms)
            #expect(abs(mc - Double(kl[i])) < 5 * se + 1e-6, "MC i=\(i): \(mc) ± \(se) vs \(kl[i])")
        }
    }

    @Test func klFromLaplaceMatchesClosedFormMonteCarloAndIsNonNegative() throws {
        let qm: [Float] = [0.1, -0.4, 0.2, 1.2], qs: [Float] = [0.3, 0.05, 0.5, 2]
        let pm: Float = 0.2, pb: Float = 0.5
        let kl = try laplace.kl(posterior: laplace.dist, [qm, qs], [[pm], [pb]], n: 4)
        let n = 100_000
        let u = TestNoise.uniforms(n, seed: 9)
        for i in 0..<4 {
            let mu = Double(qm[i]), c = Double(qs[i])
            let ref = LaplaceReference.klLaplace(mu, c, Double(pm), Double(pb))
            #expect(isClose(Double(kl[i]), ref, rtol: 1e-5, atol: 1e-5), "closed form i=\(i)")
            #expect(kl[i] >= 0)
            let w = try laplace.sample([[qm[i]], [qs[i]]], n: n, normals: [], uniforms: u)
            let terms = w.map { LaplaceReference.logPDF(Double($0), mu, c) - LaplaceReference.logPDF(Double($0), Double(pm), Double(pb)) }
            let (mc, se) = meanAndStandardError(terms)
            #expect(abs(mc - Double(kl[i])) < 5 * se + 1e-5, "MC i=\(i): \(mc) ± \(se) vs \(kl[i])")
        }
        let same = try laplace.kl(posterior: laplace.dist, [[0.3], [0.7]], [[0.3], [0.7]], n: 1)
        #expect(abs(same[0]) < 1e-6)
    }

    @Test func klVJPsMatchFiniteDifferences() throws {
        let qm: [Float] = [0.1, -0.4, 0, 1.2], qs: [Float] = [0.3, 0.05, 1, 0.8]
        let pm: [Float] = [0.2, 0.3, -0.5, 1], pb: [Float] = [0.5, 1, 0.2, 2]
        let g: [Float] = [1, -1, 0.5, 2]
        for (q, ref) in [(normal.dist, LaplaceReference.klNormal), (laplace.dist, LaplaceReference.klLaplace)] {
            let (dq, dp) = try laplace.klVJP(posterior: q, [qm, qs], [pm, pb], n: 4, g: g)
            for i in 0..<4 {
                let a = Double(qm[i]), s = Double(qs[i]), m = Double(pm[i]), b = Double(pb[i]), gi = Double(g[i])
                let refs = [
                    gi * centralDifference({ ref($0, s, m, b) }, at: a, h: 1e-6),
                    gi * centralDifference({ ref(a, $0, m, b) }, at: s, h: 1e-7),
                    gi * centralDifference({ ref(a, s, $0, b) }, at: m, h: 1e-6),
                    gi * centralDifference({ ref(a, s, m, $0) }, at: b, h: 1e-7),
                ]
                let got = [dq[0][i], dq[1][i], dp[0][i], dp[1][i]].map(Double.init)
                for k in 0..<4 { #expect(isClose(got[k], refs[k], rtol: 1e-4, atol: 1e-3), "\(q.family.id) i=\(i) k=\(k): \(got[k]) vs \(refs[k])") }
            }
        }
    }

    @Test func invalidScaleIsADomainError() throws {
        #expect {
            _ = try laplace.logProb([0.1], [[0], [0]])
        } throws: { error in
            guard let e = error as? PluginCallError else { return false }
            return e.status == 3 && e.message.contains("scale")
        }
    }
}
