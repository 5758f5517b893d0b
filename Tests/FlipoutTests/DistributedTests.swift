// Data-parallel U-Net training: batch shards, the parameter arena, and (under mpirun -np 2) gradients, loss curves and checkpoints against one process.
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

struct BatchShardTests {
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
        let (m, u, _, _) = SmallRun.configs(epochs: 1)
        let net = try UNet(m, shape: u, registry: try SmallRun.registry(), seed: 3)
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

struct RankDump: Codable { var rank: Int; var worldSize: Int; var loss: Double; var kl: Double; var gradients: [Float]; var values: [Float] }

/// A small exported synthetic folder and the `train --data` options of the MPI runs: global batch 4, 2 steps per epoch.
enum MPIRun {
    static func dataset(_ dir: URL) throws -> String {
        let data = dir.appendingPathComponent("synth").path
        let r = try FlipoutCLI.run(["datasets", "export-synthetic", data, "--cases", "4", "--test-cases", "0"])
        try #require(r.status == 0, "\(r.stderr)")
        return data
    }
    static func options(_ data: String, epochs: Int) -> [String] {
        ["train", "--data", data, "--epochs", "\(epochs)", "--batch-size", "4", "--steps-per-epoch", "2", "--patch", "16,16,16",
         "--width", "4", "--levels", "2", "--samples", "1", "--seed", "5", "--quiet"]
    }
    static func losses(_ run: URL) throws -> [Double] {
        try JSONDecoder().decode([PatchEpochRecord].self, from: Data(contentsOf: run.appendingPathComponent("metrics.json"))).map(\.loss)
    }
}

@Suite(.serialized, .enabled(if: MPIJob.available, MPIJob.skipReason))
struct MPITwoRankTests {
    /// mpirun -np 2: gradients after the all-reduce (and weights after Adam) equal one process's on the whole batch:
    /// Dice sums all-reduced before the loss, Flipout signs keyed by the global row.
    @Test(arguments: ["flipout", "per-example"])
    func allReducedGradientsEqualOneProcessOnTheWholeBatch(estimator: String) throws {
        let dir = try Fixtures.temporaryDirectory("flipout-mpi")
        let probe = BuildProducts.directory.appendingPathComponent("flipout-mpi-probe").path
        let two = try MPIJob.run(ranks: 2, probe, [dir.path, estimator])
        try #require(two.status == 0, "probe on 2 ranks failed: \(two.stderr)")
        let one = try Subprocess.run(probe, [dir.path, estimator], environment: FlipoutCLI.hermeticEnvironment)
        try #require(one.status == 0, "probe in one process failed: \(one.stderr)")
        let d = JSONDecoder()
        let ranks = try (0..<2).map { try d.decode(RankDump.self, from: Data(contentsOf: dir.appendingPathComponent("rank\($0)-of-2.json"))) }
        let single = try d.decode(RankDump.self, from: Data(contentsOf: dir.appendingPathComponent("rank0-of-1.json")))
        let scale = single.gradients.map(abs).max()!
        #expect(scale > 0)
        for rank in ranks {
            assertClose(rank.gradients, single.gradients, rtol: 1e-4, atol: 1e-4 * scale, "\(estimator): rank \(rank.rank)'s averaged gradients vs one process")
            // Adam's first step is lr * g / (|g| + eps): where g is near eps, the gradients' allowed
            // 1e-4 relative difference (summation order of the per-example kernel gradients) becomes a
            // fraction of that weight's step, so weights are compared to within 1e-3 of a step.
            assertClose(rank.values, single.values, rtol: 1e-5, atol: 1e-3 * TrainingConfig().learningRate, "\(estimator): rank \(rank.rank)'s weights after Adam vs one process")
            #expect(abs(rank.kl - single.kl) <= 1e-9 * abs(single.kl), "KL is the same on every rank")
            #expect(abs(rank.loss - single.loss) <= 1e-9 * single.loss, "every rank has the global batch's loss: \(rank.loss) vs \(single.loss)")
        }
        #expect(ranks[0].gradients == ranks[1].gradients, "every rank holds the same averaged gradients")
    }

