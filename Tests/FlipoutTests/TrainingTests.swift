// End to end: seeded U-Net training on small prepared synthetic cases, pinned losses, a corrupt checkpoint refused.
import Testing
import Foundation
import Flipout3D
import TestSupport

/// A small U-Net run on prepared synthetic cases: 2 levels, width 4, 16^3 patches, batch 2, 2 steps per epoch.
enum SmallRun {
    static let plan = PreprocessingPlan(spacing: [1, 1, 1], channelNames: SyntheticCases.channelNames,
                                        channels: [.zScore(mean: 0, std: 1), .zScore(mean: 0, std: 1)],
                                        labels: ["background": 0, "structureA": 1, "structureB": 2], classCount: 3)

    static func configs(epochs: Int, seed: UInt64 = 9) -> (ModelConfig, UNetConfig, TrainingConfig, PatchTrainingConfig) {
        var m = ModelConfig(); m.bayesian = true; m.width = 4
        var u = UNetConfig(); u.levels = 2; u.width = 4; u.inputChannels = 2; u.classCount = 3
        var t = TrainingConfig(); t.seed = seed; t.epochs = epochs; t.batchSize = 2; t.evaluationSamples = 1
        var p = PatchTrainingConfig(); p.patchSize = [16, 16, 16]; p.stepsPerEpoch = 2; p.data = "(in memory)"
        return (m, u, t, p)
    }

    static func registry() throws -> PluginRegistry {
        try PluginRegistry(PluginSearch(explicitPaths: [], environmentPath: nil, bundledDirectory: BuildProducts.directory.path))
    }

    static func trainer(epochs: Int, dir: String, seed: UInt64 = 9, validation: Int = 0, model: ModelConfig? = nil) throws -> PatchTrainer {
        let (m, u, t, p) = configs(epochs: epochs, seed: seed)
        let cases = SyntheticCases(seed: 1, count: 3 + validation).prepared()
        let trainer = try PatchTrainer(model: try UNet(model ?? m, shape: u, registry: try registry(), seed: seed), training: t, patch: p,
                                       plan: plan, train: Array(cases.prefix(3)), validation: Array(cases.dropFirst(3)), runDirectory: dir)
        trainer.showProgress = false
        return trainer
    }

    static func tempDir() -> String {
        let d = NSTemporaryDirectory() + "flipout-test-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }
}

@Suite(.serialized) struct TrainingTests {
    @Test func seededTrainingIsReproducibleAndLossesArePinned() throws {
        let a = try SmallRun.trainer(epochs: 2, dir: SmallRun.tempDir())
        try a.run()
        let b = try SmallRun.trainer(epochs: 2, dir: SmallRun.tempDir())
        try b.run()
        #expect(a.records.map(\.loss) == b.records.map(\.loss))
        let losses = a.records.map(\.loss)
        print("pinned losses:", losses.map { String(format: "%.6f", $0) })
        #expect(losses.allSatisfy { $0.isFinite && $0 > 0 })
        // Pinned (seed 9, U-Net 2 levels width 4, 16^3 patches, Normal/Normal, flipout): changes here mean the numerics changed.
        for (l, p) in zip(losses, PinnedLosses.values) { #expect(abs(l - p) < 1e-4 * max(1, abs(p)), "loss \(l) vs pinned \(p)") }
        #expect(losses.count == PinnedLosses.values.count)
        let csv = try String(contentsOfFile: (a.runDirectory as NSString).appendingPathComponent("metrics.csv"), encoding: .utf8)
        #expect(csv.split(separator: "\n").count == 3)
    }

    // Resume equals uninterrupted is shown through the built binary: TrainDataCLITests.resumeExtendsBitForBit.

    @Test func corruptCheckpointIsAClearError() throws {
        let dir = SmallRun.tempDir()
        let path = dir + "/bad.safetensors"
        try Data([1, 2, 3, 4, 5, 6, 7, 8, 9]).write(to: URL(fileURLWithPath: path))
        #expect {
            _ = try PatchTrainer.resume(checkpoint: path, registry: try SmallRun.registry())
        } throws: { error in
            "\(error)".contains(path) && "\(error)".contains("header")
        }
    }
}

enum PinnedLosses {
    static let values: [Double] = [2.100853, 2.053100]
}
