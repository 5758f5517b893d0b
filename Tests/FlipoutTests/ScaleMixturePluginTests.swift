// The scale-mixture prior against the directly summed density and central finite differences.
import Testing
import Foundation
import Flipout3D
import TestSupport

/// Blundell et al. (2015), "Weight Uncertainty in Neural Networks", eq. (7): the mixture summed directly.
enum ScaleMixtureReference {
    static func logPDF(_ w: Double, _ pi: Double, _ s1: Double, _ s2: Double) -> Double {
        log(pi * exp(NormalReference.logPDF(w, 0, s1)) + (1 - pi) * exp(NormalReference.logPDF(w, 0, s2)))
    }
}

@Suite struct ScaleMixturePluginTests {
    let prior: PluginHarness
    init() throws { prior = try PluginHarness.bundled("FlipoutScaleMixture", "org.flipout3d.scale-mixture") }

    let ws: [Float] = [-1.5, -0.01, 0, 0.003, 0.4, 2]
    let cases: [(Double, Double, Double)] = [(0.5, 1, exp(-6)), (0.25, exp(-1), exp(-7)), (0.75, exp(-2), exp(-8))]

    @Test func isAPriorOnly() throws {
        #expect(prior.dist.family.capabilities.isEmpty)
        let defaults = prior.dist.slots.map(\.parameter.defaultValue)
        #expect(defaults[0] == 0.5 && defaults[1] == 1 && abs(Double(defaults[2]) - exp(-6)) < 1e-9)
    }

    @Test func logProbMatchesDirectSum() throws {
        for (pi, s1, s2) in cases {
            let lp = try prior.logProb(ws, [[Float(pi)], [Float(s1)], [Float(s2)]])
            for i in ws.indices {
                let ref = ScaleMixtureReference.logPDF(Double(ws[i]), pi, Double(Float(s1)), Double(Float(s2)))
                #expect(isClose(Double(lp[i]), ref, rtol: 1e-6, atol: 1e-5), "pi=\(pi) w=\(ws[i]): \(lp[i]) vs \(ref)")
            }
        }
    }

    /// No epsilon inside the log: far from zero the penalty keeps growing like w^2 / (2 sigma1^2)
    /// (BLiTZ's log(p + 1e-6) would stop at log(1e-6) = -13.8).
    @Test func penaltyIsNotCapped() throws {
        let lp = try prior.logProb([40], [[0.5], [1], [Float(exp(-6.0))]])
        let ref = log(0.5) + NormalReference.logPDF(40, 0, 1)
        #expect(isClose(Double(lp[0]), ref, rtol: 1e-6), "\(lp[0]) vs \(ref)")
        #expect(lp[0] < -800)
    }

    @Test func gradientIsFiniteAtTheEndsOfPi() throws {
        for pi: Float in [0, 1] {
            let (dx, dp) = try prior.logProbVJP([0.01], [[pi], [1], [0.01]], g: [1])
            #expect(dx[0].isFinite && dp.allSatisfy { $0[0].isFinite })
            let ref = centralDifference({ ScaleMixtureReference.logPDF(Double(Float(0.01)), $0, 1, Double(Float(0.01))) }, at: pi == 0 ? 1e-6 : 1 - 1e-6, h: 1e-7)
            #expect(isClose(Double(dp[0][0]), ref, rtol: 1e-3, atol: 1e-3), "pi=\(pi): \(dp[0][0]) vs \(ref)")
        }
    }

    /// At pi = 0 the narrow component alone is the density: pi = 0, sigma2 = e^-6, w = 0.1 has
    /// d log p/dw = -w / sigma2^2 = -16275.5 (it was "NaN", from 0 * inf), while d log p/dpi =
    /// N1/N2 - 1 = e^808 is beyond Double: asked for, it is a domain error naming pi, never +inf.
    @Test func piZeroGivesTheNarrowComponentsGradient() throws {
        let x: [Float] = [0.1], s2 = Float(exp(-6.0)), params: [[Float]] = [[0], [1], [s2]]
        var dx: [Float] = [0]
        let pi: [Float] = [0], s1: [Float] = [1], s2s: [Float] = [s2]
        try pi.withUnsafeBufferPointer { a in try s1.withUnsafeBufferPointer { b in try s2s.withUnsafeBufferPointer { c in
            let p = [InArray(a.baseAddress!), InArray(b.baseAddress!), InArray(c.baseAddress!)]
            try prior.dist.logProbVJP(n: 1, params: p, x: x, g: [1], gradX: &dx, gradParams: [.skip, .skip, .skip])
        } } }
        let ref = -Double(x[0]) / (Double(s2) * Double(s2))
        #expect(isClose(Double(dx[0]), ref, rtol: 1e-6, atol: 0), "\(dx[0]) vs \(ref)")
        #expect(abs(ref + 16275.5) < 0.1)
        #expect { _ = try prior.logProbVJP(x, params, g: [1]) } throws: { error in
            guard let e = error as? PluginCallError else { return false }
            return e.status == 3 && e.message.contains("d pi") && e.message.contains("+inf")
        }
    }

    /// Gradients (finite differences over a parameter grid with extremes), sentinels, NULL outputs,
    /// broadcast, n = 0, domain errors, sampling, KL and threads: `flipout plugins check`.
    @Test func passesTheConformanceSuite() throws { try expectConformance("FlipoutScaleMixture") }
}
