// `flipout train`: the U-Net on a dataset folder (--data, or the exported synthetic default), on patches, over one or several ranks; resume; per-class Dice on validation and test cases.
import ArgumentParser
import Foundation
import Flipout3D

extension Augmentation: ExpressibleByArgument {}
extension LearningRateSchedule: ExpressibleByArgument {}

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

    @Option(help: ArgumentHelp("Training patch size in voxels along (D, H, W) = (S, A, R), each a multiple of 2^(levels-1), 1 to 512, at most 256³ voxels (default: the median case shape within --memory-budget).", valueName: "d,h,w"))
    var patch: PatchArgument?

    @Option(help: ArgumentHelp("Target spacing in mm along (D, H, W) = (S, A, R), each 0.001 to 100 (default: the dataset's median; without --patch, coarsened until the default patch covers a quarter of the median case, nnU-Net's 3d_lowres rule).", valueName: "d,h,w"))
    var spacing: SpacingArgument?

    @Option(help: ArgumentHelp("Cross-validation fold to train: 0..<--folds (validating on its held-out cases), or all (every case, no validation).", valueName: "k|all"))
    var fold = "all"

    @Option(help: "Number of folds (DIR/splits_final.json if present, else a fixed partition of the dataset's case ids; copied into the run folder as splits.json).")
    var folds = 5

    @Option(name: .customLong("steps-per-epoch"), help: "Optimizer steps per epoch, whatever the dataset size (nnU-Net: 250 on a GPU; 0: one patch per training case).")
    var stepsPerEpoch = FolderTrainingDefaults.stepsPerEpoch

    @Option(help: "On-the-fly augmentation: default (nnU-Net's: rotation, scaling, noise, blur, brightness, contrast, low resolution, gamma, mirroring) or none.")
    var augmentation: Augmentation = .default
    @Option(name: .customLong("lr-schedule"), help: "Learning rate per epoch: polynomial (nnU-Net's lr·(1 − epoch/epochs)^0.9) or constant. With polynomial, `--resume --epochs N` re-plans the decay over N epochs, so an extended run differs from one trained for N epochs from the start; with constant it equals it bit for bit.")
    var lrSchedule: LearningRateSchedule = .polynomial

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
    }

    /// Every long option of this group (refused with --resume, which takes them from the checkpoint).
    static let longNames = ["--patch", "--spacing", "--fold", "--folds", "--steps-per-epoch", "--augmentation", "--lr-schedule", "--memory-budget", "--init-from", "--moped-delta"]
}

/// The one training path of `flipout train`: a new run on a dataset folder, or a resumed one.
/// Every rank runs it alike (so a refusal is the same on all); rank 0 speaks and writes.
struct FolderTraining {
    let command: TrainCommand
    let registry: PluginRegistry
    let communicator: Communicator
    var options: FolderTrainingOptions { command.folder }
    var isRoot: Bool { communicator.isRoot }
    /// Rank 0 speaks for the job.
    var say: (String) -> Void { isRoot ? { note($0) } : { _ in } }

    /// The embedded default: the synthetic generator's folder, as `datasets export-synthetic` writes it.
    static let defaultCases = (training: 32, test: 8, ood: 8)

    func run() throws {
        let trainer = try command.resume != nil ? resume() : start()
        trainer.showProgress = !command.quiet
        let started = Date()
        try trainer.run()
        let seconds = Date().timeIntervalSince(started)
        if trainer.stepsTimed > 0 {
            let perStep = trainer.stepSeconds / Double(trainer.stepsTimed)
            say(String(format: "throughput: %.3f steps/s (%.1f ms per step over %d steps after the first, patch cutting included)",
                       1 / perStep, perStep * 1e3, trainer.stepsTimed) +
                (communicator.worldSize > 1 ? "; \(communicator.worldSize) ranks, " + trainer.parallel.reduceSummary(stepSeconds: perStep) : ""))
        }
        // Test cases are scored on rank 0 alone; the others are done.
        guard isRoot else { return }
        try report(trainer, folder: try DatasetFolder(trainer.patch.data), trainSeconds: seconds)
    }

    /// Rank 0 runs `body` (writing files); the others wait until it is done.
    func onRoot(_ body: () throws -> Void) throws {
        if isRoot { try body() }
        if communicator.worldSize > 1 { try communicator.barrier() }
    }

