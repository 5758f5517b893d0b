// End to end: seeded training on small synthetic volumes, pinned losses, resume equals uninterrupted.
import Testing
import Foundation
import Flipout3D
import TestSupport

struct SmallRun {
    static func configs(epochs: Int) -> (ModelConfig, TrainingConfig) {
        var m = ModelConfig()
        m.width = 4
        var t = TrainingConfig()
        t.seed = 42; t.epochs = epochs; t.batchSize = 2; t.volumeSize = 16
        t.trainVolumes = 4; t.validationVolumes = 2; t.testVolumes = 2; t.oodVolumes = 2; t.evaluationSamples = 2
        return (m, t)
    }
    static func registry() throws -> PluginRegistry {
        try PluginRegistry(PluginSearch(explicitPaths: [], environmentPath: nil, bundledDirectory: BuildProducts.directory.path))
    }
    static func trainer(epochs: Int, dir: String) throws -> Trainer {
        let (m, t) = configs(epochs: epochs)
        let model = try SegmentationNet(m, registry: try registry(), seed: t.seed)
        let trainer = try Trainer(model: model, training: t, dataset: try t.makeDataset(), runDirectory: dir)
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
        // Pinned (seed 42, width 4, 16^3, Normal/Normal, flipout): changes here mean the numerics changed.
        let pinned: [Double] = PinnedLosses.values
        if !pinned.isEmpty {
            for (l, p) in zip(losses, pinned) { #expect(abs(l - p) < 1e-4 * max(1, abs(p)), "loss \(l) vs pinned \(p)") }
        }
        let csv = try String(contentsOfFile: (a.runDirectory as NSString).appendingPathComponent("metrics.csv"), encoding: .utf8)
        #expect(csv.split(separator: "\n").count == 3)
    }

    @Test func resumeEqualsUninterrupted() throws {
        let straight = try SmallRun.trainer(epochs: 2, dir: SmallRun.tempDir())
        try straight.run()
        let dir = SmallRun.tempDir()
        let first = try SmallRun.trainer(epochs: 2, dir: dir)
        _ = try first.trainEpoch()
        let resumed = try Trainer.resume(checkpoint: first.checkpointPath, registry: try SmallRun.registry())
        resumed.showProgress = false
        #expect(resumed.epochsDone == 1)
        try resumed.run()
        #expect(resumed.records.map(\.loss) == straight.records.map(\.loss))
        for (p, q) in zip(resumed.model.trainable, straight.model.trainable) {
            #expect(p.name == q.name)
            #expect(p.value.array == q.value.array, "\(p.name) differs after resume")
        }
    }

    @Test func corruptCheckpointIsAClearError() throws {
        let dir = SmallRun.tempDir()
        let path = dir + "/bad.safetensors"
        try Data([1, 2, 3, 4, 5, 6, 7, 8, 9]).write(to: URL(fileURLWithPath: path))
        #expect {
            _ = try Trainer.resume(checkpoint: path, registry: try SmallRun.registry())
        } throws: { error in
            "\(error)".contains(path) && "\(error)".contains("header")
        }
    }
}

enum PinnedLosses {
    static let values: [Double] = [0.949413, 0.878453]
}
