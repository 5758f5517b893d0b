// Training a U-Net on prepared cases: Dice-CE ELBO steps on patches with Adam, per-class validation Dice, atomic checkpoints.
import Foundation

/// One epoch of patch training, as metrics.json and metrics.csv record it.
public struct PatchEpochRecord: Codable, Sendable {
    public var epoch: Int
    /// Means over the epoch's steps: loss = crossEntropy + diceLoss + scaledKL (ELBO.swift).
    public var loss: Double
    public var crossEntropy: Double
    public var diceLoss: Double
    public var kl: Double
    public var scaledKL: Double
    public var beta: Double
    /// Hard Dice per class on the validation cases (index 0 = background); empty without validation.
    public var validationDice: [Double]
    public var seconds: Double
}

/// The data term of one step, as the trainer logs it: softmax Dice-CE over K classes, or (region-based
/// plans) binary cross-entropy plus soft Dice over the regions' sigmoids.
public struct StepLoss {
    /// Cross-entropy, nats per voxel (the regions' mean binary cross-entropy for a region-based plan).
    public let crossEntropy: Double
    /// 1 − the mean soft Dice over the foreground classes (or every region).
    public let diceLoss: Double
    public var value: Double { crossEntropy + diceLoss }
}

/// One layer's prior after --learn-prior: constrained values in slot order.
public struct LayerPrior: Codable, Sendable, Equatable {
    public struct Value: Codable, Sendable, Equatable { public var name: String; public var value: Float }
    public var layer: String
    public var family: String
    public var values: [Value]
    init(_ w: VariationalWeights) {
        layer = w.name; family = w.prior.family.id
        values = w.priorValues.map { Value(name: $0.0, value: $0.1) }
    }
}

/// Trains `model` on patches of `train`; validates on whole `validation` cases, tile by tile.
/// Every random draw is keyed by (seed, step): patches by `PatchSampler`, weights by the layers,
/// the case order by RandomStream(seed, 0, epoch, .shuffle). Same seed, same run, bit for bit.
public final class PatchTrainer {
    public let model: UNet
    public let optimizer: Adam
    public let training: TrainingConfig
    public let patch: PatchTrainingConfig
    public let plan: PreprocessingPlan
    public let sampler: PatchSampler
    public let validation: [PreparedCase]
    public let runDirectory: String
    public private(set) var epochsDone = 0
    public private(set) var records: [PatchEpochRecord] = []
    /// Epochs trained by this object (a resumed run counts from its resumption).
    public private(set) var epochsRun = 0
    /// Training steps timed by this object, after its first (warm-up: oneDNN builds its kernels),
    /// and the seconds spent in them (patch cutting included; validation and writing excluded).
    public private(set) var stepsTimed = 0
    public private(set) var stepSeconds = 0.0
    /// Decided on the validation cases after the last epoch (`Postprocessing.decide`); saved in the checkpoint.
    public var postprocessing = Postprocessing.none
    public var showProgress = true
    /// Prepare each step's batch (patch cutting and augmentation) on a worker thread while the
    /// previous step runs (`BatchPrefetch`); the same bytes either way.
    public var prefetch = true
    /// The ranks training together (one process by default); rank 0 validates, writes and logs.
    public let parallel: DataParallel
    let log: (String) -> Void

    public var checkpointPath: String { Paths.join(runDirectory, "checkpoint.safetensors") }

