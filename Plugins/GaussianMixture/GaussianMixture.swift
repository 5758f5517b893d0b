// The per-weight Gaussian-mixture posterior: K components, softmax weights, implicit reparameterization gradients.
import PluginABI
import PluginSDK
#if canImport(Glibc)
import Glibc
#endif

/// Slots, in order: logit[0..<K], loc[0..<K], scale[0..<K] (3K in all).
struct GaussianMixture: ScalarDistribution, BlockDistribution {
    static let family = FamilyInfo(
        id: "org.flipout3d.gaussian-mixture", name: "Gaussian mixture", version: "1.1.0",
        description: "A mixture of K Normal components per weight: weights softmax(logit), locations loc, scales softplus(rho). Sampled with one uniform (picks the component by the weights) and one normal (draws within it); gradients by implicit reparameterization, dx/dphi = -(dF/dphi)(x) / p(x) with F = sum_k w_k Phi((x - loc_k) / scale_k) (Figurnov et al. 2018). Initialisation: the host draws ONE location per weight (He-normal in its convolution layers) shared by all components, and each component adds its own N(0, init_jitter^2) offset (0.01), so the components start close but not identical and every sampled network is near the same network. Not symmetric (components have different means), so Flipout does not apply: use per-example or shared-sample reparameterization. No analytic KL: the host uses Monte Carlo.",
        capabilities: [.sample, .implicitReparameterization, .uniformNoise],
        parameters: [
            ParameterSpec("logit", "unnormalised log mixture weight of each component", transform: .identity, default: 0, initJitter: 0.1, countHyperparameter: "components"),
            ParameterSpec("loc", "location of each component", transform: .identity, default: 0, initJitter: 0.01, countHyperparameter: "components"),
            ParameterSpec("scale", "standard deviation of each component, > 0", transform: .softplus, default: 0.048_6, initJitter: 0.1, countHyperparameter: "components"),
        ],
        hyperparameters: [HyperparameterSpec("components", "number of mixture components K", default: 2, minimum: 1, maximum: 8, isInteger: true)])

    let k: Int

    init(hyperparameters: [Double]) throws {
        let value = hyperparameters.first ?? 2
        guard value == value.rounded(), value >= 1, value <= 8 else {
            throw PluginError.invalidArgument("Gaussian mixture: components must be an integer in 1...8 (got \(value))")
        }
        k = Int(value)
    }

    var parameterSlotCount: Int { 3 * k }
    var normalsPerScalar: Int { 1 }
    var uniformsPerScalar: Int { 1 }

    func validate(_ p: Params) throws {
        for j in 0..<k where !(p[j].isFinite && p[k + j].isFinite && p[2 * k + j] > 0 && p[2 * k + j].isFinite) {
            throw PluginError.domain("Gaussian mixture: component \(j) needs finite logit and loc and a finite scale > 0 (got logit \(p[j]), loc \(p[k + j]), scale \(p[2 * k + j]))")
        }
    }

    /// Calls `body` with scratch for K log weights and K per-component terms (stack allocated).
    @inline(__always) private func withScratch<R>(_ body: (UnsafeMutableBufferPointer<Double>, UnsafeMutableBufferPointer<Double>) -> R) -> R {
        withUnsafeTemporaryAllocation(of: Double.self, capacity: 2 * k) { buf in
            body(UnsafeMutableBufferPointer(rebasing: buf[0..<k]), UnsafeMutableBufferPointer(rebasing: buf[k..<(2 * k)]))
        }
    }

    /// logW[j] = log softmax(logit)_j.
    @inline(__always) private func logWeights(_ p: Params, _ logW: UnsafeMutableBufferPointer<Double>) {
        for j in 0..<k { logW[j] = p[j] }
        let norm = Special.logSumExp(UnsafeBufferPointer(logW))
        for j in 0..<k { logW[j] -= norm }
    }

