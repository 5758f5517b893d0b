// The Student-t prior: heavy-tailed, location-scale, with a learnable degrees of freedom.
import PluginABI
import PluginSDK
#if canImport(Glibc)
import Glibc
#endif

struct StudentT: ScalarDistribution {
    static let family = FamilyInfo(
        id: "org.flipout3d.student-t", name: "Student-t", version: "1.0.0",
        description: "Student-t(df, loc, scale), density Gamma((df+1)/2) / (Gamma(df/2) sqrt(df pi) scale) (1 + z^2/df)^(-(df+1)/2) with z = (x - loc)/scale. A heavy-tailed prior (df = 1 is Cauchy; df -> infinity is Normal). A prior only: it cannot be sampled as a posterior.",
        capabilities: [],
        parameters: [
            ParameterSpec("df", "degrees of freedom, > 0", transform: .softplus, default: 3),
            ParameterSpec("loc", "location", transform: .identity, default: 0),
            ParameterSpec("scale", "scale, > 0", transform: .softplus, default: 1),
        ])

    init(hyperparameters: [Double]) throws {}

    func validate(_ p: Params) throws {
        guard p[0] > 0, p[0].isFinite, p[1].isFinite, p[2] > 0, p[2].isFinite else {
            throw PluginError.domain("Student-t: df and scale must be finite and > 0, loc finite (got df \(p[0]), loc \(p[1]), scale \(p[2]))")
        }
    }

    func logProb(_ x: Double, _ p: Params) -> Double {
        let nu = p[0], s = p[2], z = (x - p[1]) / s
        return Special.lgamma((nu + 1) / 2) - Special.lgamma(nu / 2) - 0.5 * log(nu * Double.pi) - log(s)
            - (nu + 1) / 2 * log1p(z * z / nu)
    }

    /// d/dx = -(nu + 1) z / (s (nu + z^2)); d/dloc = -d/dx; d/dscale = -1/s + (nu + 1) z^2 / (s (nu + z^2));
    /// d/dnu = (psi((nu+1)/2) - psi(nu/2) - 1/nu - log(1 + z^2/nu))/2 + (nu + 1) z^2 / (2 nu (nu + z^2)).
    func logProbGradient(_ x: Double, _ p: Params, _ dp: ParamGradient) -> Double {
        let nu = p[0], s = p[2], z = (x - p[1]) / s, z2 = z * z
        let dx = -(nu + 1) * z / (s * (nu + z2))
        dp[0] = 0.5 * (Special.digamma((nu + 1) / 2) - Special.digamma(nu / 2) - 1 / nu - log1p(z2 / nu))
            + (nu + 1) * z2 / (2 * nu * (nu + z2))
        dp[1] = -dx
        dp[2] = -1 / s + (nu + 1) * z2 / (s * (nu + z2))
        return dx
    }
}

@_cdecl("flipout_plugin_entry_v1")
public func flipoutPluginEntry(_ host: UnsafePointer<flipout_host>?) -> UnsafeRawPointer? {
    PluginExport.library(name: "Flipout3D Student-t", host: host, families: [StudentT.self])
}
