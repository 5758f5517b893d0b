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

    @Test func logProbVJPMatchesFiniteDifferences() throws {
        let g: [Float] = [1, -0.5, 2, 0.25, 1.5, 1]
        let (dx, dp) = try prior.logProbVJP(xs, [dfs, locs, scales], g: g)
        for i in xs.indices {
            let x = Double(xs[i]), nu = Double(dfs[i]), m = Double(locs[i]), s = Double(scales[i]), gi = Double(g[i])
            let refs = [
                gi * centralDifference({ StudentTReference.logPDF($0, nu, m, s) }, at: x, h: 1e-6 * s),
                gi * centralDifference({ StudentTReference.logPDF(x, $0, m, s) }, at: nu, h: 1e-5 * nu),
                gi * centralDifference({ StudentTReference.logPDF(x, nu, $0, s) }, at: m, h: 1e-6 * s),
                gi * centralDifference({ StudentTReference.logPDF(x, nu, m, $0) }, at: s, h: 1e-6 * s),
            ]
            let got = [dx[i], dp[0][i], dp[1][i], dp[2][i]].map(Double.init)
            for k in 0..<4 { #expect(isClose(got[k], refs[k], rtol: 1e-4, atol: 1e-3), "i=\(i) k=\(k): \(got[k]) vs \(refs[k])") }
        }
    }

    @Test func broadcastGradientSumsOverScalars() throws {
        let (_, dp) = try prior.logProbVJP(xs, [[3], [0.1], [0.9]], g: [Float](repeating: 1, count: xs.count))
        let ref = xs.reduce(0.0) { acc, x in acc + centralDifference({ StudentTReference.logPDF(Double(x), $0, 0.1, Double(Float(0.9))) }, at: 3) }
        #expect(isClose(Double(dp[0][0]), ref, rtol: 1e-4, atol: 1e-4))
    }

    @Test func invalidParametersAreDomainErrors() throws {
        #expect {
            _ = try prior.logProb([0.1], [[-1], [0], [1]])
        } throws: { error in
            guard let e = error as? PluginCallError else { return false }
            return e.status == 3 && e.message.contains("df -1")
        }
    }
}