    public init(model: UNet, training: TrainingConfig, patch: PatchTrainingConfig, plan: PreprocessingPlan,
                train: [PreparedCase], validation: [PreparedCase], runDirectory: String, communicator: Communicator = SingleProcess(),
                log: @escaping (String) -> Void = { _ in }) throws {
        guard training.batchSize >= 1, training.epochs >= 0, training.learningRate > 0 else {
            throw LayerError.invalidConfiguration("batch size must be >= 1, epochs >= 0 and the learning rate > 0.")
        }
        guard training.batchSize % communicator.worldSize == 0 else {
            throw LayerError.invalidConfiguration("the batch size \(training.batchSize) (patches per step over all ranks) is not a multiple of the \(communicator.worldSize) ranks; use a multiple of \(communicator.worldSize).")
        }
        guard !train.isEmpty else { throw LayerError.invalidConfiguration("there are no training cases.") }
        guard plan.outputCount == model.shape.classCount, plan.channels.count == model.shape.inputChannels else {
            throw LayerError.invalidConfiguration("the plan has \(plan.channels.count) channels and \(plan.outputCount) \(plan.regions == nil ? "classes" : "regions"); the network takes \(model.shape.inputChannels) and \(model.shape.classCount).")
        }
        try model.checkInput([1, model.shape.inputChannels] + patch.patchSize)
        self.model = model; self.training = training; self.plan = plan; self.validation = validation
        self.runDirectory = runDirectory
        parallel = DataParallel(communicator)
        self.log = communicator.isRoot ? log : { _ in }
        var p = patch
        p.trainCases = train.map(\.id); p.validationCases = validation.map(\.id)
        p.trainingVoxels = train.reduce(0) { $0 + $1.image.count / $1.image.shape[0] }
        self.patch = p
        // The rules a checkpoint is loaded by (UNetCheckpoint), checked before any work: every run saves a loadable checkpoint.
        try training.validate(); try p.validate(shape: model.shape); try plan.validate()
        sampler = PatchSampler(cases: train, patchSize: patch.patchSize, classCount: plan.classCount, seed: training.seed,
                               augmentation: patch.augmentation ?? .none)
        optimizer = Adam(parameters: model.trainable, learningRate: training.learningRate)
        let scales = PositiveWeightPolicy.learningRateScales(optimizer.parameters, layers: model.layers,
                                                             scale: training.positiveLearningRateScale ?? PositiveWeightPolicy.learningRateScale)
        if scales.contains(where: { $0 != 1 }) { optimizer.learningRateScales = scales }
        try parallel.broadcastParameters(optimizer.arena)
        model.parametersChanged()
        try FileManager.default.createDirectory(atPath: runDirectory, withIntermediateDirectories: true)
    }

    public var stepsPerEpoch: Int {
        patch.stepsPerEpoch > 0 ? patch.stepsPerEpoch : (sampler.cases.count + training.batchSize - 1) / training.batchSize
    }

    /// The case indices of an epoch's steps: a shuffled cycle over the training cases.
    func caseOrder(epoch: Int) -> [Int] {
        let n = sampler.cases.count, needed = stepsPerEpoch * training.batchSize
        var out: [Int] = []
        var round = 0
        while out.count < needed {
            var order = Array(0..<n)
            var shuffle = RandomStream(seed: training.seed, layer: round, step: epoch, purpose: .shuffle)
            for i in stride(from: n - 1, to: 0, by: -1) { order.swapAt(i, shuffle.nextInt(below: i + 1)) }
            out += order
            round += 1
        }
        return Array(out.prefix(needed))
    }

    /// One step on this rank's part (`shard`) of a global batch of patches; returns the Dice-CE
    /// terms of the GLOBAL batch (the per-class Dice sums and the cross-entropy are summed over
    /// the ranks before the loss is formed) and the raw and scaled KL. A region-based plan trains
    /// its regions' sigmoids with `RegionLoss`; voxels of the plan's ignore label add nothing.
    public func step(x: Tensor, y: Tensor, step: Int, beta: Double, shard: BatchShard = .whole) throws -> (loss: StepLoss, kl: Double, scaledKL: Double) {
        var ctx = StepContext(seed: training.seed, step: step)
        ctx.shard = shard
        let scale = ELBO.klScale(beta: beta, trainingVoxels: patch.trainingVoxels)
        let ranks = Float(parallel.worldSize)
        let ignore = plan.ignoreLabel, regions = plan.regions?.map(\.values)
        let (terms, kl) = try TrainingStep.run(model, optimizer: optimizer, parallel: parallel, x: x, ctx: ctx, klScale: scale) { logits in
            // Each rank's gradient of the global loss w.r.t. its own logits, times R: the ranks'
            // average (DataParallel) is then the global gradient, with the KL counted once.
            func finite(_ value: Double) throws {
                guard value.isFinite else { throw LayerError.nonFinite("step \(step): the loss is \(value); the network output is not finite. Lower --lr.") }
            }
            if let regions {
                let saved = try RegionLoss.forward(logits: logits, labels: y, regions: regions, ignoreLabel: ignore, reduce: parallel.sum)
                try finite(saved.value)
                return (StepLoss(crossEntropy: saved.binaryCrossEntropy, diceLoss: saved.diceLoss), RegionLoss.backward(saved, scale: ranks))
            }
            let saved = try DiceCELoss.forward(logits: logits, labels: y, ignoreLabel: ignore, reduce: parallel.sum)
            try finite(saved.value)
            return (StepLoss(crossEntropy: saved.crossEntropy, diceLoss: saved.diceLoss), DiceCELoss.backward(saved, scale: ranks))
        }
        return (terms, kl, scale * kl)
    }

