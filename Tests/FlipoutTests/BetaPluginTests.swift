// The Beta plugin against closed forms, a KS test, finite differences and implicit gradients with common random numbers.
import Testing
import Foundation
import Flipout3D
import TestSupport

/// Independent references, written from the textbook formulas.
enum BetaReference {
    /// Beta density, e.g. Johnson, Kotz & Balakrishnan vol. 2, ch. 25.
    static func logPDF(_ x: Double, _ a: Double, _ b: Double) -> Double {
        (a - 1) * log(x) + (b - 1) * log(1 - x) - (lgamma(a) + lgamma(b) - lgamma(a + b))
    }
    /// CDF for integer a, b: I_x(a, b) = sum_{j=a}^{a+b-1} C(a+b-1, j) x^j (1-x)^(a+b-1-j) (A&S 26.5.7 / binomial tail).
    static func cdfInteger(_ x: Double, _ a: Int, _ b: Int) -> Double {
        let m = a + b - 1
        var s = 0.0
        for j in a...m {
            let logC = lgamma(Double(m + 1)) - lgamma(Double(j + 1)) - lgamma(Double(m - j + 1))
            s += exp(logC + Double(j) * log(x) + Double(m - j) * log1p(-x))
        }
        return s
    }
    static func mean(_ a: Double, _ b: Double) -> Double { a / (a + b) }
    static func variance(_ a: Double, _ b: Double) -> Double { a * b / ((a + b) * (a + b) * (a + b + 1)) }
    /// E[x^2] = a(a + 1) / ((a + b)(a + b + 1)).
    static func secondMoment(_ a: Double, _ b: Double) -> Double { a * (a + 1) / ((a + b) * (a + b + 1)) }
}

@Suite struct BetaPluginTests {
    let beta: PluginHarness
    init() throws { beta = try PluginHarness.bundled("FlipoutBeta", "org.flipout3d.beta") }

    let xs: [Float] = [0.01, 0.3, 0.5, 0.72, 0.97]
    let alphas: [Float] = [0.4, 2, 1, 5.5, 3]
    let betas: [Float] = [1, 20, 0.5, 2, 1.3]

    @Test func logProbMatchesClosedForm() throws {
        let lp = try beta.logProb(xs, [alphas, betas])
        for i in xs.indices {
            let ref = BetaReference.logPDF(Double(xs[i]), Double(alphas[i]), Double(betas[i]))
            #expect(isClose(Double(lp[i]), ref, rtol: 1e-6, atol: 1e-5), "i=\(i): \(lp[i]) vs \(ref)")
        }
        #expect(try beta.logProb([0, 1, -0.5], [[2], [3]]) == [-.infinity, -.infinity, -.infinity])
    }

