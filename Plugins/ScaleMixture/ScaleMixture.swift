// The scale-mixture prior of Bayes by Backprop: pi N(0, sigma1^2) + (1 - pi) N(0, sigma2^2), by log-sum-exp.
import PluginABI
import PluginSDK
#if canImport(Glibc)
import Glibc
#endif

struct ScaleMixture: ScalarDistribution, BlockDistribution {
    static let family = FamilyInfo(
        id: "org.flipout3d.scale-mixture", name: "Scale mixture", version: "1.1.0",
        description: "The scale-mixture prior of Blundell et al. (2015), p(w) = pi N(w; 0, sigma1^2) + (1 - pi) N(w; 0, sigma2^2) with sigma1 > sigma2 and sigma2 << 1 (paper grid: -log sigma1 in {0, 1, 2}, -log sigma2 in {6, 7, 8}, pi in {1/4, 1/2, 3/4}). Evaluated exactly with log-sum-exp, with no epsilon inside the log (which would cap the penalty). A prior only: it cannot be sampled as a posterior.",
        capabilities: [],
        parameters: [
            ParameterSpec("pi", "weight of the wide component, in [0, 1]", transform: .sigmoid, default: 0.5),
            ParameterSpec("sigma1", "standard deviation of the wide component, > 0", transform: .softplus, default: 1),
            ParameterSpec("sigma2", "standard deviation of the narrow component, > 0", transform: .softplus, default: 0.002_478_752_2),
        ])

    init(hyperparameters: [Double]) throws {}

    func validate(_ p: Params) throws {
        guard p[0] >= 0, p[0] <= 1, p[1] > 0, p[1].isFinite, p[2] > 0, p[2].isFinite else {
            throw PluginError.domain("Scale mixture: pi must be in [0, 1] and sigma1, sigma2 finite and > 0 (got pi \(p[0]), sigma1 \(p[1]), sigma2 \(p[2]))")
        }
    }

    @inline(__always) private func logNormal(_ w: Double, _ s: Double) -> Double {
        let z = w / s
        return -0.5 * z * z - log(s) - Special.logSqrt2Pi
    }

    /// (log N1, log N2, t1 = log(pi N1), t2 = log((1 - pi) N2), log p = logsumexp(t1, t2)); log 0 = -inf
    /// is fine in log-sum-exp (pi = 0 or 1), and log p is -inf where both terms are (x infinite).
    @inline(__always) private func parts(_ w: Double, _ p: Params) -> (n1: Double, n2: Double, t1: Double, t2: Double, lp: Double) {
        let n1 = logNormal(w, p[1]), n2 = logNormal(w, p[2])
        let t1 = log(p[0]) + n1, t2 = log1p(-p[0]) + n2
        let m = max(t1, t2)
        guard m > -.infinity else { return (n1, n2, t1, t2, -.infinity) }
        return (n1, n2, t1, t2, m + log(exp(t1 - m) + exp(t2 - m)))
    }

    func logProb(_ x: Double, _ p: Params) -> Double { parts(x, p).lp }

    /// Everything in log space: responsibilities r1 = exp(t1 - log p), r2 = exp(t2 - log p) (0 for a
    /// component of weight 0, where pi N1 / p would be 0 * inf), d/dpi = (N1 - N2) / p =
    /// exp(log N1 - log p) - exp(log N2 - log p), d/dsigma_k = r_k (w^2/sigma_k^2 - 1) / sigma_k,
    /// d/dw = -w (r1/sigma1^2 + r2/sigma2^2). At pi = 0, sigma2 = e^-6, w = 0.1: d/dw = -16275.5
    /// while d/dpi = N1/N2 - 1 = e^808 is beyond Double (a domain error if it is wanted).
    func logProbGradient(_ x: Double, _ p: Params, _ dp: ParamGradient) -> Double {
        let (n1, n2, t1, t2, lp) = parts(x, p)
        let r1 = exp(t1 - lp), r2 = exp(t2 - lp)
        let s1 = p[1], s2 = p[2]
        dp[0] = exp(n1 - lp) - exp(n2 - lp)
        dp[1] = r1 == 0 ? 0 : r1 * (x * x / (s1 * s1) - 1) / s1
        dp[2] = r2 == 0 ? 0 : r2 * (x * x / (s2 * s2) - 1) / s2
        return -x * (r1 / (s1 * s1) + r2 / (s2 * s2))
    }
}

@_cdecl("flipout_plugin_entry_v1")
public func flipoutPluginEntry(_ host: UnsafePointer<flipout_host>?) -> UnsafeRawPointer? {
    PluginExport.library(name: "Flipout3D Scale mixture", host: host, families: [ScaleMixture.self])
}
