// Empirical Bayes: prior parameters get KL gradients (checked by finite differences), train, and persist.
import Testing
import Foundation
import Flipout3D
import TestSupport

@Suite(.serialized) struct LearnPriorTests {
    /// d KL / d(prior unconstrained) from the layer vs a central difference of the closed form
    /// KL(N(mu, s^2) || N(m, t^2)) summed over weights, t = softplus(u). 24 channels: 15552 weights,
    /// so the plugin calls are split over sub-ranges with private stride-0 prior-gradient cells.
    @Test(arguments: [2, 24]) func priorGradientMatchesFiniteDifferences(channels: Int) throws {
        let normal = try PluginLibrary.load(BuildProducts.plugin("FlipoutNormal")).families[0]
        let layer = try FlipoutConv3D(name: "l", index: 0, inChannels: channels, outChannels: channels, kernel: 3,
                                      posterior: try normal.instantiate(), prior: try normal.instantiate(),
                                      priorValues: ["loc": 0.05, "scale": 0.3], learnPrior: true, seed: 3)
        _ = try layer.kl(gradientScale: 1, StepContext(seed: 1, step: 1))
        layer.finishBackward()
        let mu = layer.weights.parameters[0].array.map(Double.init)
        let s = layer.weights.parameters[1].array.map { softplusD(Double($0)) }
        func kl(_ m: Double, _ u: Double) -> Double {
            let t = softplusD(u)
            return zip(mu, s).reduce(0) { $0 + log(t / $1.1) + ($1.1 * $1.1 + ($1.0 - m) * ($1.0 - m)) / (2 * t * t) - 0.5 }
        }
        let m = Double(layer.weights.priorParameters[0]), u = Double(layer.weights.priorParameters[1])
        let h = 1e-5
        let fdLoc = (kl(m + h, u) - kl(m - h, u)) / (2 * h)
        let fdU = (kl(m, u + h) - kl(m, u - h)) / (2 * h)
        #expect(isClose(Double(layer.weights.priorGradients[0]), fdLoc, rtol: 1e-3, atol: 1e-2), "prior loc gradient")
        #expect(isClose(Double(layer.weights.priorGradients[1]), fdU, rtol: 1e-3, atol: 1e-2), "prior scale gradient")
    }

    @Test func learnedPriorTrainsAndIsRestoredFromTheCheckpoint() throws {
        var (m, _, _, _) = SmallRun.configs(epochs: 2)
        m.learnPrior = true
        m.priorParameters = ["scale": 1]
        let registry = try SmallRun.registry()
        let trainer = try SmallRun.trainer(epochs: 2, dir: SmallRun.tempDir(), model: m)
        try trainer.run()
        let model = trainer.model
        let learned = model.flipoutLayers[0].weights.priorValues
        let scale = learned.first { $0.0 == "scale" }!.1
        #expect(scale != 1, "the prior scale did not move from its initial value")
        let c = try Checkpoint.read(trainer.checkpointPath)
        #expect(c.tensor("enc0a.prior_unconstrained") != nil)
        let restored = try TrainedModel.load(trainer.checkpointPath, registry: registry)
        #expect(restored.model.flipoutLayers[0].weights.priorValues.map(\.1) == learned.map(\.1))
        // The report names every layer's learned prior, not only the first.
        let layers = try #require(trainer.learnedPriors)
        let text = try #require(trainer.learnedPriorSummary)
        #expect(layers.map(\.layer) == model.flipoutLayers.map(\.weights.name))
        #expect(Set(layers.flatMap { $0.values.map(\.value) }).count > 1, "the layers' priors moved apart")
        for (l, layer) in zip(layers, model.flipoutLayers) {
            #expect(l.values.map(\.value) == layer.weights.priorValues.map(\.1))
            #expect(text.contains("learned prior \(l.layer) (\(l.family)): ") && text.contains("scale="), "\(text)")
        }
        // Without --learn-prior there is nothing to report.
        #expect(try SmallRun.trainer(epochs: 1, dir: SmallRun.tempDir()).learnedPriors == nil)
    }
}
