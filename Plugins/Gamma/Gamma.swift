// The Gamma family: positive prior and posterior (inverse-CDF sampling, implicit gradients), analytic KL from Beta and Gamma.
import PluginABI
import PluginSDK
#if canImport(Glibc)
import Glibc
#endif

struct Gamma: ScalarDistribution, BlockDistribution {
    static let betaID = "org.flipout3d.beta"
    static let gammaID = "org.flipout3d.gamma"

    static let family = FamilyInfo(
        id: gammaID, name: "Gamma", version: "1.1.0",
        description: "Gamma(concentration a, rate r) on x > 0, density r^a x^(a-1) exp(-r x) / Gamma(a). A prior for positive weights (e.g. a non-negative filter bank); as a posterior it is sampled by inverting the regularized incomplete gamma function at one uniform, x = P^-1(a, u) / r, with implicit reparameterization gradients dx/da = -(dP/da)(r x) / (r p(r x)) (dP/da analytic: P's series differentiated term by term, or the derivative of its continued fraction; Wilson-Hilferty above a = 1e8) and dx/dr = -x/r. Not symmetric: Flipout does not apply. Analytic KL(Beta || Gamma) (PyTorch _kl_beta_gamma) and KL(Gamma || Gamma).",
        capabilities: [.sample, .implicitReparameterization, .uniformNoise, .positiveSupport],
        parameters: [
            ParameterSpec("concentration", "shape a > 0", transform: .softplus, default: 2),
            ParameterSpec("rate", "inverse scale r > 0; the mean is a / r", transform: .softplus, default: 20),
        ],
        klFamilies: [KLFamily(betaID, parameterSlots: 2), KLFamily(gammaID, parameterSlots: 2)])

    init(hyperparameters: [Double]) throws {}

    var normalsPerScalar: Int { 0 }
    var uniformsPerScalar: Int { 1 }

    func validate(_ p: Params) throws {
        guard p[0] > 0, p[0].isFinite, p[1] > 0, p[1].isFinite else {
            throw PluginError.domain("Gamma: concentration and rate must be finite and > 0 (got concentration \(p[0]), rate \(p[1]))")
        }
    }

    func logProb(_ x: Double, _ p: Params) -> Double {
        let a = p[0], r = p[1]
        guard x > 0, x < .infinity else { return -.infinity }
        return a * log(r) + (a - 1) * log(x) - r * x - Special.lgamma(a)
    }

    /// Outside the support (x <= 0, where log_prob is -inf) every derivative is reported as 0.
    func logProbGradient(_ x: Double, _ p: Params, _ dp: ParamGradient) -> Double {
        let a = p[0], r = p[1]
        guard x > 0 else { return 0 }
        dp[0] = log(r) + log(x) - Special.digamma(a)
        dp[1] = a / r - x
        return (a - 1) / x - r
    }

    /// x = P^-1(a, u) / r; in log space where the standard Gamma draw underflows Double.
    func sample(_ p: Params, normals: UnsafePointer<Float>, uniforms: UnsafePointer<Float>) -> Double {
        let u = Double(uniforms[0])
        guard u > 0, u < 1 else { return .nan }
        let z = Special.gammaPInverse(p[0], u)
        if z >= Double.leastNormalMagnitude { return z / p[1] }
        return exp(Special.logGammaPInverse(p[0], u) - log(p[1]))
    }

    /// Implicit reparameterization (Figurnov et al. 2018) at the standard-Gamma point z = r x:
    /// dx/da = x d log z/da with d log z/da = -(dP/da)(a, z) / (z p(z; a)) analytic
    /// (`Special.gammaQuantileLogDerivativeA`), and dx/dr = -x/r. Where x is not a normal float
    /// (it underflowed), log z is recomputed from the uniform.
    func sampleGradient(_ x: Double, _ p: Params, normals: UnsafePointer<Float>, uniforms: UnsafePointer<Float>, _ dp: ParamGradient) {
        let a = p[0], r = p[1]
        dp[1] = -x / r
        if !(x >= 0) { dp[0] = .nan; return }
        if x >= Double(Float.leastNormalMagnitude) {
            dp[0] = x * Special.gammaQuantileLogDerivativeA(a, logZ: log(r) + log(x))
            return
        }
        let u = Double(uniforms[0])
        guard u > 0, u < 1 else { dp[0] = .nan; return }
        let logZ = Special.logGammaPInverse(a, u), scale = exp(logZ - log(r))
        dp[0] = scale == 0 ? 0 : scale * Special.gammaQuantileLogDerivativeA(a, logZ: logZ)
    }