    /// Train one epoch, validate, write metrics and the checkpoint.
    public func trainEpoch() throws -> PatchEpochRecord {
        let epoch = epochsDone, start = Date(), steps = stepsPerEpoch, batch = training.batchSize
        let order = caseOrder(epoch: epoch)
        let beta = training.beta(epoch: epoch)
        optimizer.learningRate = (patch.learningRateSchedule ?? .constant).rate(base: training.learningRate, epoch: epoch, epochs: training.epochs)
        var ce = 0.0, dice = 0.0, kl = 0.0, scaled = 0.0
        let progress = ProgressLine(total: steps, label: "epoch \(epoch + 1)/\(training.epochs)")
        progress.enabled = showProgress && parallel.isWriter
        let shard = parallel.worldSize == 1 ? BatchShard.whole
            : BatchShard.interleaved(globalCount: batch, rank: parallel.rank, worldSize: parallel.worldSize)
        // Patches are drawn for the whole global batch (keyed by step and row) and each rank cuts its rows.
        let sampler = self.sampler
        func batchOf(_ s: Int) -> (x: Tensor, y: Tensor) {
            let draws = sampler.draws(step: epoch * steps + s + 1, caseIndices: Array(order[(s * batch)..<((s + 1) * batch)]))
            return sampler.batch(shard.localElements(draws))
        }
        var next = prefetch ? BatchPrefetch { batchOf(0) } : nil
        for s in 0..<steps {
            let global = epoch * steps + s + 1
            let stepStart = Date()
            let (x, y) = next?.wait() ?? batchOf(s)
            // The next step's batch is cut and augmented beside this step.
            next = prefetch && s + 1 < steps ? BatchPrefetch { batchOf(s + 1) } : nil
            let t = try step(x: x, y: y, step: global, beta: beta, shard: shard)
            if epochsRun > 0 || s > 0 { stepSeconds += Date().timeIntervalSince(stepStart); stepsTimed += 1 }
            ce += t.loss.crossEntropy; dice += t.loss.diceLoss; kl += t.kl; scaled += t.scaledKL
            progress.update(done: s + 1, String(format: "loss %.4f  ce %.4f  dice %.4f  kl %.1f", t.loss.value + t.scaledKL, t.loss.crossEntropy, t.loss.diceLoss, t.kl))
        }
        let n = Double(steps)
        // Rank 0 validates (whole cases, tile by tile) and writes; the others wait at the barrier.
        let val = validation.isEmpty || !parallel.isWriter ? [] : try TiledPrediction.meanDice(model, validation, plan: plan, patchSize: patch.patchSize,
                                                                         samples: min(training.evaluationSamples, 2), seed: training.seed)
        let record = PatchEpochRecord(epoch: epoch + 1, loss: (ce + dice + scaled) / n, crossEntropy: ce / n, diceLoss: dice / n,
                                      kl: kl / n, scaledKL: scaled / n, beta: beta, validationDice: val,
                                      seconds: Date().timeIntervalSince(start))
        epochsDone += 1
        epochsRun += 1
        records.append(record)
        // The checkpoint first: metrics never list an epoch whose checkpoint was not written (a
        // failed save, e.g. a full disk, takes the epoch back and keeps the previous files).
        do {
            try parallel.onWriter {
                try UNetCheckpoint.save(trainer: self, to: checkpointPath)
                try writeMetrics()
            }
        } catch {
            epochsDone -= 1; epochsRun -= 1; records.removeLast()
            throw error
        }
        let valText = val.isEmpty ? "" : "  val dice " + TiledPrediction.describe(val, plan: plan)
        log(String(format: "epoch %d: loss %.4f  ce %.4f  dice-loss %.4f  kl %.1f (scaled %.5f, beta %.2f)  %.1fs",
                   record.epoch, record.loss, record.crossEntropy, record.diceLoss, record.kl, record.scaledKL, beta, record.seconds) + valText)
        return record
    }