    /// `train --data` on 2 ranks matches one process within 1e-5 relative per epoch; two 2-rank runs write
    /// byte-identical checkpoints; a one-process checkpoint resumes on 2 ranks onto the same curve.
    @Test func twoRanksTrainTheCurveOfOneProcessBitReproducibly() throws {
        let dir = try Fixtures.temporaryDirectory("flipout-mpi-train")
        let data = try MPIRun.dataset(dir)
        let two = dir.appendingPathComponent("two"), again = dir.appendingPathComponent("again"), one = dir.appendingPathComponent("one")
        let r2 = try MPIJob.run(ranks: 2, BuildProducts.flipout, MPIRun.options(data, epochs: 3) + ["--run", two.path])
        try #require(r2.status == 0, "mpirun -np 2 flipout train --data failed: \(r2.stderr)")
        #expect(r2.stderr.contains("2 ranks") && r2.stderr.contains("all-reduce"), "\(r2.stderr)")
        #expect(r2.stderr.components(separatedBy: "epoch 1:").count == 2, "only rank 0 logs")
        let r1 = try FlipoutCLI.run(MPIRun.options(data, epochs: 3) + ["--run", one.path])
        try #require(r1.status == 0, "flipout train failed: \(r1.stderr)")
        let c2 = try MPIRun.losses(two), c1 = try MPIRun.losses(one)
        #expect(c1.count == 3 && c2.count == 3)
        for (e, (a, b)) in zip(c2, c1).enumerated() {
            #expect(abs(a - b) <= 1e-5 * b, "epoch \(e + 1): loss \(a) (2 ranks) vs \(b) (1 process)")
        }
        #expect(c1.first! > c1.last!, "the curve goes down")
        let r3 = try MPIJob.run(ranks: 2, BuildProducts.flipout, MPIRun.options(data, epochs: 3) + ["--run", again.path])
        try #require(r3.status == 0, "second mpirun -np 2 flipout train failed: \(r3.stderr)")
        #expect(try Data(contentsOf: again.appendingPathComponent("checkpoint.safetensors")) == Data(contentsOf: two.appendingPathComponent("checkpoint.safetensors")),
                "two runs with 2 ranks write bit-identical checkpoints")
        // One process for an epoch, then 2 ranks to epoch 3.
        let mixed = dir.appendingPathComponent("mixed")
        let first = try FlipoutCLI.run(MPIRun.options(data, epochs: 1) + ["--run", mixed.path])
        try #require(first.status == 0, "\(first.stderr)")
        let resumed = try MPIJob.run(ranks: 2, BuildProducts.flipout, ["train", "--resume", mixed.appendingPathComponent("checkpoint.safetensors").path, "--epochs", "3", "--quiet"])
        try #require(resumed.status == 0, "resume on 2 ranks failed: \(resumed.stderr)")
        let cm = try MPIRun.losses(mixed)
        #expect(cm.count == 3 && cm[0] == c1[0])
        for e in 1..<3 { #expect(abs(cm[e] - c1[e]) <= 1e-5 * c1[e], "epoch \(e + 1) resumed on 2 ranks: \(cm[e]) vs \(c1[e])") }
    }

    @Test func aBatchThatDoesNotSplitOverTheRanksIsAUsageError() throws {
        let dir = try Fixtures.temporaryDirectory("flipout-mpi3")
        let r = try MPIJob.run(ranks: 2, BuildProducts.flipout, ["train", "--data", try MPIRun.dataset(dir), "--epochs", "1", "--batch-size", "3", "--quiet",
                                                               "--run", dir.appendingPathComponent("run").path])
        #expect(r.status == 64, "\(r.stderr)")
        #expect(r.stderr.contains("must be a multiple of the 2 ranks"), "\(r.stderr)")
        #expect(r.stderr.components(separatedBy: "Error:").count == 2, "rank 0 alone prints it")
    }
}
