// The Beta family: a posterior on (0, 1) sampled through two Gammas with implicit reparameterization gradients.
import PluginABI
import PluginSDK
#if canImport(Glibc)
import Glibc
#endif

struct Beta: ScalarDistribution, BlockDistribution {
    static let family = FamilyInfo(
        id: "org.flipout3d.beta", name: "Beta", version: "1.2.0",
        description: "Beta(alpha, beta) on (0, 1), density x^(alpha-1) (1-x)^(beta-1) / B(alpha, beta). A posterior for positive weights (defaults 20 and 200 start them small, mean 1/11, sd/mean 0.21; alpha and beta are learned in log space, and log alpha starts with N(0, 0.4^2) jitter so the weights start at different means). Sampled as G1/(G1 + G2) with G1 = P^-1(alpha, u1), G2 = P^-1(beta, u2) from two uniforms (inverse incomplete gamma), with implicit reparameterization gradients through both Gammas (dP/da analytic: P's series differentiated term by term, or the derivative of its continued fraction), in log space where the Gammas underflow (Beta(0.005, 0.005) samples). Not symmetric: Flipout does not apply. Pair it with the Gamma prior for an analytic KL.",
        capabilities: [.sample, .implicitReparameterization, .uniformNoise, .positiveSupport],
        parameters: [
            // exp, not softplus: softplus is the identity for large values, so beta = 20 would move by
            // Adam's absolute step (~lr) and stay frozen; in log space every step is relative (~lr %).
            // The jitter on alpha starts every weight at its own mean (alpha/(alpha+beta) spread about
            // x e^(+-0.4)), so a filter bank's filters start different (docs/setups.md, "Beta").
            // (20, 200): mean 1/11 with sd/mean 0.21, the relative noise of a Normal first layer
            // (sigma 0.0486 against He-normal |mu| ~ 0.22); (2, 20) starts at sd/mean 0.66.
            ParameterSpec("alpha", "first shape > 0", transform: .exp, default: 20, initJitter: 0.4),
            ParameterSpec("beta", "second shape > 0", transform: .exp, default: 200),
        ])

    init(hyperparameters: [Double]) throws {}

    var normalsPerScalar: Int { 0 }
    var uniformsPerScalar: Int { 2 }

    func validate(_ p: Params) throws {
        guard p[0] > 0, p[0].isFinite, p[1] > 0, p[1].isFinite else {
            throw PluginError.domain("Beta: alpha and beta must be finite and > 0 (got alpha \(p[0]), beta \(p[1]))")
        }
    }

    func logProb(_ x: Double, _ p: Params) -> Double {
        guard x > 0, x < 1 else { return -.infinity }
        return (p[0] - 1) * log(x) + (p[1] - 1) * log1p(-x) - Special.logBeta(p[0], p[1])
    }

    /// Outside the support (where log_prob is -inf) every derivative is reported as 0.
    func logProbGradient(_ x: Double, _ p: Params, _ dp: ParamGradient) -> Double {
        let a = p[0], b = p[1]
        guard x > 0, x < 1 else { return 0 }
        let psiAB = Special.digamma(a + b)
        dp[0] = log(x) - Special.digamma(a) + psiAB
        dp[1] = log1p(-x) - Special.digamma(b) + psiAB
        return (a - 1) / x - (b - 1) / (1 - x)
    }

    /// The two uniforms of a scalar; nil outside (0, 1) (a NaN sample, so a domain error).
    private func uniformPair(_ uniforms: UnsafePointer<Float>) -> (Double, Double)? {
        let u1 = Double(uniforms[0]), u2 = Double(uniforms[1])
        guard u1 > 0, u1 < 1, u2 > 0, u2 < 1 else { return nil }
        return (u1, u2)
    }

    /// x = G1/(G1 + G2) with G1 = P^-1(alpha, u1), G2 = P^-1(beta, u2). Where both Gammas fall below
    /// Double's normal range (alpha = beta = 0.005 puts half of each Gamma's mass below e^-139), in
    /// log space: x = 1/(1 + exp(log G2 - log G1)).
    func sample(_ p: Params, normals: UnsafePointer<Float>, uniforms: UnsafePointer<Float>) -> Double {
        guard let (u1, u2) = uniformPair(uniforms) else { return .nan }
        let g1 = Special.gammaPInverse(p[0], u1), g2 = Special.gammaPInverse(p[1], u2)
        if max(g1, g2) >= Double.leastNormalMagnitude { return g1 / (g1 + g2) }
        return 1 / (1 + exp(Special.logGammaPInverse(p[1], u2) - Special.logGammaPInverse(p[0], u1)))
    }

    /// x = 1/(1 + exp(L2 - L1)) with L = log G: dx/dalpha = x (1 - x) dL1/dalpha and
    /// dx/dbeta = -x (1 - x) dL2/dbeta, with d log G/da = -(dP/da)(a, G) / (G p(G; a)), the implicit
    /// derivative of the Gamma quantile (Figurnov et al. 2018; `Special.gammaQuantileLogDerivativeA`,
    /// analytic, from log G so that it holds where G underflows). The Gammas are recomputed from the
    /// uniforms (x alone does not determine them). 0 where x rounds to 0 or 1 (the limit).
    func sampleGradient(_ x: Double, _ p: Params, normals: UnsafePointer<Float>, uniforms: UnsafePointer<Float>, _ dp: ParamGradient) {
        guard let (u1, u2) = uniformPair(uniforms) else { dp[0] = .nan; dp[1] = .nan; return }
        let l1 = Special.logGammaPInverse(p[0], u1), l2 = Special.logGammaPInverse(p[1], u2)
        let e = exp(-abs(l1 - l2)), w = e / ((1 + e) * (1 + e))  // x (1 - x)
        guard w > 0 else { return }
        dp[0] = w * Special.gammaQuantileLogDerivativeA(p[0], logZ: l1)
        dp[1] = -w * Special.gammaQuantileLogDerivativeA(p[1], logZ: l2)
    }

    func center(_ p: Params) -> Double { p[0] / (p[0] + p[1]) }
    func centerGradient(_ p: Params, _ dp: ParamGradient) {
        let s = p[0] + p[1]
        dp[0] = p[1] / (s * s)
        dp[1] = -p[0] / (s * s)
    }
}

@_cdecl("flipout_plugin_entry_v1")
public func flipoutPluginEntry(_ host: UnsafePointer<flipout_host>?) -> UnsafeRawPointer? {
    PluginExport.library(name: "Flipout3D Beta", host: host, families: [Beta.self])
}
