// Per-parameter learning rates in Adam, and the positive-weight policy that sets them for the U-Net.
import Foundation
import Testing
import Flipout3D
import TestSupport

@Suite struct PositiveLearningRateTests {
    @Test func adamScalesEachParametersStepByItsMultiplier() throws {
        func run(_ scales: [Float]?) throws -> [[Float]] {
            let ps = (0..<3).map { i in NamedParameter(name: "p\(i)", value: Tensor(shape: [5], values: [Float](repeating: 1, count: 5)),
                                                      gradient: Tensor(shape: [5], values: (0..<5).map { Float($0 + i) - 2 })) }
            let adam = Adam(parameters: ps, learningRate: 0.01)
            adam.learningRateScales = scales
            for _ in 0..<3 { try adam.update() }
            return ps.map(\.value.array)
        }
        let plain = try run(nil), ones = try run([1, 1, 1]), scaled = try run([1, 4, 0.5])
        #expect(plain == ones)
        #expect(scaled[0] == plain[0])
        // Adam's step does not depend on the gradient's size, so a multiplier scales the displacement exactly.
        for (p, q) in zip(plain[1], scaled[1]) { #expect(abs((q - 1) - 4 * (p - 1)) < 1e-6) }
        for (p, q) in zip(plain[2], scaled[2]) { #expect(abs((q - 1) - 0.5 * (p - 1)) < 1e-6) }
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
        let dir = try Fixtures.temporaryDirectory("positive-lr")
        let data = dir.appendingPathComponent("synth").path
        _ = try FlipoutCLI.run(["datasets", "export-synthetic", data, "--cases", "2", "--test-cases", "0"])
        let small = ["--steps-per-epoch", "1", "--patch", "16,16,16", "--width", "2", "--levels", "2", "--samples", "1", "--quiet", "--epochs", "1"]
        let run = dir.appendingPathComponent("r").path
        let r = try FlipoutCLI.run(["train", "--data", data, "--run", run, "--posterior", "org.flipout3d.beta", "--prior", "org.flipout3d.gamma",
                                    "--positive-lr-scale", "3"] + small)
        #expect(r.status == 0, "\(r.stderr)")
        let c = try Checkpoint.read(run + "/checkpoint.safetensors")
        let training = try JSONSerialization.jsonObject(with: Data(c.metadata[CheckpointKey.training]!.utf8)) as! [String: Any]
        #expect(training["positiveLearningRateScale"] as? Double == 3)
        let bad = try FlipoutCLI.run(["train", "--data", data, "--positive-lr-scale", "0"] + small)
        #expect(bad.status == 64 && bad.stderr.contains("--positive-lr-scale"), "\(bad.stderr)")
        let binary = try FlipoutCLI.run(["train", "--positive-lr-scale", "2", "--epochs", "1"])
        #expect(binary.status == 64 && binary.stderr.contains("applies to --data"), "\(binary.stderr)")
    }
}
