// Data-parallel training: the sampler, batch shards, parameter arena, reduced metrics, and (under mpirun -np 2) gradients and loss curves.
import Testing
import Foundation
import Flipout3D
import TestSupport

/// Whether the MPI tests can run: mpirun on PATH and the backend built beside flipout
/// (scripts/test installs Open MPI and runs scripts/build-mpi-backend).
enum MPIJob {
    static var mpirun: String? {
        (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map { "\($0)/mpirun" }
            .first { FileManager.default.isExecutableFile(atPath: $0) }
    }
    static var backend: String { BuildProducts.directory.appendingPathComponent("libflipout-mpi.so").path }
    static var available: Bool { mpirun != nil && FileManager.default.fileExists(atPath: backend) }
    static let skipReason: Comment = "Open MPI or the MPI backend is missing (scripts/test installs openmpi-bin and libopenmpi-dev and runs scripts/build-mpi-backend)"

    /// `mpirun -np ranks program args`, one thread per rank, as root if need be, killed after 5 minutes.
    static func run(ranks: Int, _ program: String, _ args: [String]) throws -> Subprocess.Result {
        var env = FlipoutCLI.hermeticEnvironment
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"; env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        env["OMP_NUM_THREADS"] = "1"
        return try Subprocess.run("/usr/bin/timeout", ["300", mpirun!, "-np", "\(ranks)", "--oversubscribe", "--bind-to", "none", program] + args,
                                  environment: env)
    }
}

struct DistributedSamplerTests {
    @Test func oneRankIsTheSeededShuffleInOrder() {
        let s = DistributedSampler(count: 10, globalBatch: 4, rank: 0, worldSize: 1, seed: 7)
        let order = s.order(epoch: 3)
        #expect(Set(order) == Set(0..<10) && order.count == 10)
        #expect(order != Array(0..<10), "the order is shuffled")
        #expect(s.stepsPerEpoch == 3)
        #expect(s.batch(2, of: order).indices == Array(order[8..<10]))
        #expect(s.order(epoch: 3) == order && s.order(epoch: 4) != order, "keyed by (seed, epoch)")
    }

    @Test(arguments: [(10, 4, 2), (7, 6, 3), (12, 4, 4), (5, 2, 2)])
    func ranksPartitionEachGlobalBatch(count: Int, batch: Int, world: Int) {
        let samplers = (0..<world).map { DistributedSampler(count: count, globalBatch: batch, rank: $0, worldSize: world, seed: 1) }
        let single = DistributedSampler(count: count, globalBatch: batch, rank: 0, worldSize: 1, seed: 1)
        let order = samplers[0].order(epoch: 0)
        #expect(order.count % world == 0 && order.count - count < world, "padded to a multiple of the world size")
        #expect(Array(order.prefix(count)) == single.order(epoch: 0), "the same permutation for every world size")
        for step in 0..<samplers[0].stepsPerEpoch {
            let parts = samplers.map { $0.batch(step, of: order) }
            #expect(Set(parts.map(\.indices.count)).count == 1, "every rank holds equally many examples")
            // Rank r holds global rows r, r + R, ...: interleaving the ranks rebuilds the global batch in order.
            let rows = parts[0].shard.globalCount!
            var rebuilt = [Int](repeating: -1, count: rows)
            for p in parts { for (j, i) in p.indices.enumerated() { rebuilt[p.shard.globalRow(j)] = i } }
            #expect(rebuilt == Array(order[(step * batch)..<(step * batch + rows)]))
            #expect(rebuilt == samplers[0].globalBatch(step, of: order))
        }
    }

