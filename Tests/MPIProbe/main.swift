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
    FileHandle.standardError.write(Data("usage: mpirun -np R flipout-mpi-probe OUTDIR [estimator]\n       mpirun -np R flipout-mpi-probe --allreduce stack|encoder-decoder [repetitions]\n".utf8))
    exit(64)
}

/// `--allreduce ARCH`: the all-reduce alone, on a width-8 network's gradient arena, the ranks
/// lined up by a barrier first, so the time is the transfer and not waiting for a slower rank.
/// Prints (rank 0) the arena size and the median and minimum milliseconds.
func allReduceAlone(_ architecture: String, repetitions: Int) throws {
    let comm = try Launch.communicator(.mpi)
    var model = ModelConfig()
    guard let arch = ModelConfig.Architecture(rawValue: architecture) else { throw LayerError.invalidConfiguration("unknown architecture \(architecture)") }
    model.architecture = arch
    let net = try SegmentationNet(model, registry: try PluginRegistry(PluginSearch(explicitPaths: [])), seed: 1)
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
        print(String(format: "allreduce %@ floats %d median_ms %.4f min_ms %.4f", architecture, adam.arena.count, sorted[sorted.count / 2], sorted[0]))
    }
}

if args[1] == "--allreduce" {
    do { try allReduceAlone(args.count > 2 ? args[2] : "encoder-decoder", repetitions: args.count > 3 ? Int(args[3]) ?? 200 : 200) } catch {
        FileHandle.standardError.write(Data("flipout-mpi-probe: \(error)\n".utf8))
        exit(1)
    }
    exit(0)
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
