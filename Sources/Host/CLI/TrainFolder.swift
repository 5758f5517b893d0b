// `flipout train --data DIR`: a U-Net on a dataset folder, on patches, with per-class Dice on validation and test cases.
import ArgumentParser
import Foundation
import Flipout3D

extension Augmentation: ExpressibleByArgument {}

/// Parses "64,64,32" as a (d, h, w) patch size in voxels.
struct PatchArgument: ExpressibleByArgument {
    let values: [Int]
    init?(argument: String) {
        let v = argument.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard v.count == 3, v.allSatisfy({ $0 >= 1 }) else { return nil }
        values = v
    }
}

struct FolderTrainingOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Train on this dataset folder (dataset.json, imagesTr/, labelsTr/, optional imagesTs/ + labelsTs/).", valueName: "dir"))
    var data: String?

    @Option(help: ArgumentHelp("Training patch size in voxels along (D, H, W) = (S, A, R), each a multiple of 2^(levels-1) (default: the median case shape within --memory-budget).", valueName: "d,h,w"))
    var patch: PatchArgument?

    @Option(help: ArgumentHelp("Target spacing in mm along (D, H, W) = (S, A, R) (default: the dataset's median).", valueName: "d,h,w"))
    var spacing: SpacingArgument?

    @Option(help: ArgumentHelp("Cross-validation fold to train: 0..<--folds (validating on its held-out cases), or all (every case, no validation).", valueName: "k|all"))
    var fold = "all"

    @Option(help: "Number of folds of splits.json (written into the run folder, reused if present).")
    var folds = 5

    @Option(name: .customLong("steps-per-epoch"), help: "Optimizer steps per epoch, whatever the dataset size (nnU-Net: 250 on a GPU; 0: one patch per training case).")
    var stepsPerEpoch = FolderTrainingDefaults.stepsPerEpoch

    @Option(help: "On-the-fly augmentation: default (nnU-Net's: rotation, scaling, noise, blur, brightness, contrast, low resolution, gamma, mirroring) or none.")
    var augmentation: Augmentation = .default

    @Option(name: .customLong("memory-budget"), help: ArgumentHelp("Activation memory of a training step that the default patch size fits, MiB.", valueName: "MiB"))
    var memoryBudget = PatchSizePlan.defaultBudgetMiB

    @Option(name: .customLong("init-from"), help: ArgumentHelp("Start the posterior means from this deterministic U-Net checkpoint (MOPED), scales --moped-delta * |mean|.", valueName: "checkpoint"))
    var initFrom: String?

    @Option(name: .customLong("moped-delta"), help: "MOPED's delta: posterior scale = delta * |deterministic weight|.")
    var mopedDelta = MOPED.defaultDelta

    var foldSelection: FoldSelection { FoldSelection(fold) ?? .all }

    func validate() throws {
        guard FoldSelection(fold) != nil else { throw ValidationError("--fold must be all or a fold index 0..<--folds; got \"\(fold)\".") }
        if case .fold(let k) = foldSelection, k >= folds { throw ValidationError("--fold \(k) needs --folds > \(k); got --folds \(folds).") }
        guard folds >= 2 else { throw ValidationError("--folds must be at least 2.") }
        guard stepsPerEpoch >= 0 else { throw ValidationError("--steps-per-epoch must be >= 0.") }
        guard memoryBudget >= 16 else { throw ValidationError("--memory-budget must be at least 16 MiB.") }
        guard mopedDelta > 0 && mopedDelta.isFinite else { throw ValidationError("--moped-delta must be a positive number.") }
        if data == nil && (patch != nil || spacing != nil || initFrom != nil || fold != "all") {
            throw ValidationError("--patch, --spacing, --fold and --init-from apply to --data DIR training; add --data.")
        }
    }
}

/// The --data path of `flipout train`.
struct FolderTraining {
    let command: TrainCommand
    let registry: PluginRegistry
    var options: FolderTrainingOptions { command.folder }

    static func isUNetCheckpoint(_ path: String) -> Bool {
        (try? Checkpoint.read(path)).map { $0.metadata[UNetCheckpointKey.network] == "unet" } ?? false
    }

