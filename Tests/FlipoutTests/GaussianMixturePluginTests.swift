// The Gaussian-mixture plugin against a direct mixture density, a KS test, finite differences and implicit gradients.
import Testing
import Foundation
import Flipout3D
import TestSupport

/// Independent references: the mixture density summed directly (no log-sum-exp), e.g. Bishop PRML eq. 9.7.
enum MixtureReference {
    static func weights(_ logits: [Double]) -> [Double] {
        let e = logits.map { exp($0) }, s = e.reduce(0, +)
        return e.map { $0 / s }
    }
    static func logPDF(_ x: Double, _ logits: [Double], _ locs: [Double], _ scales: [Double]) -> Double {
        let w = weights(logits)
        var p = 0.0
        for j in w.indices { p += w[j] * exp(NormalReference.logPDF(x, locs[j], scales[j])) }
        return log(p)
    }
    /// F(x) = sum_j w_j Phi((x - loc_j) / scale_j), Phi(z) = erfc(-z / sqrt 2) / 2.
    static func cdf(_ x: Double, _ logits: [Double], _ locs: [Double], _ scales: [Double]) -> Double {
        let w = weights(logits)
        var f = 0.0
        for j in w.indices { f += w[j] * 0.5 * erfc(-(x - locs[j]) / (scales[j] * 2.0.squareRoot())) }
        return f
    }
    static func mean(_ logits: [Double], _ locs: [Double]) -> Double { zip(weights(logits), locs).map { $0 * $1 }.reduce(0, +) }
    static func variance(_ logits: [Double], _ locs: [Double], _ scales: [Double]) -> Double {
        let w = weights(logits), m = mean(logits, locs)
        var v = 0.0
        for j in w.indices { v += w[j] * (scales[j] * scales[j] + locs[j] * locs[j]) }
        return v - m * m
    }
    /// E[sin X] = sum_j w_j sin(loc_j) exp(-scale_j^2 / 2) (characteristic function of the Normal).
    static func expectedSin(_ logits: [Double], _ locs: [Double], _ scales: [Double]) -> Double {
        let w = weights(logits)
        var e = 0.0
        for j in w.indices { e += w[j] * sin(locs[j]) * exp(-scales[j] * scales[j] / 2) }
        return e
    }
}

@Suite struct GaussianMixturePluginTests {
    let mixture: PluginHarness
    init() throws { mixture = try PluginHarness.bundled("FlipoutGaussianMixture", "org.flipout3d.gaussian-mixture", hyper: ["components": 3]) }

    let logits: [Double] = [0.5, -0.3, 0]
    let locs: [Double] = [-1, 0.5, 2]
    let scales: [Double] = [0.3, 0.8, 0.5]
    /// All 9 slots, one value each (broadcast).
    var slots: [[Float]] { (logits + locs + scales).map { [Float($0)] } }
    /// Split a 9-vector of slot values into (logits, locs, scales).
    func split(_ v: [Double]) -> ([Double], [Double], [Double]) { (Array(v[0..<3]), Array(v[3..<6]), Array(v[6..<9])) }

    @Test func layoutFollowsTheComponentCount() throws {
        #expect(mixture.dist.slots.count == 9)
        #expect(mixture.dist.slots.map(\.name).prefix(4) == ["logit[0]", "logit[1]", "logit[2]", "loc[0]"])
        #expect(mixture.dist.normalsPerScalar == 1 && mixture.dist.uniformsPerScalar == 1)
        #expect(!mixture.dist.family.capabilities.contains(.symmetric))
        #expect(mixture.dist.family.klFamilies.isEmpty)
        let two = try PluginHarness.bundled("FlipoutGaussianMixture", "org.flipout3d.gaussian-mixture")
        #expect(two.dist.slots.count == 6)
    }

    @Test func logProbMatchesDirectMixtureDensity() throws {
        let xs: [Float] = [-3, -1.1, 0, 0.6, 2.2, 5]
        let lp = try mixture.logProb(xs, slots)
        for i in xs.indices {
            let ref = MixtureReference.logPDF(Double(xs[i]), logits, locs, scales)
            #expect(isClose(Double(lp[i]), ref, rtol: 1e-6, atol: 1e-5), "x=\(xs[i]): \(lp[i]) vs \(ref)")
        }
        // One component is a Normal.
        let one = try PluginHarness.bundled("FlipoutGaussianMixture", "org.flipout3d.gaussian-mixture", hyper: ["components": 1])
        let lp1 = try one.logProb([0.3], [[0.7], [0.1], [0.4]])
        #expect(isClose(Double(lp1[0]), NormalReference.logPDF(0.3, 0.1, 0.4), rtol: 1e-6))
    }