    @Test func shardRowsAndLocalRows() {
        let shard = BatchShard(globalCount: 5, offset: 1, stride: 2)
        #expect(shard.globalCount(local: 2) == 5)
        #expect([0, 1, 2, 3, 4].map { shard.localRow($0, local: 2) } == [nil, 0, nil, 1, nil])
        let global = Tensor(shape: [5, 3], values: (0..<15).map(Float.init))
        #expect(shard.localRows(global, local: 2).array == [3, 4, 5, 9, 10, 11])
        #expect(BatchShard.whole.localRows(global, local: 5) === global)
        #expect(shard.localElements(["a", "b", "c", "d", "e"]) == ["b", "d"])
        #expect(BatchShard.interleaved(globalCount: 5, rank: 1, worldSize: 2) == shard)
    }
}

struct ParameterArenaTests {
    @Test func parametersMoveIntoOneAlignedBlockKeepingTheirValues() throws {
        // weight (1, 1, 3, 3, 3) = 27 floats, then bias (1): offsets 0 and 32 (16-float alignment).
        let conv = DeterministicConv3D(name: "c", index: 0, inChannels: 1, outChannels: 1, kernel: 3, seed: 4)
        conv.bias[0] = 0.5
        conv.weightGradient.fill(2)
        let w = conv.weight.array
        let arena = ParameterArena(conv.trainable)
        #expect(arena.offsets == [0, 32] && arena.count == 48)
        #expect(conv.weight.data == arena.values && conv.bias.data == arena.values + 32 && conv.weightGradient.data == arena.gradients)
        #expect(conv.weight.array == w && conv.bias[0] == 0.5 && conv.weightGradient.array == [Float](repeating: 2, count: 27))
        #expect(Int(bitPattern: conv.bias.data) % 64 == 0)
        conv.biasGradient[0] = 7
        #expect(arena.gradients[32] == 7, "writes through a parameter's tensor land in the arena")
        #expect(Array(arena.valueBuffer[27..<32]) == [Float](repeating: 0, count: 5), "padding is zero")
        #expect(arena.locate(33) == ("c.bias", 1))
    }

    @Test func adamSeesTheModelsGradientsThroughTheArena() throws {
        let net = try SegmentationNet(SmallRun.configs(epochs: 1).0, registry: try SmallRun.registry(), seed: 3)
        let before = net.trainable.map { $0.value.array }
        let adam = Adam(parameters: net.trainable, learningRate: 0.1)
        #expect(net.trainable.map { $0.value.array } == before, "moving into the arena keeps every value")
        net.trainable[0].gradient[0] = 1
        try adam.update()
        // Adam's first step moves a parameter with gradient g by lr * g / (|g| + eps') = lr.
        #expect(abs(net.trainable[0].value[0] - (before[0][0] - 0.1)) < 1e-5)
        #expect(net.trainable[1].value.array == before[1], "parameters with zero gradient stay")
    }
}

struct SegmentationStatisticsTests {
    @Test func sumsOverHalvesGiveTheMetricsOfTheWhole() {
        let n = 4000
        let p = Tensor(shape: [n], values: testValues(n, seed: 5).map { ($0 + 1) / 2 })
        let y = Tensor(shape: [n], values: testValues(n, seed: 6).map { $0 > 0.3 ? 1 : 0 })
        var halves = SegmentationStatistics(), other = SegmentationStatistics(), whole = SegmentationStatistics()
        whole.add(probabilities: p, labels: y)
        halves.add(probabilities: Tensor(shape: [n / 2], values: Array(p.array[..<(n / 2)])), labels: Tensor(shape: [n / 2], values: Array(y.array[..<(n / 2)])))
        other.add(probabilities: Tensor(shape: [n / 2], values: Array(p.array[(n / 2)...])), labels: Tensor(shape: [n / 2], values: Array(y.array[(n / 2)...])))
        for s in [whole, halves] {
            let merged = s == whole ? whole : {
                var m = halves
                m.truePositives += other.truePositives; m.falsePositives += other.falsePositives; m.falseNegatives += other.falseNegatives
                m.voxels += other.voxels; m.nllSum += other.nllSum; m.brierSum += other.brierSum
                for b in 0..<SegmentationStatistics.bins { m.binCount[b] += other.binCount[b]; m.binConfidence[b] += other.binConfidence[b]; m.binCorrect[b] += other.binCorrect[b] }
                return m
            }()
            #expect(abs(merged.dice - Metrics.dice(probabilities: p, labels: y)) < 1e-12)
            #expect(abs(merged.nll - Metrics.nll(probabilities: p, labels: y)) < 1e-12)
            #expect(abs(merged.brier - Metrics.brier(probabilities: p, labels: y)) < 1e-12)
            #expect(abs(merged.ece - Metrics.ece(probabilities: p, labels: y)) < 1e-12)
        }
        // The Dice of the whole is not the mean of the halves' Dice: why ranks reduce sums.
        #expect(abs(whole.dice - (halves.dice + other.dice) / 2) > 1e-6)
    }

