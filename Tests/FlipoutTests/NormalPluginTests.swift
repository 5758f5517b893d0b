// The Normal plugin against closed forms, and every VJP against central finite differences in Double.
import Testing
import Foundation
import Flipout3D
import TestSupport

/// Independent references, written from the textbook formulas.
enum NormalReference {
    static func logPDF(_ x: Double, _ m: Double, _ s: Double) -> Double { -0.5 * pow((x - m) / s, 2) - log(s) - 0.5 * log(2 * .pi) }
    /// KL(N(mu, s^2) || N(m, t^2)), e.g. Bishop PRML exercise 1.30 / PyTorch `_kl_normal_normal`.
    static func kl(_ mu: Double, _ s: Double, _ m: Double, _ t: Double) -> Double { log(t / s) + (s * s + (mu - m) * (mu - m)) / (2 * t * t) - 0.5 }
}

@Suite struct NormalPluginTests {
    let normal: PluginHarness
    init() throws { normal = try PluginHarness.bundled("FlipoutNormal", "org.flipout3d.normal") }

    let xs: [Float] = [-2.5, -0.3, 0, 0.7, 3.1]
    let locs: [Float] = [0.1, -1, 0.5, 0.2, 2]
    let scales: [Float] = [0.5, 1.3, 0.05, 2, 0.9]

    @Test func logProbMatchesClosedForm() throws {
        let lp = try normal.logProb(xs, [locs, scales])
        for i in xs.indices {
            let ref = NormalReference.logPDF(Double(xs[i]), Double(locs[i]), Double(scales[i]))
            #expect(isClose(Double(lp[i]), ref, rtol: 1e-6, atol: 1e-5), "i=\(i): \(lp[i]) vs \(ref)")
        }
    }

    @Test func sampleIsLocPlusScaleTimesNoiseAndItsVJP() throws {
        let eps: [Float] = [0.3, -1.2, 2.0, 0.0, -0.7]
        let x = try normal.sample([locs, scales], n: 5, normals: eps, uniforms: [])
        for i in 0..<5 { #expect(abs(x[i] - (locs[i] + scales[i] * eps[i])) < 1e-6) }
        let g: [Float] = [1, 2, 3, 4, 5]
        let dp = try normal.sampleVJP([locs, scales], n: 5, normals: eps, uniforms: [], x: x, g: g)
        for i in 0..<5 {
            #expect(abs(dp[0][i] - g[i]) < 1e-6)
            #expect(abs(dp[1][i] - g[i] * eps[i]) < 1e-5)
        }
        #expect(try normal.center([locs, scales], n: 5) == locs)
    }

    @Test func klMatchesClosedFormAndIsNonNegative() throws {
        let q = normal.dist
        let priorLoc: [Float] = [0], priorScale: [Float] = [1]
        let kl = try normal.kl(posterior: q, [locs, scales], [priorLoc, priorScale], n: 5)
        for i in 0..<5 {
            let ref = NormalReference.kl(Double(locs[i]), Double(scales[i]), 0, 1)
            #expect(isClose(Double(kl[i]), ref, rtol: 1e-5, atol: 1e-5), "i=\(i)")
            #expect(kl[i] >= 0)
        }
        let same = try normal.kl(posterior: q, [[0.3], [0.7]], [[0.3], [0.7]], n: 1)
        #expect(abs(same[0]) < 1e-6)
    }

    /// Gradients (finite differences over a parameter grid with extremes), sentinels, NULL outputs,
    /// broadcast, n = 0, domain errors, sampling, KL and threads: `flipout plugins check`.
    @Test func passesTheConformanceSuite() throws { try expectConformance("FlipoutNormal") }
}
