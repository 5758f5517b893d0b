// Patch training on prepared synthetic cases: bit-reproducible runs, checkpoint round trip with plan and patch size (C3), tiled prediction, the default patch size plan.
import Foundation
import Testing
import TestSupport
import Flipout3D

private let syntheticPlan = SmallRun.plan

private func patchTrainer(dir: String, seed: UInt64 = 9, epochs: Int = 1, validation: Int = 0) throws -> PatchTrainer {
    try SmallRun.trainer(epochs: epochs, dir: dir, seed: seed, validation: validation)
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
    #expect(a.patch.trainingVoxels == SyntheticCases(seed: 1, count: 3).prepared().reduce(0) { $0 + $1.image.count / 2 })
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
    // Tiled prediction of a whole case equals the network on the zero-padded case where one tile covers it:
    // the case centred in a 48³ zero volume, the mean of 2 draws' softmax, cut back to the case.
    let small = SyntheticCases(seed: 1, count: 1).prepared()[0]
    let shape = Array(small.image.shape.dropFirst())
    let whole = try TiledPrediction.probabilities(t.model, image: small.image, patchSize: [48, 48, 48], samples: 2, seed: 2)
    #expect(whole.shape == [3] + shape)
    let offset = shape.map { (48 - $0) / 2 }
    let padded = Tensor(shape: [1, 2, 48, 48, 48])
    PatchSampler.crop(small.image, start: offset.map { -$0 }, size: [48, 48, 48], into: padded.data)
    let p0 = try t.model.probabilities(padded, StepContext.prediction(seed: 2, draw: 0))
    let p1 = try t.model.probabilities(padded, StepContext.prediction(seed: 2, draw: 1))
    var worst: Float = 0
    for c in 0..<3 { for z in 0..<shape[0] { for y in 0..<shape[1] { for x in 0..<shape[2] {
        let i = ((c * 48 + z + offset[0]) * 48 + y + offset[1]) * 48 + x + offset[2]
        let reference = p0.data[i] / 2 + p1.data[i] / 2
        worst = max(worst, abs(whole.data[((c * shape[0] + z) * shape[1] + y) * shape[2] + x] - reference))
    } } } }
    #expect(worst < 1e-6, "tiled vs whole padded case: \(worst)")
    #expect(p0.array != p1.array, "the two draws differ: the mean is over real samples")
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
