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
        sigma_scale=0.125). Windows blend, samples aggregate: each Monte Carlo sample's
        windows are blended into p_t first, then per voxel the sums of p_t and of H(p_t)
        over samples are kept; entropy, expected entropy and MI are computed once at the
        end, so window disagreement never counts as epistemic (a deterministic model has
        MI 0). On a case the dataset plan resamples, each sample p_t goes back to the
        input's grid (trilinear) before its entropy is taken: the entropy map is H of the
        probability map written, and interpolation adds to the expected entropy, not MI.
        Repeat --checkpoint for a deep ensemble: every member's samples pool into the
        same sums. A checkpoint calibrated by flipout calibrate has its temperature
        applied to each of its samples (CASE_probabilities_untempered.nii.gz keeps the
        mean without it, so flipout evaluate reports NLL and ECE before and after). Inputs are z-scored per channel over their nonzero voxels
        unless --no-normalise.

        Test-time mirroring is on by default, along the axes the training mirrored (as
        the checkpoint records its augmentation; every axis under --augmentation default,
        none for a run trained without augmentation; for an ensemble, the axes every member
        mirrored), as nnU-Net does: each window of each Monte Carlo sample is predicted on
        the 2^n mirrorings of its input (n axes: up to 8 network passes), each mirrored back,
        and their probabilities averaged before the window blends into the sample. The
        flips pool into each sample, not into the spread between samples, so MI still
        measures weight uncertainty (a deterministic model keeps MI 0). It costs 2^n times
        the network passes. --tta none (or --no-tta) turns it off; --tta all flips D, H
        and W whatever the training did; --tta D,W chooses axes (of the network's grid,
        RAS after the plan's reorientation). CASE.json records the axes.

        Monte Carlo sample t of a Flipout network is row t mod 8 of weight draw t / 8: one
        shared perturbation per 8 samples, each decorrelated by Flipout's sign flips per
        (sample, channel), as the rows of a training batch are. A sample is the same weight
        draw in every window, for any --samples (the first 8 samples are the same with 8 or
        16) and any --samples-per-call (how many of a window's samples share one network call).

        Examples:
          flipout predict --checkpoint runs/default/checkpoint.safetensors --input Dataset001/imagesTs --output preds
          flipout predict --checkpoint a.safetensors --checkpoint b.safetensors --checkpoint c.safetensors --input t1.nii.gz --output ens
          flipout predict --checkpoint runs/default/checkpoint.safetensors --input t1.nii.gz --output fast --no-tta --samples 8
        """)

    @OptionGroup var plugins: PluginOptions
    @Option(help: "Checkpoint written by flipout train; repeat for a deep ensemble.") var checkpoint: [String] = []
    @Option(help: "Dataset folder, folder of NIfTI files, or one file.") var input: String
    @Option(help: "Output folder.") var output = "predictions"
    @Option(help: "Monte Carlo samples per checkpoint (a deterministic checkpoint uses 1).") var samples = 16
    @Option(help: "Fraction by which neighbouring windows overlap, from 0 to 0.9.") var overlap = 0.5
    @Option(name: .customLong("window-batch"), help: "Windows per network call for a deterministic network, 1 to 64 (memory grows with it); a Flipout network runs --samples-per-call samples of one window per call instead.") var windowBatch = 2
    @Option(name: .customLong("samples-per-call"), help: "Monte Carlo samples of one window per network call for a Flipout network, 1 to 8 (through the per-sample grouped convolution; 1 is the fastest measured). The maps do not depend on it.") var samplesPerCall = ModelPredictor.defaultDrawsPerCall
    @Option(help: "Window size D,H,W, each 4 to 512, at most 256³ voxels (default: the training patch size).") var window: String?
    @Option(name: .customLong("tta"), defaultAsFlag: TestTimeMirroring.trained, parsing: .next,
            help: ArgumentHelp("Test-time mirroring (on by default): trained (the axes the training mirrored), none, all, or axes such as D,W; each sample is the mean over the mirrorings.", valueName: "axes"))
    var tta: TestTimeMirroring? = nil
    @Flag(name: .customLong("no-tta"), help: "No test-time mirroring (as --tta none).") var noTTA = false
    @Option(help: "Seed of the prediction draws.") var seed: UInt64 = 1
    @Flag(name: .customLong("no-normalise"), help: "Use the input intensities as they are.") var noNormalise = false
    @Option(help: "NaN or infinite input voxels: refuse (default, exit 65), zero (make them 0), or clip (NaN to 0, inf to the volume's finite extreme).")
    var nonfinite: NonFinitePolicy = .refuse
    @Flag(name: .customLong("no-temperature"), help: "Ignore a temperature stored by flipout calibrate.") var noTemperature = false
    @Flag(name: .customLong("allow-plugin-change"), help: "Use the checkpoint even if a plugin's SHA-256 changed.") var allowPluginChange = false

    func validate() throws {
        guard !checkpoint.isEmpty else { throw ValidationError("give at least one --checkpoint PATH (repeat it for an ensemble).") }
        try Bounds.check(samples, Bounds.samples, option: "--samples")
        guard overlap >= 0 && overlap < 1 else { throw ValidationError("--overlap must be in [0, 1), e.g. 0.5.") }
        guard windowBatch >= 1 else { throw ValidationError("--window-batch must be at least 1.") }
        guard (1...ModelPredictor.drawsPerGroup).contains(samplesPerCall) else { throw ValidationError("--samples-per-call must be from 1 to \(ModelPredictor.drawsPerGroup).") }
        if let window { _ = try parsedWindow(window) }
        if noTTA, let tta, tta != .axes([]) { throw ValidationError("--no-tta contradicts --tta \(tta); give one of them.") }
        try OptionRanges.check(self)
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
            let predictors = members.map { ModelPredictor($0, samples: samples, seed: seed, drawsPerCall: samplesPerCall) }
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
            try checkWindow(size, members: members, predictors: predictors)
            let ensemble = EnsemblePredictor(predictors)
            // Test-time mirroring: the axes every member's training mirrored, unless told otherwise.
            let trainedAxes = try checkpoint.map { TestTimeMirroring.trainedAxes(try Checkpoint.read($0)) }
                .reduce(Set([0, 1, 2])) { $0.intersection($1) }.sorted()
            let mirrorAxes = noTTA ? [] : (tta ?? .trained).resolve(trainedAxes: trainedAxes)
            let mirrorings = 1 << mirrorAxes.count
            let ttaText = mirrorAxes.isEmpty ? "" : " x \(mirrorings) mirrorings (\(TestTimeMirroring.names(mirrorAxes)))"
            try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)

            let found: (cases: [CaseInput], source: String)
            do { found = try CaseInputs.discover(input) } catch let e as CaseInputError { throw InputError(e.description) }
            let cases = found.cases
            note("predict: \(cases.count) case(s) from \(input) (\(found.source)); \(members.count) checkpoint(s), \(ensemble.draws) draw(s) per window\(ttaText), window \(size.map(String.init).joined(separator: "x")), overlap \(overlap)")
            let plan = members[0].plan
            var settings = PredictionSettings(window: SlidingWindowOptions(window: size, overlap: overlap, batch: windowBatch, mirrorAxes: mirrorAxes),
                                              classNames: plan.labelValueNames)
            settings.regionsClassOrder = plan.regionsClassOrder
            settings.window.sigmoidOutputs = plan.regions != nil
            settings.preprocessing = noNormalise ? .none : .plan(plan)
            if noNormalise { note("predict: --no-normalise: the dataset plan's normalisation and resampling are skipped") }
            // Temperatures stored by flipout calibrate: each member's samples are tempered with its own.
            if !noTemperature {
                let temps = try checkpoint.map { try TemperatureScaling.stored(in: $0) }
                if temps.contains(where: { $0 != nil }) {
                    settings.window.temperatures = zip(temps, predictors).flatMap { t, p in [Double](repeating: t ?? 1, count: p.draws) }
                    note("predict: temperature scaling \(zip(checkpoint, temps).map { "\(Paths.lastComponent($0)) T=\($1.map { String(format: "%.3f", $0) } ?? "1")" }.joined(separator: ", ")) applied to every sample (--no-temperature to skip); the untempered mean goes to CASE_probabilities_untempered.nii.gz")
                }
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
                                                       if line == nil { line = ProgressLine(total: p.total, label: "case \(i + 1)/\(cases.count) \(c.id): windows") }
                                                       line!.update(done: p.windowsDone, "(\(p.windows) per sample x \(p.draws) samples\(mirrorings > 1 ? " x \(mirrorings) mirrorings" : ""))")
                                                   },
                                                   predictor: ensemble)
                } catch let e as CaseInputError { throw InputError(e.description) }
                let fgName = report.classes.dropFirst().map { String(format: "%@ %.1f ml", $0.name, $0.volumeML) }.joined(separator: ", ")
                print(String(format: "%@: %@; mean entropy in foreground %@, MI %@ (%d windows x %d samples, %.1f s)", c.id, fgName,
                             report.meanEntropyForeground.map { String(format: "%.4f", $0) } ?? "-",
                             report.meanMutualInformationForeground.map { String(format: "%.5f", $0) } ?? "-", report.windows, report.draws, report.seconds))
            }
            print("wrote \(cases.count) case(s) to \(output)")
        }
    }

    /// Refuses a window smaller than both the network's receptive field and its training patch
    /// along an axis (each output voxel would depend mostly on zero padding: a 16³ window on a
    /// network trained on 48³ patches loses classes and inflates MI); warns when the window
    /// differs from the training patch (the network then sees other context than in training).
    func checkWindow(_ size: [Int], members: [TrainedModel], predictors: [ModelPredictor]) throws {
        func text(_ s: [Int]) -> String { s.map(String.init).joined(separator: "x") }
        for (i, (trained, p)) in zip(members, predictors).enumerated() {
            let tooSmall = (0..<3).filter { size[$0] < min(p.receptiveField, trained.patchSize[$0]) }
            if !tooSmall.isEmpty {
                let fix = (0..<3).map { max(size[$0], min(p.receptiveField, trained.patchSize[$0])) }
                throw InputError("--window \(text(size)) is smaller than the receptive field of \(checkpoint[i]) (\(p.receptiveField) voxels per axis) and than its training patch \(text(trained.patchSize)) along \(tooSmall.map { ["D", "H", "W"][$0] }.joined(separator: ", ")): every output voxel would depend mostly on zero padding. Use the training patch (leave out --window) or at least --window \(fix.map { ($0 + p.sizeMultiple - 1) / p.sizeMultiple * p.sizeMultiple }.map(String.init).joined(separator: ",")).")
            }
            if size != trained.patchSize {
                note("warning: --window \(text(size)) differs from the training patch \(text(trained.patchSize)) of \(checkpoint[i]): the network sees \(size.reduce(1, *) < trained.patchSize.reduce(1, *) ? "less" : "more") context than it was trained with, which changes its predictions and uncertainty; leave out --window to use the training patch.")
            }
        }
    }

}

extension NonFinitePolicy: ExpressibleByArgument {}

extension TestTimeMirroring: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument) }
    public var defaultValueDescription: String { description }
}
