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

    @Test func logProbVJPMatchesFiniteDifferences() throws {
        for (pi, s1, s2) in cases {
            let g = ws.indices.map { Float(1 + 0.1 * Double($0)) }
            let params: [[Float]] = [[Float](repeating: Float(pi), count: ws.count), [Float](repeating: Float(s1), count: ws.count), [Float](repeating: Float(s2), count: ws.count)]
            let (dx, dp) = try prior.logProbVJP(ws, params, g: g)
            let p1 = Double(Float(s1)), p2 = Double(Float(s2))
            for i in ws.indices {
                let w = Double(ws[i]), gi = Double(g[i])
                let refs = [
                    gi * centralDifference({ ScaleMixtureReference.logPDF($0, pi, p1, p2) }, at: w, h: 1e-3 * p2),
                    gi * centralDifference({ ScaleMixtureReference.logPDF(w, $0, p1, p2) }, at: pi, h: 1e-6),
                    gi * centralDifference({ ScaleMixtureReference.logPDF(w, pi, $0, p2) }, at: p1, h: 1e-6 * p1),
                    gi * centralDifference({ ScaleMixtureReference.logPDF(w, pi, p1, $0) }, at: p2, h: 1e-6 * p2),
                ]
                let got = [dx[i], dp[0][i], dp[1][i], dp[2][i]].map(Double.init)
                for k in 0..<4 { #expect(isClose(got[k], refs[k], rtol: 1e-4, atol: 1e-3), "pi=\(pi) w=\(w) k=\(k): \(got[k]) vs \(refs[k])") }
            }
        }
    }

    @Test func gradientIsFiniteAtTheEndsOfPi() throws {
        for pi: Float in [0, 1] {
            let (dx, dp) = try prior.logProbVJP([0.01], [[pi], [1], [0.01]], g: [1])
            #expect(dx[0].isFinite && dp.allSatisfy { $0[0].isFinite })
            let ref = centralDifference({ ScaleMixtureReference.logPDF(Double(Float(0.01)), $0, 1, Double(Float(0.01))) }, at: pi == 0 ? 1e-6 : 1 - 1e-6, h: 1e-7)
            #expect(isClose(Double(dp[0][0]), ref, rtol: 1e-3, atol: 1e-3), "pi=\(pi): \(dp[0][0]) vs \(ref)")
        }
    }

    @Test func invalidParametersAreDomainErrors() throws {
        #expect {
            _ = try prior.logProb([0.1], [[0.5], [1], [0]])
        } throws: { error in
            guard let e = error as? PluginCallError else { return false }
            return e.status == 3 && e.message.contains("sigma2 0")
        }
    }
}