    @Test func logProbVJPMatchesFiniteDifferences() throws {
        let g: [Float] = [1, -0.5, 2, 0.25, 1.5]
        let (dx, dp) = try beta.logProbVJP(xs, [alphas, betas], g: g)
        for i in xs.indices {
            let x = Double(xs[i]), a = Double(alphas[i]), b = Double(betas[i]), gi = Double(g[i])
            let refs = [
                gi * centralDifference({ BetaReference.logPDF($0, a, b) }, at: x, h: 1e-7),
                gi * centralDifference({ BetaReference.logPDF(x, $0, b) }, at: a, h: 1e-6),
                gi * centralDifference({ BetaReference.logPDF(x, a, $0) }, at: b, h: 1e-6),
            ]
            let got = [dx[i], dp[0][i], dp[1][i]].map(Double.init)
            for k in 0..<3 { #expect(isClose(got[k], refs[k], rtol: 1e-4, atol: 1e-3), "i=\(i) k=\(k): \(got[k]) vs \(refs[k])") }
        }
    }

    @Test(arguments: [(2, 20), (3, 2)])
    func samplerMomentsAndKolmogorovSmirnov(a: Int, b: Int) throws {
        let n = 100_000, ad = Double(a), bd = Double(b)
        let u = TestNoise.uniforms(2 * n, seed: 31)
        let x = try beta.sample([[Float(a)], [Float(b)]], n: n, normals: [], uniforms: u)
        let mom = SampleMoments(x)
        #expect(abs(mom.mean - BetaReference.mean(ad, bd)) < 5 * mom.meanStandardError, "mean \(mom.mean)")
        #expect(abs(mom.variance - BetaReference.variance(ad, bd)) < 5 * mom.varianceStandardError, "variance \(mom.variance)")
        let d = kolmogorovSmirnov(x) { BetaReference.cdfInteger($0, a, b) }
        #expect(d < ksCritical1Percent(n), "KS D = \(d)")
        #expect(x.allSatisfy { $0 > 0 && $0 < 1 })
    }

    /// G1/(G1 + G2) with inverse-CDF Gammas is continuous in (alpha, beta) for fixed uniforms, so the
    /// implicit gradient must equal the difference quotient of the plugin's own sample with the same noise.
    @Test func implicitGradientMatchesCommonNoiseDifferences() throws {
        let n = 40
        let u = TestNoise.uniforms(2 * n, seed: 4)
        for (a, b) in [(Float(2), Float(20)), (0.4, 1.5), (6, 3)] {
            let params: [[Float]] = [[Float](repeating: a, count: n), [Float](repeating: b, count: n)]
            let x = try beta.sample(params, n: n, normals: [], uniforms: u)
            let dp = try beta.sampleVJP(params, n: n, normals: [], uniforms: u, x: x, g: [Float](repeating: 1, count: n))
            let ha = 1e-3 * a, hb = 1e-3 * b
            let xap = try beta.sample([[a + ha], [b]], n: n, normals: [], uniforms: u)
            let xam = try beta.sample([[a - ha], [b]], n: n, normals: [], uniforms: u)
            let xbp = try beta.sample([[a], [b + hb]], n: n, normals: [], uniforms: u)
            let xbm = try beta.sample([[a], [b - hb]], n: n, normals: [], uniforms: u)
            for i in 0..<n {
                let fdA = (Double(xap[i]) - Double(xam[i])) / Double(2 * ha)
                let fdB = (Double(xbp[i]) - Double(xbm[i])) / Double(2 * hb)
                let tol = 1e-4 * Double(x[i]) * (1 - Double(x[i])) / Double(min(a, b))
                #expect(isClose(Double(dp[0][i]), fdA, rtol: 3e-3, atol: tol), "a=\(a) b=\(b): dx/da \(dp[0][i]) vs \(fdA)")
                #expect(isClose(Double(dp[1][i]), fdB, rtol: 3e-3, atol: tol), "a=\(a) b=\(b): dx/db \(dp[1][i]) vs \(fdB)")
            }
        }
    }

    /// The pathwise estimate E[f'(x) dx/dtheta] for f(x) = x^2 against (1) the central difference of the
    /// Monte Carlo E[f(x)] with common random numbers (paired per sample, 5 standard errors), and
    /// (2) the central difference of the exact E[x^2] = a(a + 1)/((a + b)(a + b + 1)).
    @Test func implicitGradientMatchesExpectationDifferences() throws {
        let n = 100_000, a: Float = 2, b: Float = 5
        let u = TestNoise.uniforms(2 * n, seed: 6)
        let params: [[Float]] = [[Float](repeating: a, count: n), [Float](repeating: b, count: n)]
        let x = try beta.sample(params, n: n, normals: [], uniforms: u)
        let dp = try beta.sampleVJP(params, n: n, normals: [], uniforms: u, x: x, g: x.map { 2 * $0 })
        let h: Float = 0.01
        for k in 0..<2 {
            let plus = k == 0 ? [[a + h], [b]] : [[a], [b + h]], minus = k == 0 ? [[a - h], [b]] : [[a], [b - h]]
            let xp = try beta.sample(plus, n: n, normals: [], uniforms: u)
            let xm = try beta.sample(minus, n: n, normals: [], uniforms: u)
            let crn = (0..<n).map { (Double(xp[$0]) * Double(xp[$0]) - Double(xm[$0]) * Double(xm[$0])) / Double(2 * h) }
            let pathwise = dp[k].map(Double.init)
            let (diff, seDiff) = meanAndStandardError((0..<n).map { pathwise[$0] - crn[$0] })
            let (pw, se) = meanAndStandardError(pathwise)
            #expect(abs(diff) < 5 * seDiff + 1e-4 * abs(pw), "k=\(k): pathwise - CRN difference \(diff) ± \(seDiff)")
            let exact = k == 0
                ? centralDifference({ BetaReference.secondMoment($0, Double(b)) }, at: Double(a))
                : centralDifference({ BetaReference.secondMoment(Double(a), $0) }, at: Double(b))
            #expect(abs(pw - exact) < 5 * se, "k=\(k): pathwise \(pw) ± \(se) vs exact \(exact)")
        }
    }

    @Test func centerIsTheMeanAndItsVJP() throws {
        let c = try beta.center([alphas, betas], n: 5)
        let g: [Float] = [1, 2, -1, 0.5, 3]
        let dp = try beta.centerVJP([alphas, betas], n: 5, g: g)
        for i in 0..<5 {
            let a = Double(alphas[i]), b = Double(betas[i]), gi = Double(g[i])
            #expect(isClose(Double(c[i]), BetaReference.mean(a, b), rtol: 1e-6))
            #expect(isClose(Double(dp[0][i]), gi * centralDifference({ BetaReference.mean($0, b) }, at: a), rtol: 1e-4, atol: 1e-5))
            #expect(isClose(Double(dp[1][i]), gi * centralDifference({ BetaReference.mean(a, $0) }, at: b), rtol: 1e-4, atol: 1e-5))
        }
    }

    /// Issue 20, must show: Beta(0.005, 0.005) draws 10^6 samples through the C ABI (its Gammas fall
    /// below e^-3000; G1/(G1 + G2) was 0/0 for 7 in 20,000 draws). Every draw is in [0, 1]; the
    /// mean is 1/2; the mass below t (t^a / (a B(a, a)) to O(t), from Foundation's lgamma) and, by
    /// symmetry, above 1 - 1e-7 match within 5 standard errors.
    @Test func tinyShapesSampleAMillionDraws() throws {
        let n = 1_000_000, a = 0.005
        let u = TestNoise.uniforms(2 * n, seed: 20)
        let x = try beta.sample([[Float(a)], [Float(a)]], n: n, normals: [], uniforms: u)
        #expect(x.allSatisfy { $0 >= 0 && $0 <= 1 })
        let mean = x.reduce(0.0) { $0 + Double($1) } / Double(n)
        #expect(abs(mean - 0.5) < 5 * 0.5 / Double(n).squareRoot(), "mean \(mean)")
        let logB = 2 * lgamma(a) - lgamma(2 * a)
        for t in [1e-10, 1e-30] {
            let expected = exp(a * log(t) - log(a) - logB)
            let got = Double(x.filter { Double($0) < t }.count) / Double(n)
            let se = (expected * (1 - expected) / Double(n)).squareRoot()
            #expect(abs(got - expected) < 5 * se, "P(X < \(t)) = \(got) vs \(expected) ± \(se)")
        }
        let upper = Double(x.filter { $0 > 1 - 1e-7 }.count) / Double(n)
        let expectedUpper = exp(a * log(1e-7) - log(a) - logB)
        #expect(abs(upper - expectedUpper) < 5 * (expectedUpper * (1 - expectedUpper) / Double(n)).squareRoot(), "P(X > 1 - 1e-7) = \(upper) vs \(expectedUpper)")
        // Their gradients are finite too (0 where the draw rounded to 0 or 1).
        let dp = try beta.sampleVJP([[Float(a)], [Float(a)]], n: 20_000, normals: [], uniforms: Array(u[0..<40_000]), x: Array(x[0..<20_000]), g: [Float](repeating: 1, count: 20_000))
        #expect(dp.allSatisfy { $0.allSatisfy(\.isFinite) })
    }

    /// `flipout plugins sample` draws the same million through the binary.
    @Test func tinyShapesSampleThroughTheCLI() throws {
        let r = try FlipoutCLI.run(["plugins", "sample", "org.flipout3d.beta", "--param", "alpha=0.005", "--param", "beta=0.005", "-n", "1000000"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("draws     1000000"), "\(r.stdout)")
        let mean = r.stdout.split(separator: "\n").first { $0.hasPrefix("mean") }.flatMap { Double($0.split(separator: " ")[1]) }
        #expect(mean.map { abs($0 - 0.5) < 0.0025 } == true, "\(r.stdout)")
    }

    @Test func invalidParametersAreDomainErrors() throws {
        #expect {
            _ = try beta.logProb([0.1], [[1], [-2]])
        } throws: { error in
            guard let e = error as? PluginCallError else { return false }
            return e.status == 3 && e.message.contains("beta")
        }
    }
}
