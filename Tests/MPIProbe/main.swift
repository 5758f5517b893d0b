// flipout-mpi-probe: one data-parallel training step under mpirun; each rank writes what it holds after the all-reduce.
//
// Usage: mpirun -np R flipout-mpi-probe OUTDIR [estimator]
// Writes OUTDIR/config.json (the model and training configuration, so the test can rebuild the
// same run in one process) and, per rank r, OUTDIR/rank<r>.json: the rank's dataset indices, its
// local loss terms, and the arena's gradient and value blocks after one step (gradients averaged
// over ranks, values after Adam). The test (DistributedTests) compares them with a single process
// on the concatenated batch; nothing is checked here.
import Foundation
import Flipout3D

struct RankDump: Codable {
    var rank: Int
    var worldSize: Int
    var indices: [Int]
    var nll: Double
    var kl: Double
    var gradients: [Float]
    var values: [Float]
}

struct ProbeConfig: Codable {
    var model: ModelConfig
    var training: TrainingConfig
}

let args = CommandLine.arguments
guard args.count >= 2 else {
    FileHandle.standardError.write(Data("usage: mpirun -np R flipout-mpi-probe OUTDIR [estimator]\n".utf8))
    exit(64)
}
let out = args[1]
do {
    let comm = try Launch.communicator(.mpi)
    var model = ModelConfig()
    model.width = 4
    if args.count >= 3 { model.estimator = args[2] }
    var training = TrainingConfig()
    training.seed = 42; training.batchSize = 4; training.volumeSize = 16
    training.trainVolumes = 6; training.validationVolumes = 2; training.testVolumes = 2; training.oodVolumes = 2
    let registry = try PluginRegistry(PluginSearch(explicitPaths: []))
    let net = try SegmentationNet(model, registry: registry, seed: training.seed)
    let trainer = try Trainer(model: net, training: training, dataset: try training.makeDataset(),
                              runDirectory: out + "/run-rank\(comm.rank)", communicator: comm)
    let sampler = trainer.sampler
    let (indices, shard) = sampler.batch(0, of: sampler.order(epoch: 0))
    let (x, y) = try trainer.dataset.batch(.train, indices: indices)
    let terms = try trainer.step(x: x, y: y, step: 1, beta: 1, shard: shard)
    let arena = trainer.optimizer.arena
    let dump = RankDump(rank: comm.rank, worldSize: comm.worldSize, indices: indices, nll: terms.nll, kl: terms.kl,
                        gradients: Array(arena.gradientBuffer), values: Array(arena.valueBuffer))
    let e = JSONEncoder()
    try FileIO.writeAtomically(Array(try e.encode(dump)), to: out + "/rank\(comm.rank).json")
    if comm.isRoot { try FileIO.writeAtomically(Array(try e.encode(ProbeConfig(model: model, training: training))), to: out + "/config.json") }
    try comm.barrier()
} catch {
    FileHandle.standardError.write(Data("flipout-mpi-probe: \(error)\n".utf8))
    exit(1)
}
