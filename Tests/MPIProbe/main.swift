// flipout-mpi-probe: one data-parallel U-Net training step (under mpirun, or alone); each rank writes what it holds after the all-reduce.
//
// Usage: [mpirun -np R] flipout-mpi-probe OUTDIR [estimator]
//        mpirun -np R flipout-mpi-probe --allreduce [repetitions]
// Per rank r, OUTDIR/rank<r>.json: the step's loss terms (of the global batch) and the arena's
// gradient and value blocks after one step of batch 4 (gradients averaged over ranks, values
// after Adam). Run alone it is the single-process reference. The test (DistributedTests)
// compares them; nothing is checked here.
import Foundation
import Flipout3D

struct RankDump: Codable {
    var rank: Int
    var worldSize: Int
    var loss: Double
    var kl: Double
    var gradients: [Float]
    var values: [Float]
}

let args = CommandLine.arguments
guard args.count >= 2 else {
    FileHandle.standardError.write(Data("usage: [mpirun -np R] flipout-mpi-probe OUTDIR [estimator]\n       mpirun -np R flipout-mpi-probe --allreduce [repetitions]\n".utf8))
    exit(64)
}

/// The probe's U-Net: 2 levels, width 4, 2 channels, 3 classes (the synthetic cases').
func unet(estimator: String, registry: PluginRegistry) throws -> UNet {
    var m = ModelConfig(); m.estimator = estimator
    var u = UNetConfig(); u.levels = 2; u.width = 4; u.inputChannels = 2; u.classCount = 3
    return try UNet(m, shape: u, registry: registry, seed: 42)
}

/// `--allreduce`: the all-reduce alone, on the demo U-Net's gradient arena (3 levels, width 8), the ranks
/// lined up by a barrier first, so the time is the transfer and not waiting for a slower rank.
/// Prints (rank 0) the arena size and the median and minimum milliseconds.
func allReduceAlone(repetitions: Int) throws {
    let comm = try Launch.communicator(.mpi)
    var u = UNetConfig(); u.inputChannels = 2; u.classCount = 3
    let net = try UNet(ModelConfig(), shape: u, registry: try PluginRegistry(PluginSearch(explicitPaths: [])), seed: 1)
    let adam = Adam(parameters: net.trainable)
    let parallel = DataParallel(comm)
    var times: [Double] = []
    for _ in 0..<(repetitions + 1) {
        try comm.barrier()
        let start = DispatchTime.now().uptimeNanoseconds
        try parallel.averageGradients(adam.arena)
        times.append(Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-6)
    }
    let sorted = times.dropFirst().sorted()
    if comm.isRoot {
        print(String(format: "allreduce unet floats %d median_ms %.4f min_ms %.4f", adam.arena.count, sorted[sorted.count / 2], sorted[0]))
    }
}

if args[1] == "--allreduce" {
    do { try allReduceAlone(repetitions: args.count > 2 ? Int(args[2]) ?? 200 : 200) } catch {
        FileHandle.standardError.write(Data("flipout-mpi-probe: \(error)\n".utf8))
        exit(1)
    }
    exit(0)
}
let out = args[1]
do {
    let comm = try Launch.communicator(.auto)
    let registry = try PluginRegistry(PluginSearch(explicitPaths: []))
    // Four synthetic cases, z-scored per channel on their own grids.
    let cases = SyntheticCases(seed: 1, count: 4).prepared()
    let plan = PreprocessingPlan(spacing: [1, 1, 1], channelNames: SyntheticCases.channelNames,
                                 channels: [.zScore(mean: 0, std: 1), .zScore(mean: 0, std: 1)],
                                 labels: ["background": 0, "structureA": 1, "structureB": 2], classCount: 3)
    var t = TrainingConfig(); t.seed = 42; t.batchSize = 4; t.epochs = 1
    var p = PatchTrainingConfig(); p.patchSize = [16, 16, 16]; p.data = "(in memory)"
    let trainer = try PatchTrainer(model: try unet(estimator: args.count >= 3 ? args[2] : "flipout", registry: registry), training: t, patch: p, plan: plan,
                                   train: cases, validation: [], runDirectory: out + "/run-rank\(comm.rank)", communicator: comm)
    let draws = trainer.sampler.draws(step: 1, caseIndices: [0, 1, 2, 3])
    let shard = comm.worldSize == 1 ? BatchShard.whole : BatchShard.interleaved(globalCount: 4, rank: comm.rank, worldSize: comm.worldSize)
    let (x, y) = trainer.sampler.batch(shard.localElements(draws))
    let terms = try trainer.step(x: x, y: y, step: 1, beta: 1, shard: shard)
    let arena = trainer.optimizer.arena
    let dump = RankDump(rank: comm.rank, worldSize: comm.worldSize, loss: terms.loss.value, kl: terms.kl,
                        gradients: Array(arena.gradientBuffer), values: Array(arena.valueBuffer))
    try FileIO.writeAtomically(Array(try JSONEncoder().encode(dump)), to: out + "/rank\(comm.rank)-of-\(comm.worldSize).json")
    try comm.barrier()
    try comm.finish()
} catch {
    FileHandle.standardError.write(Data("flipout-mpi-probe: \(error)\n".utf8))
    exit(1)
}