    /// Continues the run of --resume C: in C's folder, or in --run DIR after copying the run there.
    func resume() throws -> PatchTrainer {
        let checkpoint = command.resume!
        let source = Paths.parent(checkpoint).isEmpty ? "." : Paths.parent(checkpoint)
        let same = { (a: String, b: String) in URL(fileURLWithPath: a).standardizedFileURL.path == URL(fileURLWithPath: b).standardizedFileURL.path }
        let target = GivenOptions.contains("--run") ? command.runFolder : source
        let own = Paths.join(target, "checkpoint.safetensors")
        if same(target, source) {
            // The run continues where its checkpoint lies, writing checkpoint.safetensors there: refuse to
            // replace another checkpoint (a backup copy resumed beside its run's own checkpoint).
            if !same(own, checkpoint) && FileIO.exists(own) {
                throw InputError("--resume \(checkpoint): the run continues in \(source), which holds another checkpoint (\(own)) that it would replace; continue into a new folder with --run DIR, or resume \(own).")
            }
            try onRoot { RunFolder.removeStaleTemporaries(in: source, log: say) }
        } else {
            // A new folder receives a copy of the run (checkpoint, metrics, splits) before it continues there.
            try RunFolder.prepare(target, policy: .fresh, log: { _ in })
            _ = try Checkpoint.read(checkpoint)   // a damaged checkpoint is refused before anything is copied
            try onRoot {
                try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
                try FileIO.writeAtomically(try FileIO.read(checkpoint), to: own)
                for name in ["metrics.csv", "metrics.json", Splits.fileName] {
                    let from = Paths.join(source, name)
                    if FileIO.exists(from) { try FileIO.writeAtomically(try FileIO.read(from), to: Paths.join(target, name)) }
                }
                say("copied the run of \(checkpoint) into \(target); it continues there")
            }
        }
        let trainer: PatchTrainer
        do {
            trainer = try PatchTrainer.resume(checkpoint: checkpoint, registry: registry, runDirectory: target, allowPluginChange: command.allowPluginChange,
                                              epochs: command.epochs, communicator: communicator, log: say)
        } catch let e as ConfigError {
            throw InputError(e.description)
        }
        say("resuming \(checkpoint) after epoch \(trainer.epochsDone) of \(trainer.training.epochs)"
            + (trainer.epochsDone >= trainer.training.epochs ? " (the run is complete; --epochs N with N > \(trainer.epochsDone) extends it)" : "")
            + (same(target, source) ? "" : " in \(target)"))
        return trainer
    }

    /// The dataset folder of a new run: --data, or the embedded synthetic data exported into RUN/dataset
    /// (rank 0 writes it; an existing export of the same data is reused).
    func datasetFolder() throws -> String {
        if let data = options.data { return URL(fileURLWithPath: data).standardizedFileURL.path }
        let dir = URL(fileURLWithPath: Paths.join(command.runFolder, "dataset")).standardizedFileURL.path
        try onRoot {
            guard !FileIO.exists(Paths.join(dir, "dataset.json")) else {
                say("dataset: the embedded synthetic data already exported in \(dir)")
                return
            }
            let n = Self.defaultCases
            say("dataset: exporting the embedded synthetic data to \(dir) (\(n.training) training, \(n.test) test, \(n.ood) out-of-distribution cases; `flipout datasets export-synthetic` writes the same)")
            try FileManager.default.createDirectory(atPath: command.runFolder, withIntermediateDirectories: true)
            try SyntheticExport.write(to: dir, trainingCount: n.training, testCount: n.test, oodCount: n.ood, seed: 1)
        }
        return dir
    }

