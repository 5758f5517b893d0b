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
    /// Decided on the validation cases after the last epoch (`Postprocessing.decide`); saved in the checkpoint.
    public var postprocessing = Postprocessing.none
    public var showProgress = true
    let log: (String) -> Void

    public var checkpointPath: String { (runDirectory as NSString).appendingPathComponent("checkpoint.safetensors") }

    public init(model: UNet, training: TrainingConfig, patch: PatchTrainingConfig, plan: PreprocessingPlan,
                train: [PreparedCase], validation: [PreparedCase], runDirectory: String, log: @escaping (String) -> Void = { _ in }) throws {
        guard training.batchSize >= 1, training.epochs >= 0, training.learningRate > 0 else {
            throw LayerError.invalidConfiguration("batch size must be >= 1, epochs >= 0 and the learning rate > 0.")
        }
        guard !train.isEmpty else { throw LayerError.invalidConfiguration("there are no training cases.") }
        guard plan.classCount == model.shape.classCount, plan.channels.count == model.shape.inputChannels else {
            throw LayerError.invalidConfiguration("the plan has \(plan.channels.count) channels and \(plan.classCount) classes; the network takes \(model.shape.inputChannels) and \(model.shape.classCount).")
        }
        try model.checkInput([1, model.shape.inputChannels] + patch.patchSize)
        self.model = model; self.training = training; self.plan = plan; self.validation = validation
        self.runDirectory = runDirectory; self.log = log
        var p = patch
        p.trainCases = train.map(\.id); p.validationCases = validation.map(\.id)
        p.trainingVoxels = train.reduce(0) { $0 + $1.image.count / $1.image.shape[0] }
        self.patch = p
        sampler = PatchSampler(cases: train, patchSize: patch.patchSize, classCount: plan.classCount, seed: training.seed,
                               augmentation: patch.augmentation ?? .none)
        optimizer = Adam(parameters: model.trainable, learningRate: training.learningRate)
        let scales = PositiveWeightPolicy.learningRateScales(optimizer.parameters, layers: model.layers,
                                                             scale: training.positiveLearningRateScale ?? PositiveWeightPolicy.learningRateScale)
        if scales.contains(where: { $0 != 1 }) { optimizer.learningRateScales = scales }
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

    /// One step on a batch of patches; returns the Dice-CE terms and the raw and scaled KL.
    public func step(x: Tensor, y: Tensor, step: Int, beta: Double) throws -> (loss: DiceCESaved, kl: Double, scaledKL: Double) {
        let ctx = StepContext(seed: training.seed, step: step)
        model.zeroGradients()
        let (logits, saved) = try model.forward(x, ctx)
        let terms = DiceCELoss.forward(logits: logits, labels: y)
        guard terms.value.isFinite else { throw LayerError.nonFinite("step \(step): the loss is \(terms.value); the network output is not finite. Lower --lr.") }
        try model.backward(DiceCELoss.backward(terms), saved)
        let scale = ELBO.klScale(beta: beta, trainingVoxels: patch.trainingVoxels)
        let kl = try model.kl(gradientScale: Float(scale), ctx)
        model.finishBackward()
        try optimizer.update()
        model.parametersChanged()
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
        progress.enabled = showProgress
        for s in 0..<steps {
            let global = epoch * steps + s + 1
            let (x, y) = sampler.batch(sampler.draws(step: global, caseIndices: Array(order[(s * batch)..<((s + 1) * batch)])))
            let t = try step(x: x, y: y, step: global, beta: beta)
            ce += t.loss.crossEntropy; dice += t.loss.diceLoss; kl += t.kl; scaled += t.scaledKL
            progress.update(done: s + 1, String(format: "loss %.4f  ce %.4f  dice %.4f  kl %.1f", t.loss.value + t.scaledKL, t.loss.crossEntropy, t.loss.diceLoss, t.kl))
        }
        let n = Double(steps)
        let val = validation.isEmpty ? [] : try TiledPrediction.meanDice(model, validation, patchSize: patch.patchSize,
                                                                         samples: min(training.evaluationSamples, 2), seed: training.seed)
        let record = PatchEpochRecord(epoch: epoch + 1, loss: (ce + dice + scaled) / n, crossEntropy: ce / n, diceLoss: dice / n,
                                      kl: kl / n, scaledKL: scaled / n, beta: beta, validationDice: val,
                                      seconds: Date().timeIntervalSince(start))
        epochsDone += 1
        records.append(record)
        try writeMetrics()
        try UNetCheckpoint.save(trainer: self, to: checkpointPath)
        let valText = val.isEmpty ? "" : "  val dice " + TiledPrediction.describe(val, names: plan.classNames)
        log(String(format: "epoch %d: loss %.4f  ce %.4f  dice-loss %.4f  kl %.1f (scaled %.5f, beta %.2f)  %.1fs",
                   record.epoch, record.loss, record.crossEntropy, record.diceLoss, record.kl, record.scaledKL, beta, record.seconds) + valText)
        return record
    }

    /// Train until `training.epochs` epochs are done.
    public func run() throws {
        while epochsDone < training.epochs { _ = try trainEpoch() }
        try decidePostprocessing()
    }

    /// nnU-Net's post-processing decision on the validation cases (none without validation).
    func decidePostprocessing() throws {
        guard !validation.isEmpty else { return }
        let (decision, scores) = try Postprocessing.decide(model: model, validation: validation, patchSize: patch.patchSize,
                                                           samples: min(training.evaluationSamples, 2), seed: training.seed)
        postprocessing = decision
        log("post-processing on validation (largest component per class, Dice before → after): "
            + scores.enumerated().map { String(format: "%@ %.4f → %.4f", plan.classNames[$0 + 1], $1.before, $1.after) }.joined(separator: ", ")
            + "; kept for " + (decision.largestComponentClasses.isEmpty ? "no class" : decision.largestComponentClasses.map { plan.classNames[$0] }.joined(separator: ", ")))
        try UNetCheckpoint.save(trainer: self, to: checkpointPath)
    }

    /// Continue where a checkpoint left off (Adam state, epoch count, metrics so far).
    func restore(optimizerFrom c: Checkpoint, path: String, epoch: Int) throws {
        try ModelCheckpoint.restoreOptimizer(optimizer, from: c, path: path)
        epochsDone = epoch
        let metricsPath = (runDirectory as NSString).appendingPathComponent("metrics.json")
        if let bytes = try? FileIO.read(metricsPath), let r = try? JSONDecoder().decode([PatchEpochRecord].self, from: Data(bytes)) {
            records = Array(r.prefix(epoch))
        }
    }

    func writeMetrics() throws {
        let k = plan.classCount
        var csv = "epoch,loss,ce,dice_loss,kl,scaled_kl,beta," + (0..<k).map { "val_dice_\(plan.classNames[$0])" }.joined(separator: ",") + ",seconds\n"
        for r in records {
            let dice = (0..<k).map { r.validationDice.count == k ? String(r.validationDice[$0]) : "" }.joined(separator: ",")
            csv += "\(r.epoch),\(r.loss),\(r.crossEntropy),\(r.diceLoss),\(r.kl),\(r.scaledKL),\(r.beta),\(dice),\(r.seconds)\n"
        }
        try FileIO.writeAtomically(Array(csv.utf8), to: (runDirectory as NSString).appendingPathComponent("metrics.csv"))
        let e = JSONEncoder(); e.outputFormatting = [.prettyPrinted, .sortedKeys]
        try FileIO.writeAtomically(Array(try e.encode(records)), to: (runDirectory as NSString).appendingPathComponent("metrics.json"))
    }
}

extension PatchTrainer {
    /// Continue the run saved at `checkpoint` (bit-exactly: patches, shuffles and noise depend only
    /// on seed and step): re-reads the dataset folder the checkpoint records and prepares the same
    /// training and validation cases with the recorded plan.
    public static func resume(checkpoint: String, registry: PluginRegistry, runDirectory: String? = nil, allowPluginChange: Bool = false,
                              log: @escaping (String) -> Void = { _ in }) throws -> PatchTrainer {
        let c = try Checkpoint.read(checkpoint)
        let l = try UNetCheckpoint.load(c, path: checkpoint, registry: registry, allowPluginChange: allowPluginChange, log: log)
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
        let t = try PatchTrainer(model: l.model, training: l.trained.training, patch: l.patch, plan: plan,
                                 train: try folder.prepare(try cases(l.patch.trainCases), plan: plan),
                                 validation: try folder.prepare(try cases(l.patch.validationCases), plan: plan),
                                 runDirectory: runDirectory ?? (checkpoint as NSString).deletingLastPathComponent, log: log)
        try t.restore(optimizerFrom: c, path: checkpoint, epoch: l.trained.epochs)
        return t
    }
}
