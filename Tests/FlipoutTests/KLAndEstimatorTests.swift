// Estimator rules (flipout refused for asymmetric posteriors, auto's choice) and the Monte Carlo KL's
// gradients against a Double finite difference with common random numbers.
import Testing
import Foundation
import Flipout3D
import TestSupport

private func family(_ target: String) throws -> DistributionFamily {
    try PluginLibrary.load(BuildProducts.plugin(target)).families[0]
}

@Suite struct KLAndEstimatorTests {
    @Test func flipoutIsRefusedForAnAsymmetricPosteriorWithTheReason() throws {
        let mixture = try family("FlipoutGaussianMixture"), normal = try family("FlipoutNormal")
        #expect {
            _ = try FlipoutConv3D(name: "enc0", index: 0, inChannels: 1, outChannels: 2, estimator: .flipout,
                                  posterior: try mixture.instantiate(), prior: try normal.instantiate(), seed: 1)
        } throws: { error in
            let m = "\(error)"
            return m.contains("enc0") && m.contains("symmetric") && m.contains("per-example")
        }
        let auto = try FlipoutConv3D(name: "a", index: 0, inChannels: 1, outChannels: 2, estimator: .auto,
                                     posterior: try mixture.instantiate(), prior: try normal.instantiate(), seed: 1)
        #expect(auto.estimator == .perExample)
        let autoNormal = try FlipoutConv3D(name: "b", index: 0, inChannels: 1, outChannels: 2, estimator: .auto,
                                           posterior: try normal.instantiate(), prior: try normal.instantiate(), seed: 1)
        #expect(autoNormal.estimator == .flipout)
    }

    @Test func priorOnlyFamilyCannotBeAPosterior() throws {
        let t = try family("FlipoutStudentT"), normal = try family("FlipoutNormal")
        #expect(throws: LayerError.self) {
            _ = try FlipoutConv3D(name: "x", index: 0, inChannels: 1, outChannels: 1,
                                  posterior: try t.instantiate(), prior: try normal.instantiate(), seed: 1)
        }
    }

    /// Monte Carlo KL = mean_k [log N(w_k; mu, s) - log t(w_k; df, 0, scale)], w_k = mu + s eps_k, with
    /// the layer's own eps. Its gradient with respect to (mu, rho) against a central difference in Double
    /// of the same estimate (common random numbers).
    @Test func monteCarloKLGradientMatchesFiniteDifferences() throws {
        let normal = try family("FlipoutNormal"), t = try family("FlipoutStudentT")
        let k = 3
        let layer = try FlipoutConv3D(name: "mc", index: 4, inChannels: 2, outChannels: 2, kernel: 3,
                                      posterior: try normal.instantiate(), prior: try t.instantiate(),
                                      priorValues: ["df": 4, "scale": 0.5], klMode: .monteCarlo(samples: k), seed: 5)
        #expect(!layer.weights.klIsAnalytic)
        let ctx = StepContext(seed: 2, step: 7)
        let kl = try layer.kl(gradientScale: 1, ctx)
        layer.finishBackward()
        // Replay the layer's noise: the KL stream draws K samples of normals in order.
        var stream = RandomStream(seed: 2, layer: 4, step: 7, purpose: .klNoise)
        let e = layer.weightCount
        let eps = (0..<k).map { _ in stream.normals(e).map(Double.init) }
        let mu = layer.weights.parameters[0].array.map(Double.init), rho = layer.weights.parameters[1].array.map(Double.init)
        func logT(_ x: Double) -> Double {   // Student-t(df 4, loc 0, scale 0.5), e.g. Murphy, MLPP (2.50)
            let nu = 4.0, s = 0.5, z = x / s
            return lgamma((nu + 1) / 2) - lgamma(nu / 2) - 0.5 * log(nu * .pi) - log(s) - (nu + 1) / 2 * log1p(z * z / nu)
        }
        func estimate(_ mu: [Double], _ rho: [Double]) -> Double {
            var total = 0.0
            for j in 0..<k { for i in 0..<e {
                let s = softplusD(rho[i]), w = mu[i] + s * eps[j][i]
                total += (-0.5 * eps[j][i] * eps[j][i] - log(s) - 0.5 * log(2 * .pi)) - logT(w)
            } }
            return total / Double(k)
        }
        #expect(isClose(kl, estimate(mu, rho), rtol: 1e-4, atol: 1e-2), "KL \(kl) vs \(estimate(mu, rho))")
        let h = 1e-5
        for i in [0, 5, 17, e - 1] {
            var a = mu, b = mu; a[i] += h; b[i] -= h
            let fdMu = (estimate(a, rho) - estimate(b, rho)) / (2 * h)
            var c = rho, d = rho; c[i] += h; d[i] -= h
            let fdRho = (estimate(mu, c) - estimate(mu, d)) / (2 * h)
            #expect(isClose(Double(layer.weights.gradients[0][i]), fdMu, rtol: 2e-3, atol: 2e-3), "dKL/dmu[\(i)]")
            #expect(isClose(Double(layer.weights.gradients[1][i]), fdRho, rtol: 2e-3, atol: 2e-3), "dKL/drho[\(i)]")
        }
    }

    @Test func checkpointWithAChangedPluginIsRefusedUnlessAllowed() throws {
        let t = try SmallRun.trainer(epochs: 1, dir: SmallRun.tempDir())
        _ = try t.trainEpoch()
        // Rewrite the recorded SHA-256 as if the .so had changed since training.
        var c = try Checkpoint.read(t.checkpointPath)
        let plugins = c.metadata["flipout3d.plugins"]!
        let sha = try PluginLibrary.load(BuildProducts.plugin("FlipoutNormal")).sha256
        c.metadata["flipout3d.plugins"] = plugins.replacingOccurrences(of: sha, with: String(repeating: "0", count: 64))
        try c.write(to: t.checkpointPath)
        #expect {
            _ = try TrainedModel.load(t.checkpointPath, registry: try SmallRun.registry())
        } throws: { error in
            "\(error)".contains("--allow-plugin-change") && "\(error)".contains("org.flipout3d.normal")
        }
        var warned = false
        _ = try TrainedModel.load(t.checkpointPath, registry: try SmallRun.registry(), allowPluginChange: true) { _ in warned = true }
        #expect(warned)
    }

    @Test func aPluginFailureNamesTheLayer() throws {
        let normal = try family("FlipoutNormal")
        let layer = try FlipoutConv3D(name: "enc7", index: 0, inChannels: 1, outChannels: 1,
                                      posterior: try normal.instantiate(), prior: try normal.instantiate(), seed: 1)
        layer.weights.parameters[0][3] = .nan
        layer.weights.refresh()
        let x = Tensor(shape: [2, 1, 4, 4, 4])
        #expect {
            _ = try layer.forward(x, StepContext(seed: 1, step: 1))
        } throws: { error in
            "\(error)".contains("layer enc7") && "\(error)".contains("org.flipout3d.normal")
        }
    }
}
