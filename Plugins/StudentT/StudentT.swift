// The Student-t prior: heavy-tailed, location-scale, with a learnable degrees of freedom. Its
// gradients are derived by the SDK (reverse-mode autodiff of logProb; Special.lgamma carries its
// derivative, digamma): no hand-written partials. Tests/FlipoutTests/StudentTPluginTests.swift
// keeps the hand-derived ones as the reference they must equal.
import PluginABI
import PluginSDK
import _Differentiation
#if canImport(Glibc)
import Glibc
#endif

struct StudentT: DifferentiablePrior, BlockDistribution {
    static let family = FamilyInfo(
        id: "org.flipout3d.student-t", name: "Student-t", version: "1.0.0",
        description: "Student-t(df, loc, scale), density Gamma((df+1)/2) / (Gamma(df/2) sqrt(df pi) scale) (1 + z^2/df)^(-(df+1)/2) with z = (x - loc)/scale. A heavy-tailed prior (df = 1 is Cauchy; df -> infinity is Normal). A prior only: it cannot be sampled as a posterior.",
        capabilities: [],
        parameters: [
            ParameterSpec("df", "degrees of freedom, > 0", transform: .softplus, default: 3, role: .shape),
            ParameterSpec("loc", "location", transform: .identity, default: 0),
            ParameterSpec("scale", "scale, > 0", transform: .softplus, default: 1, role: .scale),
        ])

    init(hyperparameters: [Double]) throws {}

    func validate(_ p: Params) throws {
        guard p[0] > 0, p[0].isFinite, p[1].isFinite, p[2] > 0, p[2].isFinite else {
            throw PluginError.domain("Student-t: df and scale must be finite and > 0, loc finite (got df \(p[0]), loc \(p[1]), scale \(p[2]))")
        }
    }

    @differentiable(reverse)
    func logProb(_ x: Double, _ theta: Theta) -> Double {
        let nu = theta[0], s = theta[2], z = (x - theta[1]) / s
        return Special.lgamma((nu + 1) / 2) - Special.lgamma(nu / 2) - 0.5 * log(nu * Double.pi) - log(s)
            - (nu + 1) / 2 * log1p(z * z / nu)
    }
}

@_cdecl("flipout_plugin_entry_v1")
public func flipoutPluginEntry(_ host: UnsafePointer<flipout_host>?) -> UnsafeRawPointer? {
    PluginExport.library(name: "Flipout3D Student-t", host: host, families: [StudentT.self])
}
