// Per-parameter learning rates in Adam, and the positive-weight policy that sets them for the U-Net.
import Foundation
import Testing
import Flipout3D
import TestSupport

@Suite struct PositiveLearningRateTests {
    @Test func adamScalesEachParametersStepByItsMultiplier() throws {
        var u = UNetConfig(); u.levels = 1; u.width = 2; u.inputChannels = 1; u.classCount = 2
        var m = ModelConfig(); m.bayesian = false
        func scale(_ k: Int) -> Float { [1, 4, 0.5][k % 3] }
        /// Every parameter's displacement after three Adam steps with fixed, mixed-sign gradients.
        func displacements(_ scaled: Bool) throws -> [[Float]] {
            let ps = try UNet(m, shape: u, registry: try SmallRun.registry(), seed: 3).trainable
            let before = ps.map(\.value.array)
            let adam = Adam(parameters: ps, learningRate: 0.01)
            if scaled { adam.learningRateScales = ps.indices.map(scale) }
            for _ in 0..<3 {
                for (k, p) in ps.enumerated() { for i in 0..<p.gradient.count { p.gradient.data[i] = Float((i + k) % 5) - 2 } }
                try adam.update()
            }
            return zip(ps, before).map { p, b in zip(p.value.array, b).map { $0 - $1 } }
        }
        let plain = try displacements(false), scaled = try displacements(true)
        #expect(plain.count >= 3 && plain.contains { $0.contains { $0 != 0 } })
        // Adam's step does not depend on the gradient's size, so a multiplier scales the displacement.
        for (k, (p, q)) in zip(plain, scaled).enumerated() {
            for (a, b) in zip(p, q) { #expect(abs(b - scale(k) * a) <= 1e-6 + 1e-4 * abs(a), "parameter \(k): \(b) against \(scale(k)) x \(a)") }
        }
    }

    @Test func policyScalesOnlyThePositiveLayersPosteriorParameters() throws {
        var m = ModelConfig(); m.posterior = "org.flipout3d.beta"; m.prior = "org.flipout3d.gamma"; m.customLayers = .first
        var u = UNetConfig(); u.levels = 2; u.width = 2; u.inputChannels = 2; u.classCount = 3
        let net = try UNet(m, shape: u, registry: try SmallRun.registry(), seed: 3)
        let scales = PositiveWeightPolicy.learningRateScales(net.trainable, layers: net.layers, scale: 5)
        let scaled = zip(net.trainable, scales).filter { $0.1 != 1 }.map(\.0.name)
        #expect(scaled == ["enc0a.alpha_unconstrained", "enc0a.beta_unconstrained"], "\(scaled)")
        #expect(scales.filter { $0 != 1 }.allSatisfy { $0 == 5 })
        // A Normal network has nothing to scale.
        let normal = try UNet(ModelConfig(), shape: u, registry: try SmallRun.registry(), seed: 3)
        #expect(PositiveWeightPolicy.learningRateScales(normal.trainable, layers: normal.layers, scale: 5).allSatisfy { $0 == 1 })
    }

    @Test func positiveLRScaleOptionIsCheckedAndRecorded() throws {
        let (dir, data) = try TinyFolderRun.folder("positive-lr")
        let small = TinyFolderRun.options
        let run = dir.appendingPathComponent("r").path
        let r = try FlipoutCLI.run(["train", "--data", data, "--run", run, "--positive-lr-scale", "3"] + TinyFolderRun.beta + small)
        #expect(r.status == 0, "\(r.stderr)")
        let c = try Checkpoint.read(run + "/checkpoint.safetensors")
        let training = try JSONSerialization.jsonObject(with: Data(c.metadata[CheckpointKey.training]!.utf8)) as! [String: Any]
        #expect(training["positiveLearningRateScale"] as? Double == 3)
        let bad = try FlipoutCLI.run(["train", "--data", data, "--positive-lr-scale", "0"] + small)
        #expect(bad.status == 64 && bad.stderr.contains("--positive-lr-scale"), "\(bad.stderr)")
    }
}