    /// The network as a trained model (what `flipout predict` loads from the checkpoint).
    public var trained: TrainedModel {
        TrainedModel(network: .unet(model), training: training, epochs: epochsDone, plan: plan, patchSize: patch.patchSize)
    }

    /// With --learn-prior: every Flipout layer's learned prior values; nil otherwise.
    public var learnedPriors: [LayerPrior]? {
        model.config.learnPrior ? model.flipoutLayers.map { LayerPrior($0.weights) } : nil
    }

    /// One line per layer, "learned prior NAME (FAMILY): slot=value ...", or nil without --learn-prior.
    public var learnedPriorSummary: String? {
        learnedPriors.map { $0.map { l in "learned prior \(l.layer) (\(l.family)): " + l.values.map { "\($0.name)=\($0.value)" }.joined(separator: " ") }.joined(separator: "\n") }
    }

    /// Train until `training.epochs` epochs are done.
    public func run() throws {
        while epochsDone < training.epochs { _ = try trainEpoch() }
        try decidePostprocessing()
    }

    /// At most this many training cases decide the post-processing of a run without validation
    /// cases (`--fold all`): a bound on the prediction time at the end of training.
    public static let postprocessingTrainingCases = 16

    /// nnU-Net's post-processing decision on the validation cases. Without validation (`--fold
    /// all`; nnU-Net then decides nothing, as its decision needs cross-validation) the training
    /// cases decide, the first `postprocessingTrainingCases` of them: a model fits its own cases
    /// better than unseen ones, so it keeps a class's largest component only when false islands
    /// show even there (measured on `scripts/demo --real`, docs/real-heads.md: the training case
    /// picked the two classes whose test Dice the largest component raised).
    func decidePostprocessing() throws {
        // Largest-component post-processing is decided per class; a region-based plan keeps none.
        guard plan.regions == nil else { return }
        let onTraining = validation.isEmpty
        let cases = onTraining ? Array(sampler.cases.filter { $0.label != nil }.prefix(Self.postprocessingTrainingCases)) : validation
        guard !cases.isEmpty else { return }
        let (decision, scores) = try Postprocessing.decide(model: model, validation: cases, patchSize: patch.patchSize,
                                                           samples: min(training.evaluationSamples, 2), seed: training.seed)
        postprocessing = decision
        let source = onTraining ? "on \(cases.count) training case(s) (no validation cases)" : "on validation"
        log("post-processing \(source) (largest component per class, Dice before → after): "
            + scores.enumerated().map { String(format: "%@ %.4f → %.4f", plan.classNames[$0 + 1], $1.before, $1.after) }.joined(separator: ", ")
            + "; kept for " + (decision.largestComponentClasses.isEmpty ? "no class" : decision.largestComponentClasses.map { plan.classNames[$0] }.joined(separator: ", ")))
        try UNetCheckpoint.save(trainer: self, to: checkpointPath)
    }

