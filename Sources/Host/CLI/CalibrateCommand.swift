// `flipout calibrate`: fit a temperature on a training run's validation fold and store it in the checkpoint.
import ArgumentParser
import Foundation
import Flipout3D

struct CalibrateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "calibrate",
        abstract: "Fit temperature scaling on the validation fold of a run and store it in the checkpoint.",
        discussion: """
        Predicts every validation case of --fold k (splits.json beside the checkpoint, as
        flipout train --data DIR --fold k wrote it) exactly as flipout predict does, and fits
        one temperature T minimising the NLL of the predictive mean over the voxels within
        --roi-margin mm of each case's labelled foreground (all voxels would let background
        decide). T tempers each Monte Carlo sample, softmax(z_t / T), before samples are
        averaged, so MI stays the disagreement between samples. Prints NLL and ECE (15 bins,
        top label) on those voxels before and after, and writes T into the checkpoint's
        metadata (flipout3d.temperature; --output to write a copy instead). flipout predict
        then applies it (--no-temperature to skip) and flipout evaluate reports NLL and ECE
        before and after on any labelled cases. A region-based checkpoint (dataset.json regions,
        one sigmoid per region) is tempered per output, sigmoid(logit(p) / T), with one T for
        every region, fitted on the regions' summed binary NLL. Voxels of the ignore label are
        left out of the fit.

        Examples:
          flipout train --data Dataset001 --fold 0 --run-folder runs/f0
          flipout calibrate --checkpoint runs/f0/checkpoint.safetensors --data Dataset001 --fold 0
          flipout predict --checkpoint runs/f0/checkpoint.safetensors --input Dataset001/imagesTs --output preds
        """)

    @OptionGroup var plugins: PluginOptions
    @Option(help: "Checkpoint written by flipout train --data.") var checkpoint: String
    @Option(help: ArgumentHelp("The dataset folder the run was trained on.", valueName: "dir")) var data: String
    @Option(help: "The fold whose validation cases the temperature is fitted on (the run's --fold).") var fold: Int
    @Option(help: "Monte Carlo samples per case (a deterministic checkpoint uses 1).") var samples = 8
    @Option(help: "Fraction by which neighbouring windows overlap, in [0, 1).") var overlap = 0.5
    @Option(name: .customLong("window-batch"), help: "Windows per network call.") var windowBatch = 2
    @Option(help: "Seed of the prediction draws.") var seed: UInt64 = 1
    @Option(name: .customLong("roi-margin"), help: "Voxels within this many mm of the labelled foreground are fitted.") var roiMargin = 5.0
    @Option(help: "Write the calibrated checkpoint here instead of updating --checkpoint.") var output: String?
    @Flag(name: .customLong("allow-plugin-change"), help: "Use the checkpoint even if a plugin's SHA-256 changed.") var allowPluginChange = false

    /// At most this many voxels per case are kept for the fit (every m-th ROI voxel): the fit needs
    /// thousands of voxels, not millions, and memory is voxels x samples x classes floats.
    static let voxelsPerCase = 200_000

    func validate() throws {
        try Bounds.check(samples, Bounds.samples, option: "--samples")
        guard fold >= 0 else { throw ValidationError("--fold must be a fold index >= 0.") }
        guard overlap >= 0 && overlap < 1 else { throw ValidationError("--overlap must be in [0, 1), e.g. 0.5.") }
        guard windowBatch >= 1 else { throw ValidationError("--window-batch must be at least 1.") }
        guard roiMargin >= 0 && roiMargin.isFinite else { throw ValidationError("--roi-margin must be a distance in mm >= 0.") }
    }

    func run() throws {
        try reportingInputErrors {
            let registry = try plugins.registry()
            let trained = try TrainedModel.load(checkpoint, registry: registry, allowPluginChange: allowPluginChange, log: note)
            guard case .unet = trained.network else {
                throw InputError("\(checkpoint) holds the built-in binary network; flipout calibrate fits a U-Net of flipout train --data DIR --fold k on that fold's validation cases.")
            }
            let folder = try DatasetFolder(data)
            let splitsPath = Paths.join(Paths.parent(checkpoint), Splits.fileName)
            guard FileIO.exists(splitsPath) else {
                throw InputError("no \(Splits.fileName) beside \(checkpoint): calibrate needs the validation cases of a run trained with flipout train --data DIR --fold k.")
            }
            let splits: [FoldSplit]
            do { splits = try JSONDecoder().decode([FoldSplit].self, from: Data(try FileIO.read(splitsPath))) } catch let e as FileIOError { throw e } catch {
                throw InputError("\(splitsPath): not a list of {\"train\": [...], \"val\": [...]} (\(error))")
            }
            guard fold < splits.count else { throw InputError("--fold \(fold): \(splitsPath) has folds 0..<\(splits.count).") }
            let byID = Dictionary(folder.training.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
            let cases = splits[fold].val.compactMap { byID[$0] }.filter { $0.labelPath != nil }
            guard !cases.isEmpty else { throw InputError("fold \(fold) of \(splitsPath) has no labelled validation case in \(data).") }

            let predictor = ModelPredictor(trained, samples: samples, seed: seed)
            let plan = trained.plan
            let regions = plan.regions
            var settings = PredictionSettings(window: SlidingWindowOptions(window: trained.patchSize, overlap: overlap, batch: windowBatch),
                                              classNames: plan.labelValueNames)
            settings.preprocessing = .plan(plan)
            settings.window.sigmoidOutputs = regions != nil
            var fit = TemperatureScaling.Samples(classes: plan.outputCount, draws: predictor.draws, sigmoidOutputs: regions != nil)
            let line = ProgressLine(total: cases.count, label: "calibrate: fold \(fold) validation cases")
            for (i, c) in cases.enumerated() {
                let label = try NIfTI.read(c.labelPath!)
                let values = label.data.array.map { Int32($0.rounded()) }
                let shape = label.header.shape
                guard values.allSatisfy({ ($0 >= 0 && Int($0) < plan.classCount) || plan.isIgnored(Int($0)) }) else {
                    throw InputError("\(c.labelPath!): label values outside 0..<\(plan.classCount)\(plan.ignoreLabel.map { " (and the ignore label \($0))" } ?? "")")
                }
                // The ignore label's voxels have no known class: out of the ROI and the fit.
                let ignored = values.map { plan.isIgnored(Int($0)) }
                let known = values.indices.map { ignored[$0] ? 0 : values[$0] }
                let roi = UncertaintyMetrics.regionOfInterest(prediction: known, truth: known, shape: shape,
                                                             spacing: CasePredictor.voxelSpacing(label.header), margin: roiMargin)
                var chosen = roi.indices.filter { roi[$0] && !ignored[$0] }
                if chosen.isEmpty { chosen = known.indices.filter { !ignored[$0] } }
                guard !chosen.isEmpty else { throw InputError("\(c.labelPath!): every voxel is the ignore label; nothing to fit on.") }
                let step = max(1, (chosen.count + Self.voxelsPerCase - 1) / Self.voxelsPerCase)
                chosen = stride(from: 0, to: chosen.count, by: step).map { chosen[$0] }
                let k = plan.outputCount, s = predictor.draws, base = fit.probabilities.count
                fit.probabilities += [Float](repeating: 0, count: chosen.count * s * k)
                // Classes: the label value; regions: one bit per region holding the value.
                fit.truth += chosen.map { v in
                    guard let regions else { return known[v] }
                    return regions.indices.reduce(Int32(0)) { bits, r in regions[r].contains(Int(known[v])) ? bits | Int32(1 << r) : bits }
                }
                var grid: [Int] = []
                _ = try CasePredictor.predictMaps(CaseInput(id: c.id, channels: c.imagePaths), channels: plan.channels.count, classes: k,
                                                  draws: s, settings: settings, sampleHook: { t, p in
                    if grid.isEmpty { grid = Array(p.shape.dropFirst()) }
                    let n = p.count / k
                    for (j, v) in chosen.enumerated() { for c in 0..<k { fit.probabilities[base + (j * s + t) * k + c] = p.data[c * n + v] } }
                }, predictor: predictor)
                guard grid == shape else { throw InputError("\(c.labelPath!): its grid \(shape) differs from the images' \(grid)") }
                line.update(done: i + 1, c.id)
            }
            let t = TemperatureScaling.fit(fit)
            let before = (fit.nll(temperature: 1), fit.ece(temperature: 1)), after = (fit.nll(temperature: t), fit.ece(temperature: t))
            let target = output ?? checkpoint
            try TemperatureScaling.store(t, checkpoint: checkpoint, output: target)
            print(String(format: "temperature %.4f fitted on %d voxels of %d validation case(s) (fold %d, %d sample(s) each)", t, fit.voxels, cases.count, fold, predictor.draws))
            print(String(format: "  NLL %.4f -> %.4f   ECE %.4f -> %.4f   (voxels within %.1f mm of the labelled foreground%@)", before.0, after.0, before.1, after.1, roiMargin,
                         regions == nil ? "" : "; \(regions!.count) regions, one sigmoid each: NLL summed over regions, ECE over (voxel, region) pairs"))
            print("wrote the temperature into \(target) (metadata \(TemperatureScaling.metadataKey))")
        }
    }
}