    /// terms[j] = log w_j + log N(x; loc_j, scale_j); returns log p(x) = logsumexp(terms).
    @inline(__always) private func componentTerms(_ x: Double, _ p: Params, _ logW: UnsafeMutableBufferPointer<Double>,
                                                  _ terms: UnsafeMutableBufferPointer<Double>) -> Double {
        logWeights(p, logW)
        for j in 0..<k {
            let s = p[2 * k + j], z = (x - p[k + j]) / s
            terms[j] = logW[j] - 0.5 * z * z - log(s) - Special.logSqrt2Pi
        }
        return Special.logSumExp(UnsafeBufferPointer(terms))
    }

    func logProb(_ x: Double, _ p: Params) -> Double {
        withScratch { logW, terms in componentTerms(x, p, logW, terms) }
    }

    /// With responsibilities r_j = w_j N_j / p: d/dx = -sum r_j z_j / s_j, d/dlogit_j = r_j - w_j,
    /// d/dloc_j = r_j z_j / s_j, d/dscale_j = r_j (z_j^2 - 1) / s_j.
    func logProbGradient(_ x: Double, _ p: Params, _ dp: ParamGradient) -> Double {
        withScratch { logW, terms in
            let lp = componentTerms(x, p, logW, terms)
            var dx = 0.0
            for j in 0..<k {
                let s = p[2 * k + j], z = (x - p[k + j]) / s, r = exp(terms[j] - lp)
                dp[j] = r - exp(logW[j])
                dp[k + j] = r * z / s
                dp[2 * k + j] = r * (z * z - 1) / s
                dx -= r * z / s
            }
            return dx
        }
    }

    /// The component whose cumulative weight first exceeds u (the last one if rounding leaves u above all).
    private func component(_ p: Params, _ u: Double) -> Int {
        withScratch { logW, _ in
            logWeights(p, logW)
            var cumulative = 0.0
            for j in 0..<k {
                cumulative += exp(logW[j])
                if u < cumulative { return j }
            }
            return k - 1
        }
    }

    func sample(_ p: Params, normals: UnsafePointer<Float>, uniforms: UnsafePointer<Float>) -> Double {
        let u = Double(uniforms[0])
        guard u > 0, u < 1 else { return .nan }
        let j = component(p, u)
        return p[k + j] + p[2 * k + j] * Double(normals[0])
    }

    /// dx/dphi = -(dF/dphi)(x) / p(x): dx/dloc_j = r_j, dx/dscale_j = r_j z_j,
    /// dx/dlogit_j = -w_j (Phi(z_j) - F(x)) / p(x), with r_j = w_j N_j(x) / p(x).
    func sampleGradient(_ x: Double, _ p: Params, normals: UnsafePointer<Float>, uniforms: UnsafePointer<Float>, _ dp: ParamGradient) {
        withScratch { logW, terms in
            let lp = componentTerms(x, p, logW, terms)
            var cdf = 0.0
            for j in 0..<k { cdf += exp(logW[j]) * Special.normalCDF((x - p[k + j]) / p[2 * k + j]) }
            let invDensity = exp(-lp)
            for j in 0..<k {
                let z = (x - p[k + j]) / p[2 * k + j], r = exp(terms[j] - lp), w = exp(logW[j])
                dp[k + j] = r
                dp[2 * k + j] = r * z
                dp[j] = -w * (Special.normalCDF(z) - cdf) * invDensity
            }
        }
    }

    /// The mixture mean sum_j w_j loc_j.
    func center(_ p: Params) -> Double {
        withScratch { logW, _ in
            logWeights(p, logW)
            var m = 0.0
            for j in 0..<k { m += exp(logW[j]) * p[k + j] }
            return m
        }
    }

    /// d mean/d loc_j = w_j, d mean/d logit_j = w_j (loc_j - mean).
    func centerGradient(_ p: Params, _ dp: ParamGradient) {
        withScratch { logW, _ in
            logWeights(p, logW)
            var m = 0.0
            for j in 0..<k { m += exp(logW[j]) * p[k + j] }
            for j in 0..<k {
                let w = exp(logW[j])
                dp[j] = w * (p[k + j] - m)
                dp[k + j] = w
            }
        }
    }
}

@_cdecl("flipout_plugin_entry_v1")
public func flipoutPluginEntry(_ host: UnsafePointer<flipout_host>?) -> UnsafeRawPointer? {
    PluginExport.library(name: "Flipout3D Gaussian mixture", host: host, families: [GaussianMixture.self])
}