    func center(_ p: Params) -> Double { p[0] / p[1] }
    func centerGradient(_ p: Params, _ dp: ParamGradient) {
        dp[0] = 1 / p[1]
        dp[1] = -p[0] / (p[1] * p[1])
    }

    private func checkQ(_ family: String, _ q: Params) throws {
        guard q[0] > 0, q[0].isFinite, q[1] > 0, q[1].isFinite else {
            throw PluginError.domain("Gamma KL: posterior \(family) parameters must be finite and > 0 (got \(q[0]), \(q[1]))")
        }
    }

    /// KL(Beta(al, be) || Gamma(k, r)) = -H(Beta) + lgamma(k) - k log r - (k - 1)(psi(al) - psi(al + be)) + r al/(al + be)
    /// with H(Beta) = log B(al, be) - (al - 1) psi(al) - (be - 1) psi(be) + (al + be - 2) psi(al + be) (PyTorch _kl_beta_gamma).
    /// KL(Gamma(a, s) || Gamma(k, r)) = k log(s/r) + lgamma(k) - lgamma(a) + (a - k) psi(a) + (r - s) a/s (PyTorch _kl_gamma_gamma).
    func kl(qFamily: String, q: Params, p: Params) throws -> Double {
        try checkQ(qFamily, q)
        let k = p[0], r = p[1]
        switch qFamily {
        case Self.betaID:
            let al = q[0], be = q[1], ab = al + be
            let entropy = Special.logBeta(al, be) - (al - 1) * Special.digamma(al) - (be - 1) * Special.digamma(be) + (ab - 2) * Special.digamma(ab)
            return -entropy + Special.lgamma(k) - k * log(r) - (k - 1) * (Special.digamma(al) - Special.digamma(ab)) + r * al / ab
        case Self.gammaID:
            let a = q[0], s = q[1]
            return k * log(s / r) + Special.lgamma(k) - Special.lgamma(a) + (a - k) * Special.digamma(a) + (r - s) * a / s
        default:
            throw PluginError.unsupported("Gamma has no analytic KL from \(qFamily)")
        }
    }

    func klGradient(qFamily: String, q: Params, p: Params, dq: ParamGradient, dp: ParamGradient) throws {
        try checkQ(qFamily, q)
        let k = p[0], r = p[1]
        switch qFamily {
        case Self.betaID:
            let al = q[0], be = q[1], ab = al + be
            let tA = Special.trigamma(al), tB = Special.trigamma(be), tAB = Special.trigamma(ab)
            dq[0] = (al - 1) * tA - (ab - 2) * tAB - (k - 1) * (tA - tAB) + r * be / (ab * ab)
            dq[1] = (be - 1) * tB - (ab - 2) * tAB + (k - 1) * tAB - r * al / (ab * ab)
            dp[0] = Special.digamma(k) - log(r) - (Special.digamma(al) - Special.digamma(ab))
            dp[1] = -k / r + al / ab
        case Self.gammaID:
            let a = q[0], s = q[1]
            dq[0] = (a - k) * Special.trigamma(a) + r / s - 1
            dq[1] = k / s - r * a / (s * s)
            dp[0] = log(s / r) + Special.digamma(k) - Special.digamma(a)
            dp[1] = -k / r + a / s
        default:
            throw PluginError.unsupported("Gamma has no analytic KL from \(qFamily)")
        }
    }
}

@_cdecl("flipout_plugin_entry_v1")
public func flipoutPluginEntry(_ host: UnsafePointer<flipout_host>?) -> UnsafeRawPointer? {
    PluginExport.library(name: "Flipout3D Gamma", host: host, families: [Gamma.self])
}