    /// A new run: checks the options and the data, then (and only then) clears the run folder for
    /// --overwrite, and builds the trainer.
    func start() throws -> PatchTrainer {
        // A fresh run refuses a folder holding another run before any work (it changes nothing).
        if !command.overwrite { try RunFolder.prepare(command.runFolder, policy: .fresh, log: say) }
        // The plugin options (ids, hyperparameters, prior parameters) are checked on a one-level network
        // before any data work, so a typo costs nothing.
        do {
            var probe = command.model.unet(inputChannels: 1, classCount: 2)
            probe.levels = 1; probe.width = 1
            _ = try UNet(try command.model.config(), shape: probe, registry: registry, seed: command.seed)
        } catch let e as LayerError {
            guard case .invalidConfiguration = e else { throw e }
            throw InputError(e.description)
        }
        let dir = try datasetFolder()
        let folder = try DatasetFolder(dir)
        let quiet = command.quiet || !isRoot
        func progress(_ what: String) -> (Int, Int, String) -> Void {
            { done, total, id in if !quiet && (done == total || done % max(1, total / 4) == 0) { note("\(what) \(done)/\(total) (\(id))") } }
        }
        let fingerprint = try DatasetFingerprint(folder: folder, progress: progress("fingerprint"))
        // Without --spacing and --patch: the median spacing, coarsened until the default patch sees a quarter of the case (SpacingPlan).
        let planned = options.spacing == nil && options.patch == nil ? SpacingPlan.spacing(fingerprint, shape: command.model.unet(inputChannels: fingerprint.channelNames.count, classCount: fingerprint.classCount), batchSize: command.trainingConfig().batchSize, budgetMiB: options.memoryBudget) : nil
        let plan = try fingerprint.checkedPlan(spacing: options.spacing?.values ?? planned?.spacing)
        if let planned, planned.spacing != fingerprint.medianSpacing { say(SpacingPlan.describe(planned, median: fingerprint.medianSpacing)) }
        let ids = folder.training.map(\.id)
        let splits: [FoldSplit]
        let split: FoldSplit
        switch options.foldSelection {
        case .all:
            splits = []
            split = try Splits.cases(.all, caseIDs: ids, splits: [])
        case .fold:
            splits = try Splits.forDataset(root: folder.root, caseIDs: ids, folds: options.folds)
            split = try Splits.cases(options.foldSelection, caseIDs: ids, splits: splits)
        }
        let byID = Dictionary(folder.training.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        let train = try folder.prepare(split.train.compactMap { byID[$0] }, plan: plan, progress: progress("preparing"))
        let validation = try folder.prepare(split.val.compactMap { byID[$0] }, plan: plan)
        say("dataset \(folder.name): \(train.count) training cases, \(validation.count) validation (fold \(options.fold)), \(plan.channels.count) channels \(plan.channelNames), \(plan.regions == nil ? "\(plan.classCount) classes \(plan.classNames)" : "\(plan.outputCount) regions \(plan.outputNames) (one sigmoid each)")\(plan.ignoreLabel.map { ", ignore label \($0)" } ?? ""), spacing \(plan.spacing.map { String(format: "%.3g", $0) }.joined(separator: "x")) mm")

        var config = try command.model.config()
        if command.model.customLayers == nil && config.bayesian,
           try registry.family(config.posterior).capabilities.contains(.positiveSupport) {
            // The positive-weight recipe (docs/positive-weights.md): a positive bank everywhere
            // cannot form a contrast before the network's end; first layer only is the measured option.
            config.customLayers = .first
            let after = command.model.norm == .instance ? "instance norm follows it" : "--norm none: nothing normalises it, the recipe needs --norm instance"
            say("note: \(config.posterior) has positive support, so it and --prior go on the first Bayesian convolution only (\(after)), Normal/Normal elsewhere: the positive-weight recipe; --custom-layers all puts it on every layer")
        }
        let shape = command.model.unet(inputChannels: plan.channels.count, classCount: plan.outputCount)
        let t = command.trainingConfig()
        var p = PatchTrainingConfig()
        p.data = dir; p.fold = options.fold; p.folds = options.folds; p.stepsPerEpoch = options.stepsPerEpoch
        p.augmentation = AugmentationSettings(policy: options.augmentation, spacing: plan.spacing); p.learningRateSchedule = options.lrSchedule
        let shapes = train.map { Array($0.image.shape.dropFirst()) }
        let median = (0..<3).map { a in shapes.map { $0[a] }.sorted()[shapes.count / 2] }
        if let patch = options.patch {
            p.patchSize = patch.values
        } else {
            p.patchSize = PatchSizePlan.patchSize(medianShape: median, spacing: plan.spacing, shape: shape, batchSize: t.batchSize, budgetMiB: options.memoryBudget)
        }
        say("patches \(p.patchSize.map(String.init).joined(separator: "x")) (median case \(median.map(String.init).joined(separator: "x")))" + (options.patch == nil ? ", from --memory-budget \(options.memoryBudget) MiB" : "") + ", batch \(t.batchSize)" + (communicator.worldSize > 1 ? " over \(communicator.worldSize) ranks" : ""))
        let model: UNet
        do {
            try UNet.checkPatch(p.patchSize, shape: shape)
            model = try UNet(config, shape: shape, registry: registry, seed: t.seed, log: say)
        } catch let e as LayerError {
            throw InputError(e.description)
        }
        if let source = options.initFrom {
            let det = try TrainedModel.load(source, registry: registry, allowPluginChange: command.allowPluginChange, log: say).model
            do { try MOPED.initialize(model, from: det, delta: options.mopedDelta) } catch let e as LayerError { throw InputError(e.description) }
            p.initFrom = URL(fileURLWithPath: source).standardizedFileURL.path; p.mopedDelta = options.mopedDelta
            say("MOPED: posterior means from \(source), scales \(options.mopedDelta) * |mean|")
        }
        // Everything is checked: only now may --overwrite replace the previous run's files.
        if command.overwrite { try RunFolder.prepare(command.runFolder, policy: .overwrite, log: say) }
        let trainer: PatchTrainer
        do {
            trainer = try PatchTrainer(model: model, training: t, patch: p, plan: plan, train: train, validation: validation,
                                       runDirectory: command.runFolder, communicator: communicator, log: say)
        } catch let e as LayerError {
            guard case .invalidConfiguration = e else { throw e }
            throw InputError(e.description)
        }
        if !splits.isEmpty {
            try onRoot {
                let encoder = JSONEncoder(); encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                try FileIO.writeAtomically(Array(try encoder.encode(splits)) + [0x0a], to: Paths.join(command.runFolder, Splits.fileName))
            }
        }
        return trainer
    }

    /// Per-class (or per-region) Dice on the test cases that have labels (labelsTs), predicted as
    /// `flipout predict` predicts (sliding windows on the plan's grid, each sample back on the
    /// case's own grid, the checkpoint's post-processing) with a progress line per case, scored
    /// against the label files; the means and every case's values go to results.json.
    func report(_ trainer: PatchTrainer, folder: DatasetFolder, trainSeconds: Double) throws {
        let labelled = folder.test.filter { $0.labelPath != nil }
        let samples = trainer.model.flipoutLayers.isEmpty ? 1 : trainer.training.evaluationSamples
        var line: ProgressLine?, current = -1
        let mirrorAxes = trainer.patch.augmentation.map(TestTimeMirroring.trainedAxes) ?? [] // predict's default --tta
        let scored = try SourceGridScoring.report(trainer.trained, labelled, samples: samples, seed: trainer.training.seed,
                                                  mirrorAxes: mirrorAxes, postprocessing: trainer.postprocessing) { i, id, p in
            if i != current {
                current = i
                line = ProgressLine(total: p.total, label: "test case \(i + 1)/\(labelled.count) \(id): windows")
                line!.enabled = !command.quiet
            }
            line!.update(done: p.windowsDone, "(\(p.windows) per sample x \(p.draws) samples)")
        }
        let plan = trainer.plan
        let dice = scored.isEmpty ? [] : TiledPrediction.meanOverCases(scored.map { $0.dice.map { $0 ?? .nan } }, outputs: plan.outputCount)
        let test = scored
        let names = plan.outputNames
        let validation = trainer.records.last?.validationDice ?? []
        // "classes" names the entries of every Dice list: the classes, or the regions of a region-based plan.
        var o: [String: Any] = ["classes": names, "epochs": trainer.epochsDone, "train_seconds": trainSeconds,
                                "patch_size": trainer.patch.patchSize, "samples": samples, "test_cases": test.count,
                                "region_based": plan.regions != nil, "prediction": "sliding windows (overlap 0.5, Gaussian), on each case's own grid, as flipout predict"]
        func json(_ d: [Double]) -> [Any] { d.map { $0.isNaN ? NSNull() : $0 as Any } }
        if !dice.isEmpty {
            o["test_dice"] = json(dice)
            o["test_case_dice"] = test.map { ["id": $0.id, "dice": $0.dice.map { $0.map { $0 as Any } ?? NSNull() }] as [String: Any] }
        }
        if !validation.isEmpty { o["validation_dice"] = json(validation) }
        if let priors = trainer.learnedPriors {
            o["learned_priors"] = priors.map { l in ["layer": l.layer, "family": l.family, "values": Dictionary(uniqueKeysWithValues: l.values.map { ($0.name, Double($0.value)) })] as [String: Any] }
        }
        let data = try JSONSerialization.data(withJSONObject: o, options: [.prettyPrinted, .sortedKeys])
        try FileIO.writeAtomically(Array(data), to: Paths.join(trainer.runDirectory, "results.json"))
        if !dice.isEmpty {
            print("test dice (\(test.count) cases, \(samples) samples): " + TiledPrediction.describe(dice, plan: plan))
        } else {
            print("no labelled test cases (labelsTs/); " + (validation.isEmpty ? "train with --fold k to validate." : "validation dice: " + TiledPrediction.describe(validation, plan: plan)))
        }
        if !validation.isEmpty && !dice.isEmpty { print("validation dice: " + TiledPrediction.describe(validation, plan: plan)) }
        print(String(format: "train time %.1f s, %d epochs (%@)", trainSeconds, trainer.epochsDone,
                     trainer.model.flipoutLayers.isEmpty ? "deterministic" : "Bayesian, Flipout on \(trainer.model.flipoutLayers.count)/\(trainer.model.layers.count) convolutions"))
        if let learned = trainer.learnedPriorSummary { print(learned) }
        note("run folder: \(trainer.runDirectory) (checkpoint.safetensors, metrics.csv, metrics.json, results.json)")
    }
}