    func run() throws {
        let trainer: PatchTrainer
        let folder: DatasetFolder
        if let resume = command.resume {
            RunFolder.removeStaleTemporaries(in: (resume as NSString).deletingLastPathComponent, log: note)
            trainer = try PatchTrainer.resume(checkpoint: resume, registry: registry, allowPluginChange: command.allowPluginChange, log: note)
            folder = try DatasetFolder(trainer.patch.data)
            note("resuming \(resume) after epoch \(trainer.epochsDone) of \(trainer.training.epochs)")
        } else {
            // As the binary trainer: a new run never writes into a folder holding another run's files.
            try RunFolder.prepare(command.runFolder, policy: command.overwrite ? .overwrite : .fresh, log: note)
            (trainer, folder) = try start()
        }
        trainer.showProgress = !command.quiet
        let start = Date()
        try trainer.run()
        let seconds = Date().timeIntervalSince(start)
        try report(trainer, folder: folder, trainSeconds: seconds)
    }

    func start() throws -> (PatchTrainer, DatasetFolder) {
        guard let dir = options.data else { preconditionFailure("FolderTraining without --data") }
        let folder = try DatasetFolder(dir)
        let quiet = command.quiet
        func progress(_ what: String) -> (Int, Int, String) -> Void {
            { done, total, id in if !quiet && (done == total || done % max(1, total / 4) == 0) { note("\(what) \(done)/\(total) (\(id))") } }
        }
        let fingerprint = try DatasetFingerprint(folder: folder, progress: progress("fingerprint"))
        let plan = PreprocessingPlan(fingerprint: fingerprint, spacing: options.spacing?.values)
        let ids = folder.training.map(\.id)
        let split: FoldSplit
        switch options.foldSelection {
        case .all: split = try Splits.cases(.all, caseIDs: ids, splits: [])
        case .fold:
            let splits = try Splits.loadOrCreate(directory: command.runFolder, caseIDs: ids, folds: options.folds, seed: command.seed)
            split = try Splits.cases(options.foldSelection, caseIDs: ids, splits: splits)
        }
        let byID = Dictionary(folder.training.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        let train = try folder.prepare(split.train.compactMap { byID[$0] }, plan: plan, progress: progress("preparing"))
        let validation = try folder.prepare(split.val.compactMap { byID[$0] }, plan: plan)
        note("dataset \(folder.name): \(train.count) training cases, \(validation.count) validation (fold \(options.fold)), \(plan.channels.count) channels \(plan.channelNames), \(plan.classCount) classes \(plan.classNames), spacing \(plan.spacing.map { String(format: "%.3g", $0) }.joined(separator: "x")) mm")

        var config = try command.model.config()
        if command.model.customLayers == nil && config.bayesian,
           try registry.family(config.posterior).capabilities.contains(.positiveSupport) {
            // The positive-weight recipe (docs/positive-weights.md): a positive bank everywhere
            // cannot form a contrast before the network's end; first layer only is the measured option.
            config.customLayers = .first
            let after = command.model.norm == .instance ? "instance norm follows it" : "--norm none: nothing normalises it, the recipe needs --norm instance"
            note("note: \(config.posterior) has positive support, so it and --prior go on the first Bayesian convolution only (\(after)), Normal/Normal elsewhere: the positive-weight recipe; --custom-layers all puts it on every layer")
        }
        let shape = command.model.unet(inputChannels: plan.channels.count, classCount: plan.classCount)
        var t = TrainingConfig()
        t.seed = command.seed; t.epochs = command.epochsToTrain; t.batchSize = command.batchSize ?? 2; t.learningRate = command.adamLearningRate
        t.beta = command.beta; t.betaAnnealEpochs = command.betaAnneal; t.evaluationSamples = command.samples
        t.positiveLearningRateScale = command.positiveLRScale
        t.dataset = "folder"
        var p = PatchTrainingConfig()
        p.data = dir; p.fold = options.fold; p.folds = options.folds; p.stepsPerEpoch = options.stepsPerEpoch
        p.augmentation = AugmentationSettings(policy: options.augmentation, spacing: plan.spacing); p.learningRateSchedule = .polynomial
        let shapes = train.map { Array($0.image.shape.dropFirst()) }
        let median = (0..<3).map { a in shapes.map { $0[a] }.sorted()[shapes.count / 2] }
        if let patch = options.patch {
            p.patchSize = patch.values
        } else {
            p.patchSize = PatchSizePlan.patchSize(medianShape: median, spacing: plan.spacing, shape: shape, batchSize: t.batchSize, budgetMiB: options.memoryBudget)
        }
        note("patches \(p.patchSize.map(String.init).joined(separator: "x")) (median case \(median.map(String.init).joined(separator: "x")))" + (options.patch == nil ? ", from --memory-budget \(options.memoryBudget) MiB" : "") + ", batch \(t.batchSize)")
        let model: UNet
        do {
            try UNet.checkPatch(p.patchSize, shape: shape)
            model = try UNet(config, shape: shape, registry: registry, seed: t.seed, log: note)
        } catch let e as LayerError {
            throw InputError(e.description)
        }
        if let source = options.initFrom {
            let trained = try TrainedModel.load(source, registry: registry, allowPluginChange: command.allowPluginChange, log: note)
            guard case .unet(let det) = trained.network else {
                throw InputError("--init-from \(source): it holds the built-in binary network; MOPED needs a deterministic U-Net checkpoint of `flipout train --data ... --deterministic`.")
            }
            do { try MOPED.initialize(model, from: det, delta: options.mopedDelta) } catch let e as LayerError { throw InputError(e.description) }
            p.initFrom = source; p.mopedDelta = options.mopedDelta
            note("MOPED: posterior means from \(source), scales \(options.mopedDelta) * |mean|")
        }
        let trainer = try PatchTrainer(model: model, training: t, patch: p, plan: plan, train: train, validation: validation,
                                       runDirectory: command.runFolder, log: note)
        return (trainer, folder)
    }

    /// Per-class Dice on the test cases that have labels (labelsTs), written to results.json.
    func report(_ trainer: PatchTrainer, folder: DatasetFolder, trainSeconds: Double) throws {
        let labelled = folder.test.filter { $0.labelPath != nil }
        let test = try folder.prepare(labelled, plan: trainer.plan)
        let samples = trainer.model.flipoutLayers.isEmpty ? 1 : trainer.training.evaluationSamples
        let dice = test.isEmpty ? [] : try TiledPrediction.meanDice(trainer.model, test, patchSize: trainer.patch.patchSize, samples: samples, seed: trainer.training.seed)
        let names = trainer.plan.classNames
        let validation = trainer.records.last?.validationDice ?? []
        var o: [String: Any] = ["classes": names, "epochs": trainer.epochsDone, "train_seconds": trainSeconds,
                                "patch_size": trainer.patch.patchSize, "samples": samples, "test_cases": test.count]
        func json(_ d: [Double]) -> [Any] { d.map { $0.isNaN ? NSNull() : $0 as Any } }
        if !dice.isEmpty { o["test_dice"] = json(dice) }
        if !validation.isEmpty { o["validation_dice"] = json(validation) }
        let data = try JSONSerialization.data(withJSONObject: o, options: [.prettyPrinted, .sortedKeys])
        try FileIO.writeAtomically(Array(data), to: (trainer.runDirectory as NSString).appendingPathComponent("results.json"))
        if !dice.isEmpty {
            print("test dice (\(test.count) cases, \(samples) samples): " + TiledPrediction.describe(dice, names: names))
        } else {
            print("no labelled test cases (labelsTs/); " + (validation.isEmpty ? "train with --fold k to validate." : "validation dice: " + TiledPrediction.describe(validation, names: names)))
        }
        if !validation.isEmpty && !dice.isEmpty { print("validation dice: " + TiledPrediction.describe(validation, names: names)) }
        print(String(format: "train time %.1f s, %d epochs (%@)", trainSeconds, trainer.epochsDone,
                     trainer.model.flipoutLayers.isEmpty ? "deterministic" : "Bayesian, Flipout on \(trainer.model.flipoutLayers.count)/\(trainer.model.layers.count) convolutions"))
        note("run folder: \(trainer.runDirectory) (checkpoint.safetensors, metrics.csv, metrics.json, results.json)")
    }
}
