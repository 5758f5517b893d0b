// The training loop: seeded shuffles, ELBO steps with Adam, per-epoch metrics and atomic checkpoints.
import Foundation

public struct EpochRecord: Codable, Sendable {
    public var epoch: Int
    public var loss: Double
    public var nll: Double
    public var kl: Double
    public var scaledKL: Double
    public var beta: Double
    public var validationDice: Double
    public var validationNLL: Double
    public var seconds: Double
}

public final class Trainer {
    public let model: SegmentationNet
    public let optimizer: Adam
    public let training: TrainingConfig
    public let dataset: VolumeDataset
    /// The run folder: checkpoint.safetensors, metrics.csv, metrics.json.
    public let runDirectory: String
    public private(set) var epochsDone = 0
    public private(set) var records: [EpochRecord] = []
    /// Training steps timed by this object, after its first (warm-up: oneDNN builds its kernels),
    /// and the seconds spent in them (data loading included; validation and writing excluded).
    public private(set) var stepsTimed = 0
    public private(set) var stepSeconds = 0.0
    private var warmedUp = false
    public var showProgress = true
    /// The ranks training together (one process by default); rank 0 writes and logs.
    public let parallel: DataParallel
    let log: (String) -> Void

    public var checkpointPath: String { Paths.join(runDirectory, "checkpoint.safetensors") }

    public init(model: SegmentationNet, training: TrainingConfig, dataset: VolumeDataset, runDirectory: String,
                communicator: Communicator = SingleProcess(), log: @escaping (String) -> Void = { _ in }) throws {
        guard training.batchSize >= 1, training.epochs >= 0, training.learningRate > 0 else {
            throw LayerError.invalidConfiguration("batch size must be >= 1, epochs >= 0 and the learning rate > 0.")
        }
        guard training.batchSize % communicator.worldSize == 0 else {
            throw LayerError.invalidConfiguration("the batch size \(training.batchSize) (volumes per step over all ranks) is not a multiple of the \(communicator.worldSize) ranks; use a multiple of \(communicator.worldSize).")
        }
        guard dataset.count(.train) >= 1 else { throw LayerError.invalidConfiguration("the dataset has no training volumes.") }
        try model.checkInput([1, 1] + dataset.volumeSize)
        self.model = model
        self.training = training
        self.dataset = dataset
        self.runDirectory = runDirectory
        parallel = DataParallel(communicator)
        self.log = communicator.isRoot ? log : { _ in }
        optimizer = Adam(parameters: model.trainable, learningRate: training.learningRate)
        try parallel.broadcastParameters(optimizer.arena)
        model.parametersChanged()
        try FileManager.default.createDirectory(atPath: runDirectory, withIntermediateDirectories: true)
    }

    /// Continue the run saved at `checkpoint` (bit-exactly: shuffles and noise depend only on seed and step).
    /// `epochs`, when given, replaces the run's epoch count: larger extends a run (also a finished one),
    /// fewer than the epochs already done is refused.
    public static func resume(checkpoint: String, registry: PluginRegistry, runDirectory: String? = nil, allowPluginChange: Bool = false,
                              epochs: Int? = nil, communicator: Communicator = SingleProcess(),
                              log: @escaping (String) -> Void = { _ in }) throws -> Trainer {
        let loaded = try ModelCheckpoint.load(checkpoint, registry: registry, allowPluginChange: allowPluginChange, log: log)
        let dir = runDirectory ?? Paths.parent(checkpoint)
        var training = loaded.training
        if let epochs {
            guard epochs >= loaded.epoch else {
                throw ConfigError(field: "epochs", option: "--epochs", value: "\(epochs)",
                                  allowed: "at least the \(loaded.epoch) epochs \(checkpoint) has already done (larger extends the run)")
            }
            training.epochs = epochs
        }
        let t = try Trainer(model: loaded.model, training: training, dataset: try loaded.training.makeDataset(), runDirectory: dir,
                            communicator: communicator, log: log)
        try ModelCheckpoint.restoreOptimizer(t.optimizer, from: loaded.checkpoint, path: checkpoint)
        if let trained = loaded.checkpoint.metadata[CheckpointKey.worldSize].flatMap(Int.init), trained != communicator.worldSize {
            t.log("note: trained so far on \(trained) rank(s), continuing on \(communicator.worldSize): when both divide the training volumes the run matches an unchanged one up to float rounding (docs/distributed.md).")
        }
        t.epochsDone = loaded.epoch
        let metricsPath = Paths.join(dir, "metrics.json")
        if let bytes = try? FileIO.read(metricsPath), let r = try? JSONDecoder().decode([EpochRecord].self, from: Data(bytes)) {
            t.records = Array(r.prefix(loaded.epoch))
        }
        return t
    }

    /// Which training volumes each rank takes, epoch by epoch (with one rank: a seeded shuffle).
    public var sampler: DistributedSampler {
        DistributedSampler(count: dataset.count(.train), globalBatch: training.batchSize, rank: parallel.rank, worldSize: parallel.worldSize, seed: training.seed)
    }
    var stepsPerEpoch: Int { sampler.stepsPerEpoch }