    @Test func logProbVJPMatchesFiniteDifferences() throws {
        let xs: [Float] = [-1.4, 0.2, 1.5, 2.6]
        let g: [Float] = [1, -0.5, 2, 0.7]
        let theta = logits + locs + scales
        for i in xs.indices {
            let (dx, dp) = try mixture.logProbVJP([xs[i]], slots, g: [g[i]])
            let x = Double(xs[i]), gi = Double(g[i])
            let fdx = gi * centralDifference({ MixtureReference.logPDF($0, logits, locs, scales) }, at: x, h: 1e-6)
            #expect(isClose(Double(dx[0]), fdx, rtol: 1e-4, atol: 1e-3), "dx at \(x)")
            for k in 0..<9 {
                let fd = gi * centralDifference({ v in
                    var t = theta; t[k] = v
                    let (l, m, s) = split(t)
                    return MixtureReference.logPDF(x, l, m, s)
                }, at: theta[k], h: 1e-6)
                #expect(isClose(Double(dp[k][0]), fd, rtol: 1e-4, atol: 1e-3), "x=\(x) slot \(k): \(dp[k][0]) vs \(fd)")
            }
        }
    }

    @Test func samplerMomentsAndKolmogorovSmirnov() throws {
        let n = 100_000
        let x = try mixture.sample(slots, n: n, normals: TestNoise.normals(n, seed: 41), uniforms: TestNoise.uniforms(n, seed: 42))
        let mom = SampleMoments(x)
        let m = MixtureReference.mean(logits, locs), v = MixtureReference.variance(logits, locs, scales)
        #expect(abs(mom.mean - m) < 5 * mom.meanStandardError, "mean \(mom.mean) vs \(m)")
        #expect(abs(mom.variance - v) < 5 * mom.varianceStandardError, "variance \(mom.variance) vs \(v)")
        let d = kolmogorovSmirnov(x) { MixtureReference.cdf($0, logits, locs, scales) }
        #expect(d < ksCritical1Percent(n), "KS D = \(d)")
    }

    /// The pathwise estimate E[cos(x) dx/dphi] of dE[sin x]/dphi for all 9 slots against (1) the central
    /// difference of the Monte Carlo E[sin x] with common random numbers, paired per sample (the component
    /// choice jumps with the logits, so only the expectation, not each sample, is differentiable), and
    /// (2) the central difference of the exact E[sin x] = sum_j w_j sin(loc_j) exp(-scale_j^2/2); 5 standard errors.
    @Test func implicitGradientMatchesExpectationDifferences() throws {
        let n = 100_000
        let z = TestNoise.normals(n, seed: 51), u = TestNoise.uniforms(n, seed: 52)
        let perScalar = slots.map { [Float](repeating: $0[0], count: n) }
        let x = try mixture.sample(perScalar, n: n, normals: z, uniforms: u)
        let dp = try mixture.sampleVJP(perScalar, n: n, normals: z, uniforms: u, x: x, g: x.map { cos($0) })
        let theta = logits + locs + scales
        for k in 0..<9 {
            let h: Float = k < 3 ? 1e-2 : 1e-3
            var plus = slots, minus = slots
            plus[k][0] += h; minus[k][0] -= h
            let xp = try mixture.sample(plus, n: n, normals: z, uniforms: u)
            let xm = try mixture.sample(minus, n: n, normals: z, uniforms: u)
            let hd = Double(plus[k][0] - minus[k][0])
            let pathwise = dp[k].map(Double.init)
            let paired = (0..<n).map { pathwise[$0] - (sin(Double(xp[$0])) - sin(Double(xm[$0]))) / hd }
            let (diff, seDiff) = meanAndStandardError(paired)
            #expect(abs(diff) < 5 * seDiff + 2e-4, "slot \(k): pathwise - CRN difference \(diff) ± \(seDiff)")
            let (pw, se) = meanAndStandardError(pathwise)
            let exact = centralDifference({ v in
                var t = theta; t[k] = v
                let (l, m, s) = split(t)
                return MixtureReference.expectedSin(l, m, s)
            }, at: theta[k])
            #expect(abs(pw - exact) < 5 * se + 1e-5, "slot \(k): pathwise \(pw) ± \(se) vs exact \(exact)")
        }
    }

    @Test func centerIsTheMixtureMeanAndItsVJP() throws {
        let c = try mixture.center(slots, n: 1)
        #expect(isClose(Double(c[0]), MixtureReference.mean(logits, locs), rtol: 1e-6, atol: 1e-6))
        let dp = try mixture.centerVJP(slots, n: 1, g: [2])
        let theta = logits + locs + scales
        for k in 0..<9 {
            let fd = 2 * centralDifference({ v in
                var t = theta; t[k] = v
                let (l, m, _) = split(t)
                return MixtureReference.mean(l, m)
            }, at: theta[k])
            #expect(isClose(Double(dp[k][0]), fd, rtol: 1e-4, atol: 1e-5), "slot \(k): \(dp[k][0]) vs \(fd)")
        }
    }

    @Test func invalidScaleIsADomainError() throws {
        var bad = slots
        bad[7] = [-0.1]
        #expect {
            _ = try mixture.logProb([0.1], bad)
        } throws: { error in
            guard let e = error as? PluginCallError else { return false }
            return e.status == 3 && e.message.contains("component 1")
        }
    }
}
