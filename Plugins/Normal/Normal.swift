// The Normal family: posterior (per-weight loc, softplus scale) and prior (broadcast), analytic KL.
import PluginABI
import PluginSDK
#if canImport(Glibc)
import Glibc
#endif

struct Normal: ScalarDistribution, BlockDistribution {
    static let family = FamilyInfo(
        id: "org.flipout3d.normal", name: "Normal", version: "1.0.0",
        description: "Normal(loc, scale). As a posterior: per-weight loc and scale = softplus(rho), initialised like TFP (loc ~ N(0, 0.1), rho ~ N(-3, 0.1)). As a prior: broadcast loc and scale. Sampled as loc + scale * eps; symmetric, so Flipout is valid.",
        capabilities: [.sample, .symmetric, .gaussian],
        parameters: [
            ParameterSpec("loc", "location (mean)", transform: .identity, default: 0, initJitter: 0.1, role: .location),
            ParameterSpec("scale", "standard deviation, > 0", transform: .softplus, default: 0.048_587_35, initJitter: 0.1, prior: 1, role: .scale),
        ],
        klFamilies: [KLFamily("org.flipout3d.normal", parameterSlots: 2)])

    init(hyperparameters: [Double]) throws {}

    func validate(_ p: Params) throws {
        guard p[1] > 0, p[1].isFinite, p[0].isFinite else {
            throw PluginError.domain("Normal: scale must be finite and > 0, loc finite (got loc \(p[0]), scale \(p[1]))")
        }
    }

    func logProb(_ x: Double, _ p: Params) -> Double {
        let z = (x - p[0]) / p[1]
        return -0.5 * z * z - log(p[1]) - Special.logSqrt2Pi
    }

    func logProbGradient(_ x: Double, _ p: Params, _ dp: ParamGradient) -> Double {
        let s = p[1], z = (x - p[0]) / s
        dp[0] = z / s
        dp[1] = (z * z - 1) / s
        return -z / s
    }

    func sample(_ p: Params, normals: UnsafePointer<Float>, uniforms: UnsafePointer<Float>) -> Double {
        p[0] + p[1] * Double(normals[0])
    }

    func sampleGradient(_ x: Double, _ p: Params, normals: UnsafePointer<Float>, uniforms: UnsafePointer<Float>, _ dp: ParamGradient) {
        dp[0] = 1
        dp[1] = Double(normals[0])
    }

    func center(_ p: Params) -> Double { p[0] }
    func centerGradient(_ p: Params, _ dp: ParamGradient) { dp[0] = 1 }

    private func checkQ(_ q: Params) throws {
        guard q[0].isFinite, q[1] > 0, q[1].isFinite else {
            throw PluginError.domain("Normal KL: the posterior needs a finite loc and a finite scale > 0 (got loc \(q[0]), scale \(q[1]))")
        }
    }

    // KL(N(mu, s^2) || N(m, t^2)) = log(t/s) + (s^2 + (mu - m)^2) / (2 t^2) - 1/2
    func kl(qFamily: String, q: Params, p: Params) throws -> Double {
        let mu = q[0], s = q[1], m = p[0], t = p[1]
        try checkQ(q)
        let d = mu - m
        return log(t / s) + (s * s + d * d) / (2 * t * t) - 0.5
    }

    func klGradient(qFamily: String, q: Params, p: Params, dq: ParamGradient, dp: ParamGradient) throws {
        let mu = q[0], s = q[1], m = p[0], t = p[1]
        try checkQ(q)
        let d = mu - m, t2 = t * t
        dq[0] = d / t2
        dq[1] = -1 / s + s / t2
        dp[0] = -d / t2
        dp[1] = 1 / t - (s * s + d * d) / (t2 * t)
    }
}

// Block kernels for the passes every training step runs (validate, the KL's gradient): the
// scalar methods' expressions over the block, without a throw per scalar. Same operations in
// the same order, so the same bits (BlockKernelTests compares them).
extension Normal {
    func validate(block p: ScalarBlock, _ n: Int) -> Bool {
        let v = p.base
        var ok = true
        for j in 0..<n {
            let loc = v[2 * j], s = v[2 * j + 1]
            ok = ok && s > 0 && s.isFinite && loc.isFinite
        }
        return ok
    }

    func klGradient(block qFamily: String, q: ScalarBlock, p: ScalarBlock, _ n: Int, dq: ScalarBlock, dp: ScalarBlock) -> Bool {
        let (qv, pv, gq, gp) = (q.base, p.base, dq.base, dp.base)
        var ok = true
        for j in 0..<n {
            let mu = qv[2 * j], s = qv[2 * j + 1], m = pv[2 * j], t = pv[2 * j + 1]
            ok = ok && mu.isFinite && s > 0 && s.isFinite   // checkQ
            let d = mu - m, t2 = t * t
            gq[2 * j] = d / t2
            gq[2 * j + 1] = -1 / s + s / t2
            gp[2 * j] = -d / t2
            gp[2 * j + 1] = 1 / t - (s * s + d * d) / (t2 * t)
        }
        return ok
    }
}

@_cdecl("flipout_plugin_entry_v1")
public func flipoutPluginEntry(_ host: UnsafePointer<flipout_host>?) -> UnsafeRawPointer? {
    PluginExport.library(name: "Flipout3D Normal", host: host, families: [Normal.self])
}
