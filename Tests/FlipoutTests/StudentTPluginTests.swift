// The Student-t prior against its closed form, the Cauchy special case, numerical normalisation and finite differences.
import Testing
import Foundation
import Flipout3D
import TestSupport

/// Student-t density, e.g. Johnson, Kotz & Balakrishnan vol. 2, ch. 28 (location-scale form).
enum StudentTReference {
    static func logPDF(_ x: Double, _ nu: Double, _ m: Double, _ s: Double) -> Double {
        let z = (x - m) / s
        return lgamma((nu + 1) / 2) - lgamma(nu / 2) - 0.5 * log(nu * Double.pi) - log(s) - (nu + 1) / 2 * log(1 + z * z / nu)
    }
    /// Cauchy density 1 / (pi s (1 + z^2)), the df = 1 case.
    static func cauchyLogPDF(_ x: Double, _ m: Double, _ s: Double) -> Double {
        let z = (x - m) / s
        return -log(Double.pi * s * (1 + z * z))
    }
}

@Suite struct StudentTPluginTests {
    let prior: PluginHarness
    init() throws { prior = try PluginHarness.bundled("FlipoutStudentT", "org.flipout3d.student-t") }

    let xs: [Float] = [-4, -0.5, 0, 0.3, 1.7, 25]
    let dfs: [Float] = [3, 0.7, 1, 12, 2.5, 4]
    let locs: [Float] = [0, 0.2, -0.1, 0.5, 1, 0]
    let scales: [Float] = [1, 0.3, 2, 0.05, 1.5, 0.8]

    @Test func isAPriorOnly() throws {
        #expect(prior.dist.family.capabilities.isEmpty)
    }

    @Test func logProbMatchesClosedForm() throws {
        let lp = try prior.logProb(xs, [dfs, locs, scales])
        for i in xs.indices {
            let ref = StudentTReference.logPDF(Double(xs[i]), Double(dfs[i]), Double(locs[i]), Double(scales[i]))
            #expect(isClose(Double(lp[i]), ref, rtol: 1e-6, atol: 1e-5), "i=\(i): \(lp[i]) vs \(ref)")
        }
        let cauchy = try prior.logProb(xs, [[1], [0.3], [0.7]])
        for i in xs.indices {
            #expect(isClose(Double(cauchy[i]), StudentTReference.cauchyLogPDF(Double(xs[i]), 0.3, Double(Float(0.7))), rtol: 1e-6, atol: 1e-5))
        }
    }

    /// The plugin's density integrates to 1 (trapezoid on x = tan(theta), which maps the real line to (-pi/2, pi/2)).
    @Test func densityIntegratesToOne() throws {
        let m = 20_000
        let thetas = (1..<m).map { -Double.pi / 2 + Double.pi * Double($0) / Double(m) }
        let x = thetas.map { Float(tan($0)) }
        let lp = try prior.logProb(x, [[3], [0.2], [0.8]])
        var s = 0.0
        for (i, t) in thetas.enumerated() { s += exp(Double(lp[i])) / (cos(t) * cos(t)) }
        s *= Double.pi / Double(m)
        #expect(abs(s - 1) < 1e-4, "integral \(s)")
    }

    /// Gradients (finite differences over a parameter grid with extremes), sentinels, NULL outputs,
    /// broadcast, n = 0, domain errors, sampling, KL and threads: `flipout plugins check`.
    @Test func passesTheConformanceSuite() throws { try expectConformance("FlipoutStudentT") }

    /// The plugin's gradients are derived by the SDK (autodiff); they equal the hand-derived ones:
    /// d/dx = -(nu + 1) z / (s (nu + z^2)); d/dloc = -d/dx; d/dscale = -1/s + (nu + 1) z^2 / (s (nu + z^2));
    /// d/dnu = (psi((nu+1)/2) - psi(nu/2) - 1/nu - log(1 + z^2/nu))/2 + (nu + 1) z^2 / (2 nu (nu + z^2)).
    @Test func derivedGradientsEqualTheHandWrittenOnes() throws {
        let xs: [Float] = [-4, -1.1, -0.2, 0, 0.3, 2, 7.5]
        let nus: [Float] = [0.5, 1, 3, 8, 30, 2.5, 4]
        let locs: [Float] = [0, 0.5, -0.2, 0.1, 0, 1, -3]
        let scales: [Float] = [1, 0.2, 2, 0.05, 1.5, 0.7, 3]
        let g: [Float] = [1, -0.5, 2, 0.25, 1.5, -1, 0.75]
        let (dx, dp) = try prior.logProbVJP(xs, [nus, locs, scales], g: g)
        for i in xs.indices {
            let nu = Double(nus[i]), s = Double(scales[i]), z = (Double(xs[i]) - Double(locs[i])) / s, z2 = z * z, gi = Double(g[i])
            let handX = -(nu + 1) * z / (s * (nu + z2))
            let handNu = 0.5 * (digammaReference(0.5 * (nu + 1)) - digammaReference(0.5 * nu) - 1 / nu - log1p(z2 / nu)) + (nu + 1) * z2 / (2 * nu * (nu + z2))
            let handScale = -1 / s + (nu + 1) * z2 / (s * (nu + z2))
            #expect(isClose(Double(dx[i]), gi * handX, rtol: 1e-5, atol: 1e-6), "dx i=\(i)")
            #expect(isClose(Double(dp[0][i]), gi * handNu, rtol: 1e-5, atol: 1e-6), "dnu i=\(i)")
            #expect(isClose(Double(dp[1][i]), -gi * handX, rtol: 1e-5, atol: 1e-6), "dloc i=\(i)")
            #expect(isClose(Double(dp[2][i]), gi * handScale, rtol: 1e-5, atol: 1e-6), "dscale i=\(i)")
        }
    }

    /// digamma by its series about 1 after the recurrence, independently of the SDK's.
    func digammaReference(_ x: Double) -> Double {
        var x = x, r = 0.0
        while x < 20 { r -= 1 / x; x += 1 }
        let f = 1 / (x * x)
        return r + log(x) - 0.5 / x - f * (1.0 / 12 - f * (1.0 / 120 - f * (1.0 / 252 - f / 240)))
    }
}