    @Test func oneRankValidationEqualsTheEvaluator() throws {
        let trainer = try SmallRun.trainer(epochs: 1, dir: SmallRun.tempDir())
        let s = try ShardedEvaluation.statistics(trainer.model, trainer.dataset, .validation, samples: 2, seed: 9, batchSize: 1, communicator: SingleProcess())
        let m = try Evaluator.evaluate(trainer.model, trainer.dataset, .validation, samples: 2, seed: 9, batchSize: 1)
        #expect(s.dice == m.dice)
        #expect(abs(s.nll - m.nll) < 1e-12 && abs(s.ece - m.ece) < 1e-12)
    }
}

struct LaunchTests {
    @Test func launchersAnnounceTheWorldSize() {
        #expect(Launch.announcedWorldSize([:]) == nil)
        #expect(Launch.announcedWorldSize(["OMPI_COMM_WORLD_SIZE": "4"]) == 4)
        #expect(Launch.announcedWorldSize(["PMI_SIZE": "3"]) == 3)
        #expect(Launch.announcedWorldSize(["SLURM_NTASKS": "8"]) == nil, "an srun step that is not an MPI task")
        #expect(Launch.announcedWorldSize(["SLURM_NTASKS": "8", "PMIX_RANK": "0"]) == 8)
    }

    @Test func eachRankGetsItsShareOfTheCores() {
        #expect(OpenMPThreads.threads(localSize: 2, allowedCores: 32, onlineCores: 32, environment: [:]).threads == 16)
        #expect(OpenMPThreads.threads(localSize: 3, allowedCores: 2, onlineCores: 2, environment: [:]).threads == 1)
        #expect(OpenMPThreads.threads(localSize: 2, allowedCores: 1, onlineCores: 32, environment: [:]).threads == 1, "bound by mpirun")
        #expect(OpenMPThreads.threads(localSize: 2, allowedCores: 32, onlineCores: 32, environment: ["OMP_NUM_THREADS": "5"]).threads == 5)
    }

    @Test func singleIsRefusedUnderALauncherOfSeveralRanks() {
        #expect { _ = try Launch.communicator(.single, environment: ["OMPI_COMM_WORLD_SIZE": "2"]) } throws: { "\($0)".contains("overwrite") }
        #expect((try? Launch.communicator(.auto, environment: [:]))?.worldSize == 1)
    }

