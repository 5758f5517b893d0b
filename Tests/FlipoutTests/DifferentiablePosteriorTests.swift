// A posterior written as differentiable Swift (DifferentiablePosterior): sample, center and
// log_prob once, every VJP derived; built with scripts/build-plugin and held to plugins check.
import Testing
import Foundation
import Flipout3D
import TestSupport

enum DerivedPosterior {
    static let source = """
    import PluginABI
    import _Differentiation
    #if canImport(Glibc)
    import Glibc
    #endif

    struct DerivedNormal: DifferentiablePosterior {
        static let family = FamilyInfo(
            id: "org.example.derived-normal", name: "Normal (derived gradients)", version: "0.1.0",
            description: "Normal(loc, scale) as loc + scale * eps, every gradient derived by autodiff.",
            capabilities: [.sample, .symmetric],
            parameters: [
                ParameterSpec("loc", "location", default: 0, initJitter: 0.1),
                ParameterSpec("scale", "standard deviation, > 0", transform: .softplus, default: 0.05, initJitter: 0.1, prior: 1),
            ])
        init(hyperparameters: [Double]) throws {}
        func validate(_ p: Params) throws {
            guard p[1] > 0, p[1].isFinite, p[0].isFinite else { throw PluginError.domain("scale must be > 0 and finite, loc finite") }
        }
        @differentiable(reverse)
        func logProb(_ x: Double, _ theta: Theta) -> Double {
            let z = (x - theta[0]) / theta[1]
            return -0.5 * z * z - log(theta[1]) - Special.logSqrt2Pi
        }
        @differentiable(reverse)
        func sample(_ noise: Noise, _ theta: Theta) -> Double { theta[0] + theta[1] * noise.normal(0) }
        @differentiable(reverse)
        func center(_ theta: Theta) -> Double { theta[0] }
    }

    @_cdecl("flipout_plugin_entry_v1")
    public func flipoutPluginEntry(_ host: UnsafePointer<flipout_host>?) -> UnsafeRawPointer? {
        PluginExport.library(name: "Derived posterior", host: host, families: [DerivedNormal.self])
    }
    """

    static let built: Result<String, Error> = Result(catching: {
        let dir = try Fixtures.temporaryDirectory("flipout-derived-posterior")
        try source.write(to: dir.appendingPathComponent("DerivedNormal.swift"), atomically: true, encoding: .utf8)
        let r = try Subprocess.run(Fixtures.packageRoot.appendingPathComponent("scripts/build-plugin").path,
                                   ["-o", "libDerivedNormal.so", "DerivedNormal.swift"], in: dir)
        guard r.status == 0 else { throw FixtureError("scripts/build-plugin failed (\(r.status)):\n\(r.stderr)\(r.stdout)") }
        return dir.appendingPathComponent("libDerivedNormal.so").path
    })
}

@Suite struct DifferentiablePosteriorTests {
    @Test func derivedSampleAndCenterGradientsAreTheReparameterizationOnes() throws {
        let h = PluginHarness(try PluginLibrary.load(try DerivedPosterior.built.get()).families[0].instantiate())
        let locs: [Float] = [0, 1, -2, 0.5], scales: [Float] = [1, 0.1, 3, 0.01], eps: [Float] = [0.3, -1.2, 2, 0]
        let g: [Float] = [1, 2, -1, 0.5]
        let x = try h.sample([locs, scales], n: 4, normals: eps, uniforms: [])
        let dp = try h.sampleVJP([locs, scales], n: 4, normals: eps, uniforms: [], x: x, g: g)
        let dc = try h.centerVJP([locs, scales], n: 4, g: g)
        for i in 0..<4 {
            #expect(abs(x[i] - (locs[i] + scales[i] * eps[i])) < 1e-6)
            #expect(abs(dp[0][i] - g[i]) < 1e-6 && abs(dp[1][i] - g[i] * eps[i]) < 1e-6, "dx/dloc = 1, dx/dscale = eps")
            #expect(abs(dc[0][i] - g[i]) < 1e-6 && dc[1][i] == 0)
        }
    }

    @Test func passesPluginsCheck() throws {
        let (status, report, _) = try checkReport(try DerivedPosterior.built.get())
        #expect(status == 0 && report.failures == 0, "\(report.results.filter { $0.outcome == .fail })")
        #expect(Set(report.results.map(\.check)).isSuperset(of: ["sample", "sample_vjp", "center_vjp", "symmetry", "noise"]))
    }
}