    func writeMetrics() throws {
        let k = plan.outputCount
        var csv = "epoch,loss,ce,dice_loss,kl,scaled_kl,beta," + (0..<k).map { "val_dice_\(plan.outputNames[$0])" }.joined(separator: ",") + ",seconds\n"
        for r in records {
            let dice = (0..<k).map { r.validationDice.count == k ? String(r.validationDice[$0]) : "" }.joined(separator: ",")
            csv += "\(r.epoch),\(r.loss),\(r.crossEntropy),\(r.diceLoss),\(r.kl),\(r.scaledKL),\(r.beta),\(dice),\(r.seconds)\n"
        }
        try FileIO.writeAtomically(Array(csv.utf8), to: Paths.join(runDirectory, "metrics.csv"))
        let e = JSONEncoder(); e.outputFormatting = [.prettyPrinted, .sortedKeys]
        try FileIO.writeAtomically(Array(try e.encode(records)), to: Paths.join(runDirectory, "metrics.json"))
    }
}

extension PatchTrainer {
    /// Continue the run saved at `checkpoint` (bit-exactly: patches, shuffles and noise depend only
    /// on seed and step): re-reads the dataset folder the checkpoint records and prepares the same
    /// training and validation cases with the recorded plan. `epochs`, when given, replaces the
    /// run's epoch count: larger extends the run (also a finished one); fewer than the epochs
    /// already done is refused. `runDirectory` (default: the checkpoint's folder) receives the
    /// continued run's files.
    public static func resume(checkpoint: String, registry: PluginRegistry, runDirectory: String? = nil, allowPluginChange: Bool = false,
                              epochs: Int? = nil, communicator: Communicator = SingleProcess(),
                              log: @escaping (String) -> Void = { _ in }) throws -> PatchTrainer {
        let c = try Checkpoint.read(checkpoint)
        let l = try UNetCheckpoint.load(c, path: checkpoint, registry: registry, allowPluginChange: allowPluginChange, log: log)
        let done = l.trained.epochs
        var training = l.trained.training
        if let epochs {
            guard epochs >= done, ConfigLimits.epochs.contains(epochs) else {
                throw ConfigError(field: "epochs", option: "--epochs", value: "\(epochs)",
                                  allowed: "at least the \(done) epochs \(checkpoint) has already done and at most \(ConfigLimits.epochs.upperBound) (larger extends the run)")
            }
            training.epochs = epochs
        }
        let folder = try DatasetFolder(l.patch.data)
        var byID: [String: DatasetCase] = [:]
        for dc in folder.training where byID[dc.id] == nil { byID[dc.id] = dc }
        func cases(_ ids: [String]) throws -> [DatasetCase] {
            try ids.map { id in
                guard let dc = byID[id] else {
                    throw CheckpointError(path: checkpoint, reason: "it was trained on case \(id) of \(l.patch.data), which the folder no longer has; resume with the original dataset folder")
                }
                return dc
            }
        }
        let plan = l.trained.plan
        let t = try PatchTrainer(model: l.model, training: training, patch: l.patch, plan: plan,
                                 train: try folder.prepare(try cases(l.patch.trainCases), plan: plan),
                                 validation: try folder.prepare(try cases(l.patch.validationCases), plan: plan),
                                 runDirectory: runDirectory ?? Paths.parent(checkpoint),
                                 communicator: communicator, log: log)
        guard t.patch == l.patch else {
            throw CheckpointError(path: checkpoint, reason: "the dataset folder \(l.patch.data) no longer gives the cases it was trained on (training voxels \(t.patch.trainingVoxels), the checkpoint recorded \(l.patch.trainingVoxels)); resume with the original dataset folder")
        }
        try t.restore(optimizerFrom: c, path: checkpoint, epoch: done)
        // Every rank continues from rank 0's state.
        try t.parallel.broadcastParameters(t.optimizer.arena)
        t.model.parametersChanged()
        return t
    }

    /// Continue where a checkpoint left off (Adam state, epoch count, metrics so far).
    func restore(optimizerFrom c: Checkpoint, path: String, epoch: Int) throws {
        try UNetCheckpoint.restoreOptimizer(optimizer, from: c, path: path)
        epochsDone = epoch
        let sourceMetrics = Paths.join(Paths.parent(path), "metrics.json")
        if let bytes = try? FileIO.read(sourceMetrics), let r = try? JSONDecoder().decode([PatchEpochRecord].self, from: Data(bytes)) {
            records = Array(r.prefix(epoch))
        }
    }
}
