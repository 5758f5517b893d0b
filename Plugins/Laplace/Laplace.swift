// The Laplace family: symmetric posterior (inverse-CDF sampling) and prior, analytic KL from Normal and Laplace.
import PluginABI
import PluginSDK
#if canImport(Glibc)
import Glibc
#endif

struct Laplace: ScalarDistribution, BlockDistribution {
    static let normalID = "org.flipout3d.normal"
    static let laplaceID = "org.flipout3d.laplace"

    static let family = FamilyInfo(
        id: laplaceID, name: "Laplace", version: "1.1.1",
        description: "Laplace(loc, scale), density exp(-|x - loc| / scale) / (2 scale). As a prior it favours sparse weights; as a posterior it is sampled by the inverse CDF of one uniform, x = loc - scale * sign(u - 1/2) * log(1 - 2|u - 1/2|), and is symmetric about loc, so Flipout is valid. Analytic KL(Normal || Laplace) (PyTorch _kl_normal_laplace) and KL(Laplace || Laplace).",
        capabilities: [.sample, .symmetric, .uniformNoise],
        parameters: [
            ParameterSpec("loc", "location (median and mean)", transform: .identity, default: 0, initJitter: 0.1),
            ParameterSpec("scale", "scale b > 0; the standard deviation is b * sqrt(2). The posterior starts at b = 0.0344 = 0.0486 / sqrt(2), the Normal posterior's starting standard deviation", transform: .softplus, default: 0.034_356_44, initJitter: 0.1, prior: 0.5),
        ],
        klFamilies: [KLFamily(normalID, parameterSlots: 2), KLFamily(laplaceID, parameterSlots: 2)])

    init(hyperparameters: [Double]) throws {}

    var normalsPerScalar: Int { 0 }
    var uniformsPerScalar: Int { 1 }

    func validate(_ p: Params) throws {
        guard p[0].isFinite, p[1] > 0, p[1].isFinite else {
            throw PluginError.domain("Laplace: loc must be finite and scale finite and > 0 (got loc \(p[0]), scale \(p[1]))")
        }
    }

    func logProb(_ x: Double, _ p: Params) -> Double {
        -log(2 * p[1]) - abs(x - p[0]) / p[1]
    }

    func logProbGradient(_ x: Double, _ p: Params, _ dp: ParamGradient) -> Double {
        let b = p[1], d = x - p[0]
        let sg: Double = d > 0 ? 1 : (d < 0 ? -1 : 0) // subgradient 0 at the kink
        dp[0] = sg / b
        dp[1] = -1 / b + abs(d) / (b * b)
        return -sg / b
    }

    /// The standard Laplace draw at u in (0, 1), -sign(u - 1/2) log(1 - 2|u - 1/2|): log(2u) below
    /// u = 1/4, where 2u - 1 would lose u's digits in Double (u = 1e-38 gave log1p(-1) = -inf).
    @inline(__always) private func standardDraw(_ u: Double) -> Double {
        let c = u - 0.5
        if u < 0.25 { return log(2 * u) }
        return -(c > 0 ? 1 : (c < 0 ? -1 : 0)) * log1p(-2 * abs(c))
    }

    /// Inverse CDF of one uniform u in (0, 1); NaN (a domain error) for u outside (0, 1).
    func sample(_ p: Params, normals: UnsafePointer<Float>, uniforms: UnsafePointer<Float>) -> Double {
        let u = Double(uniforms[0])
        guard u > 0, u < 1 else { return .nan }
        return p[0] + p[1] * standardDraw(u)
    }

    func sampleGradient(_ x: Double, _ p: Params, normals: UnsafePointer<Float>, uniforms: UnsafePointer<Float>, _ dp: ParamGradient) {
        let u = Double(uniforms[0])
        dp[0] = 1
        dp[1] = u > 0 && u < 1 ? standardDraw(u) : .nan // (x - loc) / scale
    }

    func center(_ p: Params) -> Double { p[0] }
    func centerGradient(_ p: Params, _ dp: ParamGradient) { dp[0] = 1 }

    private func checkQ(_ family: String, _ q: Params) throws {
        guard q[0].isFinite, q[1] > 0, q[1].isFinite else {
            throw PluginError.domain("Laplace KL: posterior \(family) needs finite loc and finite scale > 0 (got loc \(q[0]), scale \(q[1]))")
        }
    }

    /// KL(N(mu, s^2) || Laplace(m, b)) = log(b/s) + A/b - (1 + log(pi/2))/2 with
    /// A = E|X - m| = s sqrt(2/pi) exp(-d^2/(2 s^2)) + d erf(d/(s sqrt 2)), d = mu - m (PyTorch _kl_normal_laplace).
    /// KL(Laplace(mu, c) || Laplace(m, b)) = log(b/c) + |d|/b + (c/b) exp(-|d|/c) - 1.
    func kl(qFamily: String, q: Params, p: Params) throws -> Double {
        try checkQ(qFamily, q)
        let mu = q[0], s = q[1], m = p[0], b = p[1], d = mu - m
        switch qFamily {
        case Self.normalID:
            let a = s * (2 / Double.pi).squareRoot() * exp(-d * d / (2 * s * s)) + d * erf(d / (s * Special.sqrt2))
            return log(b / s) + a / b - 0.5 * (1 + log(Double.pi / 2))
        case Self.laplaceID:
            let ad = abs(d)
            return log(b / s) + ad / b + (s / b) * exp(-ad / s) - 1
        default:
            throw PluginError.unsupported("Laplace has no analytic KL from \(qFamily)")
        }
    }

    func klGradient(qFamily: String, q: Params, p: Params, dq: ParamGradient, dp: ParamGradient) throws {
        try checkQ(qFamily, q)
        let mu = q[0], s = q[1], m = p[0], b = p[1], d = mu - m
        switch qFamily {
        case Self.normalID:
            // dA/dd = erf(d / (s sqrt 2)), dA/ds = sqrt(2/pi) exp(-d^2/(2 s^2)).
            let e = exp(-d * d / (2 * s * s)), r = erf(d / (s * Special.sqrt2))
            let a = s * (2 / Double.pi).squareRoot() * e + d * r
            dq[0] = r / b
            dq[1] = -1 / s + (2 / Double.pi).squareRoot() * e / b
            dp[0] = -r / b
            dp[1] = 1 / b - a / (b * b)
        case Self.laplaceID:
            let ad = abs(d), sg: Double = d > 0 ? 1 : (d < 0 ? -1 : 0), e = exp(-ad / s)
            dq[0] = sg * (1 - e) / b
            dq[1] = -1 / s + e * (1 + ad / s) / b
            dp[0] = -dq[0]
            dp[1] = 1 / b - ad / (b * b) - s * e / (b * b)
        default:
            throw PluginError.unsupported("Laplace has no analytic KL from \(qFamily)")
        }
    }
}

@_cdecl("flipout_plugin_entry_v1")
public func flipoutPluginEntry(_ host: UnsafePointer<flipout_host>?) -> UnsafeRawPointer? {
    PluginExport.library(name: "Flipout3D Laplace", host: host, families: [Laplace.self])
}