    /// One ELBO step on a batch (this rank's `shard` of the step's global batch); returns its terms.
    /// `step` keys every random draw.
    public func step(x: Tensor, y: Tensor, step: Int, beta: Double, shard: BatchShard = .whole) throws -> ELBOTerms {
        var ctx = StepContext(seed: training.seed, step: step)
        ctx.shard = shard
        model.zeroGradients()
        let (logits, saved) = try model.forward(x, ctx)
        let grad = Tensor(shape: logits.shape)
        let nll = ELBO.bceWithLogits(logits, y, grad: grad)
        guard nll.isFinite else { throw LayerError.nonFinite("step \(step): the loss is \(nll); the network output is not finite.") }
        try model.backward(grad, saved)
        let scale = ELBO.klScale(beta: beta, trainingVolumes: dataset.count(.train), voxelsPerVolume: dataset.volumeSize.reduce(1, *))
        let kl = try model.kl(gradientScale: Float(scale), ctx)
        model.finishBackward()
        try parallel.averageGradients(optimizer.arena)
        try optimizer.update()
        model.parametersChanged()
        return ELBOTerms(nll: nll, kl: kl, scaledKL: scale * kl)
    }

    /// Train one epoch, evaluate on the validation split, write metrics and the checkpoint.
    public func trainEpoch() throws -> EpochRecord {
        let epoch = epochsDone
        let start = Date()
        let sampler = self.sampler
        let order = sampler.order(epoch: epoch)
        let beta = training.beta(epoch: epoch)
        var sums = ELBOTerms(nll: 0, kl: 0, scaledKL: 0)
        let progress = ProgressLine(total: stepsPerEpoch, label: "epoch \(epoch + 1)/\(training.epochs)")
        progress.enabled = showProgress && parallel.isWriter
        for b in 0..<stepsPerEpoch {
            let (idx, shard) = sampler.batch(b, of: order)
            let (x, y) = try dataset.batch(.train, indices: idx)
            let stepStart = Date()
            let t = try step(x: x, y: y, step: epoch * stepsPerEpoch + b + 1, beta: beta, shard: shard)
            if warmedUp { stepSeconds += Date().timeIntervalSince(stepStart); stepsTimed += 1 }
            warmedUp = true
            sums.nll += t.nll; sums.kl += t.kl; sums.scaledKL += t.scaledKL
            progress.update(done: b + 1, String(format: "loss %.4f  nll %.4f  kl %.1f", t.loss, t.nll, t.kl))
        }
        let steps = Double(stepsPerEpoch)
        // Every rank's sums are over equally many examples: the means over ranks are the global ones.
        let global = try parallel.mean([sums.nll, sums.kl, sums.scaledKL])
        sums = ELBOTerms(nll: global[0], kl: global[1], scaledKL: global[2])
        let val = dataset.count(.validation) > 0
            ? try ShardedEvaluation.statistics(model, dataset, .validation, samples: min(training.evaluationSamples, 4), seed: training.seed,
                                               batchSize: training.batchSize, communicator: parallel.communicator)
            : nil
        let record = EpochRecord(epoch: epoch + 1, loss: (sums.nll + sums.scaledKL) / steps, nll: sums.nll / steps, kl: sums.kl / steps,
                                 scaledKL: sums.scaledKL / steps, beta: beta, validationDice: val?.dice ?? .nan, validationNLL: val?.nll ?? .nan,
                                 seconds: Date().timeIntervalSince(start))
        epochsDone += 1
        records.append(record)
        try parallel.onWriter {
            try writeMetrics()
            try ModelCheckpoint.save(model: model, optimizer: optimizer, training: training, epoch: epochsDone, worldSize: parallel.worldSize, to: checkpointPath)
        }
        log(String(format: "epoch %d: loss %.4f  nll %.4f  kl %.1f (scaled %.5f, beta %.2f)  val dice %.3f  val nll %.4f  %.1fs",
                   record.epoch, record.loss, record.nll, record.kl, record.scaledKL, beta, record.validationDice, record.validationNLL, record.seconds))
        return record
    }

    /// Train until `training.epochs` epochs are done.
    public func run() throws {
        while epochsDone < training.epochs { _ = try trainEpoch() }
    }

    func writeMetrics() throws {
        var csv = "epoch,loss,nll,kl,scaled_kl,beta,val_dice,val_nll,seconds\n"
        for r in records {
            csv += "\(r.epoch),\(r.loss),\(r.nll),\(r.kl),\(r.scaledKL),\(r.beta),\(r.validationDice),\(r.validationNLL),\(r.seconds)\n"
        }
        try FileIO.writeAtomically(Array(csv.utf8), to: Paths.join(runDirectory, "metrics.csv"))
        let e = JSONEncoder(); e.outputFormatting = [.prettyPrinted, .sortedKeys]
        try FileIO.writeAtomically(Array(try e.encode(records)), to: Paths.join(runDirectory, "metrics.json"))
    }
}
