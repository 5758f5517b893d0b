// `flipout predict`: sliding-window Monte Carlo prediction of every case of a folder (or one file), one or several checkpoints.
import ArgumentParser
import Foundation
import Flipout3D

struct PredictCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "predict",
        abstract: "Predict segmentations with voxel-wise uncertainty: sliding windows, Monte Carlo samples, ensembles.",
        discussion: """
        --input is a dataset folder (dataset.json; imagesTs, else imagesTr), a folder of
        NIfTI files (CASE_0000.nii.gz, CASE_0001.nii.gz, ... one file per channel, or
        one-channel files without the suffix), or one file. For every case, on the
        input's own grid and header (so 3D Slicer and ITK-SNAP overlay them):
          CASE.nii.gz                   label map (argmax of the predictive probabilities)
          CASE_probabilities.nii.gz     per-class probabilities, 4D (one volume per class)
          CASE_entropy.nii.gz           predictive entropy H[E p] (total uncertainty, nats)
          CASE_mi.nii.gz                mutual information H[E p] - E H[p] (epistemic)
          CASE_expected_entropy.nii.gz  expected entropy E H[p] (aleatoric)
          CASE_preview.png              slices: input | labels | entropy | mutual information
          CASE.json                     volume per class (mm3, ml), mean uncertainty in the
                                        predicted foreground (a quality-control score)
        Windows have the training patch size and overlap by --overlap, blended with
        Gaussian weights (MONAI's sliding_window_inference, mode="gaussian",
        sigma_scale=0.125). Per voxel the sums of p and of H(p) over windows and
        samples are kept; entropy, expected entropy and MI are computed once at the
        end. Repeat --checkpoint for a deep ensemble: every member's samples pool into
        the same sums. Inputs are z-scored per channel over their nonzero voxels
        unless --no-normalise.

        Examples:
          flipout predict --checkpoint runs/default/checkpoint.safetensors --input Dataset001/imagesTs --output preds
          flipout predict --checkpoint a.safetensors --checkpoint b.safetensors --checkpoint c.safetensors --input t1.nii.gz --output ens
          flipout predict --checkpoint runs/default/checkpoint.safetensors --synthetic ood:0 --output preds
        """)

    @OptionGroup var plugins: PluginOptions
    @Option(help: "Checkpoint written by flipout train; repeat for a deep ensemble.") var checkpoint: [String] = []
    @Option(help: "Dataset folder, folder of NIfTI files, or one file.") var input: String?
    @Option(help: "Instead of --input, a volume of the checkpoint's synthetic dataset: SPLIT:INDEX (train, validation, test, ood).")
    var synthetic: String?
    @Option(help: "Output folder.") var output = "predictions"
    @Option(help: "Monte Carlo samples per checkpoint (a deterministic checkpoint uses 1).") var samples = 16
    @Option(help: "Fraction by which neighbouring windows overlap, in [0, 1).") var overlap = 0.5
    @Option(name: .customLong("window-batch"), help: "Windows per network call (memory grows with it).") var windowBatch = 2
    @Option(help: "Window size D,H,W (default: the training patch size).") var window: String?
    @Flag(help: "Test-time mirroring: every sample is the mean over the 8 flips along D, H, W.") var tta = false
    @Option(help: "Seed of the prediction draws.") var seed: UInt64 = 1
    @Flag(name: .customLong("no-normalise"), help: "Use the input intensities as they are.") var noNormalise = false
    @Option(help: "NaN or infinite input voxels: refuse (default, exit 65), zero (make them 0), or clip (NaN to 0, inf to the volume's finite extreme).")
    var nonfinite: NonFinitePolicy = .refuse
    @Flag(name: .customLong("allow-plugin-change"), help: "Use the checkpoint even if a plugin's SHA-256 changed.") var allowPluginChange = false

    func validate() throws {
        guard !checkpoint.isEmpty else { throw ValidationError("give at least one --checkpoint PATH (repeat it for an ensemble).") }
        guard (input == nil) != (synthetic == nil) else { throw ValidationError("give exactly one of --input PATH or --synthetic SPLIT:INDEX.") }
        try Bounds.check(samples, Bounds.samples, option: "--samples")
        guard overlap >= 0 && overlap < 1 else { throw ValidationError("--overlap must be in [0, 1), e.g. 0.5.") }
        guard windowBatch >= 1 else { throw ValidationError("--window-batch must be at least 1.") }
        if let window { _ = try parsedWindow(window) }
    }

    func parsedWindow(_ s: String) throws -> [Int] {
        let parts = s.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard parts.count == 3, parts.allSatisfy({ ($0 ?? 0) >= 1 }) else { throw ValidationError("--window expects D,H,W, e.g. 32,32,32 (got \(s)).") }
        return parts.map { $0! }
    }

    func run() throws {
        try reportingInputErrors {
            let registry = try plugins.registry()
            let members = try checkpoint.map { try TrainedModel.load($0, registry: registry, allowPluginChange: allowPluginChange, log: note) }
            let predictors = members.map { ModelPredictor($0, samples: samples, seed: seed) }
            for (p, path) in zip(predictors, checkpoint) where p.classes != predictors[0].classes || p.channels != predictors[0].channels {
                throw InputError("\(path) predicts \(p.classes) classes from \(p.channels) channel(s); \(checkpoint[0]) predicts \(predictors[0].classes) from \(predictors[0].channels): ensemble members must agree.")
            }
            let windows = Set(members.map(\.patchSize))
            let size: [Int]
            if let window { size = try parsedWindow(window) } else {
                guard windows.count == 1 else {
                    throw InputError("the checkpoints were trained on different patch sizes (\(windows.map { $0.map(String.init).joined(separator: "x") }.sorted().joined(separator: ", "))); choose one with --window D,H,W.")
                }
                size = windows.first!
            }
            let m = predictors.map(\.sizeMultiple).max()!
            guard size.allSatisfy({ $0 >= 4 && $0 % m == 0 }) else {
                throw InputError("--window \(size.map(String.init).joined(separator: ",")): every size must be at least 4 and a multiple of \(m) for this network.")
            }
            let ensemble = EnsemblePredictor(predictors)
            try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)

            let cases: [CaseInput]
            if let input {
                let found: (cases: [CaseInput], source: String)
                do { found = try CaseInputs.discover(input) } catch let e as CaseInputError { throw InputError(e.description) }
                cases = found.cases
                note("predict: \(cases.count) case(s) from \(input) (\(found.source)); \(members.count) checkpoint(s), \(ensemble.draws) draw(s) per window\(tta ? " x 8 mirrorings" : ""), window \(size.map(String.init).joined(separator: "x")), overlap \(overlap)")
            } else {
                cases = [try syntheticCase(members[0])]
            }
            let plan = members[0].plan
            var settings = PredictionSettings(window: SlidingWindowOptions(window: size, overlap: overlap, batch: windowBatch, mirror: tta),
                                              classNames: members[0].training.dataset == "colin27" ? ["background", "brain"] : plan.classNames)
            if case .unet = members[0].network {
                settings.preprocessing = noNormalise ? .none : .plan(plan)
                if noNormalise { note("predict: --no-normalise: the dataset plan's normalisation and resampling are skipped") }
            } else {
                settings.preprocessing = input == nil || noNormalise ? .none : .zScoreNonzero
            }
            settings.members = checkpoint
            if checkpoint.count == 1 { settings.postprocessing = Postprocessing(checkpoint: try Checkpoint.read(checkpoint[0])) }
            settings.nonFinite = nonfinite
            settings.note = { note($0) }
            for (i, c) in cases.enumerated() {
                var line: ProgressLine?
                let report: CaseReport
                do {
                    report = try CasePredictor.run(c, channels: predictors[0].channels, classes: predictors[0].classes, draws: ensemble.draws, settings: settings, folder: output,
                                                   progress: { p in
                                                       if line == nil { line = ProgressLine(total: p.windows, label: "case \(i + 1)/\(cases.count) \(c.id): windows") }
                                                       line!.update(done: p.windowsDone, "x \(p.draws) samples\(tta ? " x 8 mirrorings" : "")")
                                                   },
                                                   predictor: ensemble.callAsFunction)
                } catch let e as CaseInputError { throw InputError(e.description) }
                let fgName = report.classes.dropFirst().map { String(format: "%@ %.1f ml", $0.name, $0.volumeML) }.joined(separator: ", ")
                print(String(format: "%@: %@; mean entropy in foreground %@, MI %@ (%d windows x %d samples, %.1f s)", c.id, fgName,
                             report.meanEntropyForeground.map { String(format: "%.4f", $0) } ?? "-",
                             report.meanMutualInformationForeground.map { String(format: "%.5f", $0) } ?? "-", report.windows, report.draws, report.seconds))
            }
            print("wrote \(cases.count) case(s) to \(output)")
        }
    }

    /// Writes a volume of the checkpoint's synthetic dataset (image and the generator's labels) and returns it as a case.
    func syntheticCase(_ trained: TrainedModel) throws -> CaseInput {
        let parts = synthetic!.split(separator: ":")
        guard parts.count == 2, let split = DataSplit(rawValue: String(parts[0])), let index = Int(parts[1]), index >= 0 else {
            throw InputError("--synthetic expects SPLIT:INDEX with SPLIT one of train, validation, test, ood (got \(synthetic!)).")
        }
        guard case .binary = trained.network else {
            throw InputError("--synthetic takes a volume of a built-in binary checkpoint's dataset; this checkpoint holds a U-Net trained on a dataset folder: predict its imagesTs with --input.")
        }
        let data = try trained.training.makeDataset()
        guard index < data.count(split) else { throw InputError("--synthetic \(synthetic!): the \(split.rawValue) split has \(data.count(split)) volumes.") }
        let (x, y) = try data.batch(split, indices: [index])
        let header = NIfTIHeader(shape: data.volumeSize)
        let id = "\(data.name)_\(split.rawValue)_\(index)"
        let image = (output as NSString).appendingPathComponent(id + "_0000.nii.gz")
        try NIfTI.write(x.reshaped(data.volumeSize), header: header, to: image)
        let truth = (output as NSString).appendingPathComponent("labels")
        try FileManager.default.createDirectory(atPath: truth, withIntermediateDirectories: true)
        try NIfTI.write(y.reshaped(data.volumeSize), header: header, datatype: .uint8, to: (truth as NSString).appendingPathComponent(id + ".nii.gz"))
        note("wrote the input \(image) and the generator's labels to \(truth)/ (score with flipout evaluate --predictions \(output) --labels \(truth))")
        return CaseInput(id: id, channels: [image])
    }
}

extension NonFinitePolicy: ExpressibleByArgument {}