    @Test func aMissingBackendIsAClearUsageError() throws {
        var env = FlipoutCLI.hermeticEnvironment
        env["FLIPOUT_MPI_BACKEND"] = "/nonexistent/libflipout-mpi.so"
        let r = try Subprocess.run(BuildProducts.flipout, ["train", "--distributed", "mpi", "--epochs", "0"], environment: env)
        #expect(r.status == 64)
        #expect(r.stderr.contains("/nonexistent/libflipout-mpi.so") && r.stderr.contains("scripts/build-mpi-backend"), "\(r.stderr)")
    }
}

struct ProbeConfig: Codable { var model: ModelConfig; var training: TrainingConfig }
struct RankDump: Codable { var rank: Int; var worldSize: Int; var indices: [Int]; var nll: Double; var kl: Double; var gradients: [Float]; var values: [Float] }

@Suite(.serialized, .enabled(if: MPIJob.available, MPIJob.skipReason))
struct MPITwoRankTests {
    /// mpirun -np 2: gradients after the all-reduce (and weights after Adam) equal one process's on the concatenated batch.
    @Test(arguments: ["flipout", "per-example"])
    func allReducedGradientsEqualOneProcessOnTheWholeBatch(estimator: String) throws {
        let dir = try Fixtures.temporaryDirectory("flipout-mpi")
        let r = try MPIJob.run(ranks: 2, BuildProducts.directory.appendingPathComponent("flipout-mpi-probe").path, [dir.path, estimator])
        try #require(r.status == 0, "probe failed: \(r.stderr)")
        let d = JSONDecoder()
        let config = try d.decode(ProbeConfig.self, from: Data(contentsOf: dir.appendingPathComponent("config.json")))
        let ranks = try (0..<2).map { try d.decode(RankDump.self, from: Data(contentsOf: dir.appendingPathComponent("rank\($0).json"))) }

        // The same step in one process on the concatenated batch (the ranks' examples together).
        let net = try SegmentationNet(config.model, registry: try SmallRun.registry(), seed: config.training.seed)
        let one = try Trainer(model: net, training: config.training, dataset: try config.training.makeDataset(), runDirectory: SmallRun.tempDir())
        let sampler = one.sampler
        let (indices, _) = sampler.batch(0, of: sampler.order(epoch: 0))
        #expect(Set(indices) == Set(ranks.flatMap(\.indices)) && indices.count == 4 && ranks.allSatisfy { $0.indices.count == 2 })
        let (x, y) = try one.dataset.batch(.train, indices: indices)
        let terms = try one.step(x: x, y: y, step: 1, beta: 1)
        let grads = Array(one.optimizer.arena.gradientBuffer), values = Array(one.optimizer.arena.valueBuffer)
        let scale = grads.map(abs).max()!
        #expect(scale > 0)
        for rank in ranks {
            assertClose(rank.gradients, grads, rtol: 1e-4, atol: 1e-4 * scale, "\(estimator): rank \(rank.rank)'s averaged gradients vs one process")
            assertClose(rank.values, values, rtol: 1e-5, atol: 1e-6, "\(estimator): rank \(rank.rank)'s weights after Adam vs one process")
            #expect(abs(rank.kl - terms.kl) <= 1e-9 * abs(terms.kl), "KL is the same on every rank")
        }
        #expect(abs((ranks[0].nll + ranks[1].nll) / 2 - terms.nll) < 1e-6, "the mean of the ranks' NLL is the batch's")
        #expect(ranks[0].gradients == ranks[1].gradients, "every rank holds the same averaged gradients")

        // The check can fail: half the batch alone gives clearly different gradients.
        let half = try SegmentationNet(config.model, registry: try SmallRun.registry(), seed: config.training.seed)
        let h = try Trainer(model: half, training: config.training, dataset: try config.training.makeDataset(), runDirectory: SmallRun.tempDir())
        let (hx, hy) = try h.dataset.batch(.train, indices: ranks[0].indices)
        _ = try h.step(x: hx, y: hy, step: 1, beta: 1, shard: BatchShard(globalCount: 4, offset: 0, stride: 2))
        let diff = zip(Array(h.optimizer.arena.gradientBuffer), grads).map { abs($0 - $1) }.max()!
        #expect(diff > 1e-2 * scale, "one rank's gradients alone differ from the batch's (max diff \(diff), scale \(scale))")
    }

