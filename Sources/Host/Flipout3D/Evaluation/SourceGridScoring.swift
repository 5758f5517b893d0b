// Dice of labelled dataset cases scored on their original grids (as nnU-Net and `flipout evaluate` score), for run reports.
//
// A case is predicted exactly as `flipout predict` does (dataset plan, sliding windows, each
// sample resampled back to the source grid, the label map there: argmax, or nnU-Net's region
// rule for a region-based plan, then the checkpoint's post-processing) and compared with its
// label file as it is on disk: no upsampled labels, no prepared grid. Voxels of the plan's
// ignore label are left out.
import Foundation

/// One scored case of a run report: Dice per output (class 0..<K, or region), nil where the
/// output is in neither the label nor the prediction.
public struct ScoredCase: Codable, Sendable, Equatable {
    public var id: String
    public var dice: [Double?]
}

public enum SourceGridScoring {
    /// Per output (class, or region of a region-based plan), the hard Dice of one labelled case on
    /// its source grid (NaN where absent from both maps). `progress(windows done, total)`.
    public static func caseDice(_ c: DatasetCase, plan: PreprocessingPlan, window: SlidingWindowOptions, draws: Int,
                                postprocessing: Postprocessing = .none, progress: (SlidingWindowProgress) -> Void = { _ in },
                                predictor: WindowPredictor) throws -> [Double] {
        guard let labelPath = c.labelPath else { throw CaseInputError("case \(c.id) has no label file to score against") }
        var settings = PredictionSettings(window: window, classNames: plan.labelValueNames)
        settings.preprocessing = .plan(plan)
        settings.window.sigmoidOutputs = plan.regions != nil
        let (maps, volumes) = try CasePredictor.predictMaps(CaseInput(id: c.id, channels: c.imagePaths), channels: plan.channels.count,
                                                           classes: plan.outputCount, draws: draws, settings: settings,
                                                           progress: progress, predictor: predictor)
        let label = try NIfTI.read(labelPath)
        guard CasePredictor.sameGrid(label.header, volumes[0].header) else {
            throw CaseInputError(CasePredictor.gridMismatch(labelPath, label.header, c.imagePaths[0], volumes[0].header))
        }
        let truth = try label.data.array.map { v -> Int in
            guard v.isFinite, v >= 0, v < Float(plan.classCount) || plan.isIgnored(Int(v)), v == v.rounded() else {
                throw CaseInputError("\(labelPath): value \(v) is not a label value 0..<\(plan.classCount)\(plan.ignoreLabel.map { " or the ignore label \($0)" } ?? "")")
            }
            return Int(v)
        }
        let shape = volumes[0].header.shape
        let raw = plan.regions != nil ? plan.labelMap(maps.probabilities) : maps.labels
        let predicted = postprocessing.apply(raw, shape: shape)
        return TiledPrediction.dice(prediction: predicted.map(Int.init), truth: truth, plan: plan)
    }

    /// Per output (index 0 = background for classes), the mean over `cases` of the hard Dice on
    /// the source grid, leaving out cases where the output is in neither the label nor the
    /// prediction (as nnU-Net); NaN for an output no case holds.
    public static func meanDice(_ cases: [DatasetCase], plan: PreprocessingPlan, window: SlidingWindowOptions, draws: Int,
                                predictor: WindowPredictor) throws -> [Double] {
        let perCase = try cases.filter { $0.labelPath != nil }.map { try caseDice($0, plan: plan, window: window, draws: draws, predictor: predictor) }
        return TiledPrediction.meanOverCases(perCase, outputs: plan.outputCount)
    }

    /// A trained model's report on labelled cases, predicted as `flipout predict` predicts by
    /// default (windows of the patch size, overlap 0.5, Gaussian blending, `samples` Monte Carlo
    /// samples, 1 for a deterministic network, test-time mirroring along `mirrorAxes`, the
    /// checkpoint's post-processing). `progress(case index, case id, windows)` as windows finish.
    public static func report(_ trained: TrainedModel, _ cases: [DatasetCase], samples: Int, seed: UInt64, overlap: Double = 0.5,
                              mirrorAxes: [Int] = [], postprocessing: Postprocessing = .none,
                              progress: (Int, String, SlidingWindowProgress) -> Void = { _, _, _ in }) throws -> [ScoredCase] {
        let predictor = ModelPredictor(trained, samples: samples, seed: seed)
        let window = SlidingWindowOptions(window: trained.patchSize, overlap: overlap, mirrorAxes: mirrorAxes)
        return try cases.filter { $0.labelPath != nil }.enumerated().map { i, c in
            let d = try caseDice(c, plan: trained.plan, window: window, draws: predictor.draws, postprocessing: postprocessing,
                                 progress: { progress(i, c.id, $0) }, predictor: predictor.callAsFunction)
            return ScoredCase(id: c.id, dice: d.map { $0.isNaN ? nil : $0 })
        }
    }
}
