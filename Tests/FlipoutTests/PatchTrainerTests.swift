// Patch training on prepared synthetic cases: bit-reproducible runs, checkpoint round trip with plan and patch size (C3), tiled prediction, the default patch size plan.
import Foundation
import Testing
import TestSupport
import Flipout3D

/// SyntheticCases z-scored per channel, on their own grids (an identity source geometry).
func preparedSyntheticCases(_ count: Int, seed: UInt64 = 1) -> [PreparedCase] {
    SyntheticCases(seed: seed, count: count).all().map { c in
        let image = c.image.copy(), shape = Array(c.image.shape.dropFirst()), v = shape.reduce(1, *)
        for ch in 0..<image.shape[0] {
            let p = image.data + ch * v
            let mean = (0..<v).reduce(0.0) { $0 + Double(p[$1]) } / Double(v)
            let sd = ((0..<v).reduce(0.0) { $0 + (Double(p[$1]) - mean) * (Double(p[$1]) - mean) } / Double(v)).squareRoot()
            for i in 0..<v { p[i] = Float((Double(p[i]) - mean) / sd) }
        }
        let a = Affine(c.affine)
        return PreparedCase(id: c.id, image: image, label: c.label,
                            geometry: CaseGeometry(sourceShape: shape, sourceAffine: a, preparedShape: shape, preparedAffine: a))
    }
}

private let syntheticPlan = PreprocessingPlan(spacing: [1, 1, 1], channelNames: SyntheticCases.channelNames,
                                              channels: [.zScore(mean: 0, std: 1), .zScore(mean: 0, std: 1)],
                                              labels: ["background": 0, "structureA": 1, "structureB": 2], classCount: 3)

private func patchTrainer(dir: String, seed: UInt64 = 9, epochs: Int = 1, validation: Int = 0) throws -> PatchTrainer {
    var m = ModelConfig(); m.bayesian = true
    var u = UNetConfig(); u.levels = 2; u.width = 4; u.inputChannels = 2; u.classCount = 3
    var t = TrainingConfig(); t.seed = seed; t.epochs = epochs; t.batchSize = 2; t.evaluationSamples = 1
    var p = PatchTrainingConfig(); p.patchSize = [16, 16, 16]; p.stepsPerEpoch = 2; p.data = "(in memory)"
    let cases = preparedSyntheticCases(3 + validation)
    let trainer = try PatchTrainer(model: try UNet(m, shape: u, registry: try SmallRun.registry(), seed: seed), training: t, patch: p,
                                   plan: syntheticPlan, train: Array(cases.prefix(3)), validation: Array(cases.dropFirst(3)), runDirectory: dir)
    trainer.showProgress = false
    return trainer
}

@Test func patchTrainingIsBitReproducible() throws {
    let dir = try Fixtures.temporaryDirectory("patch-repro")
    let a = try patchTrainer(dir: dir.appendingPathComponent("a").path), b = try patchTrainer(dir: dir.appendingPathComponent("b").path)
    let c = try patchTrainer(dir: dir.appendingPathComponent("c").path, seed: 10)
    try a.run(); try b.run(); try c.run()
    #expect(a.records[0].loss == b.records[0].loss && a.records[0].kl == b.records[0].kl)
    for (p, q) in zip(a.model.trainable, b.model.trainable) { #expect(p.value.array == q.value.array, "\(p.name) differs between equal seeds") }
    #expect(zip(a.model.trainable, c.model.trainable).contains { $0.value.array != $1.value.array })
    // KL scale: beta / training voxels of the prepared cases.
    #expect(a.patch.trainingVoxels == preparedSyntheticCases(3).reduce(0) { $0 + $1.image.count / 2 })
}

@Test func unetCheckpointRoundTripsPlanPatchSizeAndProbabilities() throws {
    let dir = try Fixtures.temporaryDirectory("patch-ckpt")
    let t = try patchTrainer(dir: dir.path, validation: 1)
    try t.run()
    #expect(t.records[0].validationDice.count == 3)
    let loaded = try TrainedModel.load(t.checkpointPath, registry: try SmallRun.registry())
    #expect(loaded.plan == syntheticPlan && loaded.patchSize == [16, 16, 16] && loaded.epochs == 1)
    let x = Tensor(shape: [1, 2, 16, 16, 16], values: testValues(2 * 4096, seed: 5))
    let ctx = StepContext(seed: 3, step: -1)
    let p = try loaded.probabilities(x, ctx)
    #expect(p.shape == [1, 3, 16, 16, 16])
    #expect(p.array == (try t.model.probabilities(x, ctx)).array)
    for i in 0..<4096 { #expect(abs(p.data[i] + p.data[4096 + i] + p.data[8192 + i] - 1) < 1e-5) }
    #expect(throws: LayerError.self) { try loaded.binaryModel() }
    // Tiled prediction of a whole case equals the network on the zero-padded case where one tile covers it.
    let small = preparedSyntheticCases(1)[0]
    let whole = try TiledPrediction.probabilities(t.model, image: small.image, patchSize: [48, 48, 48], samples: 1, seed: 2)
    #expect(whole.shape == [3] + Array(small.image.shape.dropFirst()))
}

@Test func defaultPatchSizeFollowsTheMedianShapeAndTheBudget() {
    var u = UNetConfig(); u.levels = 3; u.width = 8; u.inputChannels = 2; u.classCount = 3
    // Small cases: the median shape rounded up to a multiple of 4.
    #expect(PatchSizePlan.patchSize(medianShape: [34, 35, 29], spacing: [1, 1, 1], shape: u, batchSize: 2) == [36, 36, 32])
    // A large case: capped at 128, then shrunk (largest mm extent first) until the budget fits.
    let big = PatchSizePlan.patchSize(medianShape: [160, 256, 256], spacing: [1, 1, 1], shape: u, batchSize: 2, budgetMiB: 256)
    #expect(big.allSatisfy { $0 % 4 == 0 && $0 <= 128 })
    #expect(2 * Double(big.reduce(1, *)) * PatchSizePlan.bytesPerVoxel(u) <= 256 * 1_048_576)
    #expect(big.max()! - big.min()! <= 4, "isotropic spacing gives a near-cubic patch, got \(big)")
    // Anisotropic spacing: the thick axis gets fewer voxels.
    let aniso = PatchSizePlan.patchSize(medianShape: [60, 256, 256], spacing: [3, 1, 1], shape: u, batchSize: 2, budgetMiB: 128)
    #expect(aniso[0] < aniso[1] && aniso[1] == aniso[2], "got \(aniso)")
}