    /// Two ranks with batch 2 each and one rank with batch 4 train the same curve (to rounding); two runs
    /// with 2 ranks are bit-identical; the checkpoint records the world size.
    @Test func twoRanksAndOneRankOfDoubleBatchTrainTheSameCurve() throws {
        let common = ["train", "--epochs", "3", "--batch-size", "4", "--volume-size", "16", "--train-volumes", "8", "--test-volumes", "2",
                      "--samples", "2", "--width", "4", "--seed", "5", "--quiet"]
        let two = try Fixtures.temporaryDirectory("flipout-mpi2"), one = try Fixtures.temporaryDirectory("flipout-mpi1")
        let r2 = try MPIJob.run(ranks: 2, BuildProducts.flipout, common + ["--run", two.path])
        try #require(r2.status == 0, "mpirun -np 2 flipout train failed: \(r2.stderr)")
        #expect(r2.stderr.contains("2 ranks") && r2.stderr.contains("all-reduce"), "\(r2.stderr)")
        #expect(r2.stderr.components(separatedBy: "epoch 1:").count == 2, "only rank 0 logs")
        let r1 = try FlipoutCLI.run(common + ["--run", one.path])
        try #require(r1.status == 0, "flipout train failed: \(r1.stderr)")
        let d = JSONDecoder()
        let c2 = try d.decode([EpochRecord].self, from: Data(contentsOf: two.appendingPathComponent("metrics.json")))
        let c1 = try d.decode([EpochRecord].self, from: Data(contentsOf: one.appendingPathComponent("metrics.json")))
        #expect(c1.count == 3 && c2.count == 3)
        for (a, b) in zip(c2, c1) {
            #expect(abs(a.loss - b.loss) <= 1e-5 * b.loss, "epoch \(b.epoch): loss \(a.loss) (2 ranks) vs \(b.loss) (1 rank)")
            #expect(abs(a.validationNLL - b.validationNLL) <= 1e-4 * b.validationNLL, "epoch \(b.epoch): validation NLL")
        }
        #expect(c1.first!.loss > c1.last!.loss, "the curve goes down")
        // The same world size again: bit-identical (the checkpoint holds every weight and Adam's state).
        let again = try Fixtures.temporaryDirectory("flipout-mpi2b")
        let r3 = try MPIJob.run(ranks: 2, BuildProducts.flipout, common + ["--run", again.path])
        try #require(r3.status == 0, "second mpirun -np 2 flipout train failed: \(r3.stderr)")
        #expect(try Data(contentsOf: again.appendingPathComponent("checkpoint.safetensors")) == Data(contentsOf: two.appendingPathComponent("checkpoint.safetensors")),
                "two runs with 2 ranks write bit-identical checkpoints")
        let meta2 = try Checkpoint.read(two.appendingPathComponent("checkpoint.safetensors").path).metadata
        let meta1 = try Checkpoint.read(one.appendingPathComponent("checkpoint.safetensors").path).metadata
        #expect(meta2["flipout3d.world_size"] == "2" && meta1["flipout3d.world_size"] == "1")
    }

    /// A checkpoint of one process resumed on two ranks continues the same run (to rounding).
    @Test func oneRankCheckpointResumesOnTwoRanks() throws {
        let straight = try SmallRun.trainer(epochs: 2, dir: SmallRun.tempDir())
        try straight.run()
        let first = try SmallRun.trainer(epochs: 2, dir: SmallRun.tempDir())
        _ = try first.trainEpoch()
        let r = try MPIJob.run(ranks: 2, BuildProducts.flipout, ["train", "--resume", first.checkpointPath, "--quiet"])
        try #require(r.status == 0, "resume on 2 ranks failed: \(r.stderr)")
        #expect(r.stderr.contains("trained so far on 1 rank(s), continuing on 2"), "\(r.stderr)")
        let resumed = try JSONDecoder().decode([EpochRecord].self, from: Data(contentsOf: URL(fileURLWithPath: first.runDirectory).appendingPathComponent("metrics.json")))
        try #require(resumed.count == 2)
        #expect(resumed[0].loss == straight.records[0].loss)
        #expect(abs(resumed[1].loss - straight.records[1].loss) <= 1e-5 * straight.records[1].loss,
                "epoch 2 resumed on 2 ranks: \(resumed[1].loss) vs \(straight.records[1].loss) in one process")
        #expect(try Checkpoint.read(first.checkpointPath).metadata["flipout3d.world_size"] == "2")
    }

    @Test func aBatchThatDoesNotSplitOverTheRanksIsAUsageError() throws {
        let r = try MPIJob.run(ranks: 2, BuildProducts.flipout, ["train", "--epochs", "1", "--batch-size", "3", "--volume-size", "16", "--train-volumes", "4", "--quiet",
                                                               "--run", try Fixtures.temporaryDirectory("flipout-mpi3").path])
        #expect(r.status == 64, "\(r.stderr)")
        #expect(r.stderr.contains("must be a multiple of the 2 ranks"), "\(r.stderr)")
        #expect(r.stderr.components(separatedBy: "Error:").count == 2, "rank 0 alone prints it")
    }
}
