// Dice of labelled dataset cases scored on their original grids (as nnU-Net and `flipout evaluate` score), for run reports.
//
// A case is predicted exactly as `flipout predict` does (dataset plan, sliding windows, each
// sample resampled back to the source grid, argmax there) and compared with its label file as it
// is on disk: no upsampled labels, no prepared grid.
import Foundation

public enum SourceGridScoring {
    /// Per-class overlap counts of one labelled case on its source grid.
    public static func counts(_ c: DatasetCase, plan: PreprocessingPlan, window: SlidingWindowOptions, draws: Int,
                              predictor: WindowPredictor) throws -> OverlapCounts {
        guard let labelPath = c.labelPath else { throw CaseInputError("case \(c.id) has no label file to score against") }
        var settings = PredictionSettings(window: window, classNames: plan.classNames)
        settings.preprocessing = .plan(plan)
        let (maps, volumes) = try CasePredictor.predictMaps(CaseInput(id: c.id, channels: c.imagePaths), channels: plan.channels.count,
                                                           classes: plan.classCount, draws: draws, settings: settings, predictor: predictor)
        let label = try NIfTI.read(labelPath)
        guard CasePredictor.sameGrid(label.header, volumes[0].header) else {
            throw CaseInputError(CasePredictor.gridMismatch(labelPath, label.header, c.imagePaths[0], volumes[0].header))
        }
        let truth = try label.data.array.map { v -> Int32 in
            guard v.isFinite, v >= 0, v < Float(plan.classCount), v == v.rounded() else {
                throw CaseInputError("\(labelPath): value \(v) is not a class index 0..<\(plan.classCount)")
            }
            return Int32(v)
        }
        return OverlapCounts(prediction: maps.labels, truth: truth, classes: plan.classCount)
    }

    /// Per class (index 0 = background), the mean over `cases` of the hard Dice on the source grid,
    /// leaving out cases where the class is in neither the label nor the prediction (as nnU-Net);
    /// NaN for a class no case holds.
    public static func meanDice(_ cases: [DatasetCase], plan: PreprocessingPlan, window: SlidingWindowOptions, draws: Int,
                                predictor: WindowPredictor) throws -> [Double] {
        let k = plan.classCount
        var sums = [Double](repeating: 0, count: k), n = [Int](repeating: 0, count: k)
        for c in cases where c.labelPath != nil {
            let o = try counts(c, plan: plan, window: window, draws: draws, predictor: predictor)
            for j in 0..<k where o.tp[j] + o.fp[j] + o.fn[j] > 0 {
                sums[j] += 2 * Double(o.tp[j]) / Double(2 * o.tp[j] + o.fp[j] + o.fn[j]); n[j] += 1
            }
        }
        return (0..<k).map { n[$0] > 0 ? sums[$0] / Double(n[$0]) : .nan }
    }

    /// The same for a U-Net in memory (a training run's test report): windows of the patch size,
    /// overlap 0.5, Gaussian blending, `samples` Monte Carlo samples (1 for a deterministic network).
    public static func meanDice(_ model: UNet, _ cases: [DatasetCase], plan: PreprocessingPlan, patchSize: [Int],
                                samples: Int, seed: UInt64, overlap: Double = 0.5) throws -> [Double] {
        let predictor = ModelPredictor(unet: model, samples: samples, seed: seed)
        return try meanDice(cases, plan: plan, window: SlidingWindowOptions(window: patchSize, overlap: overlap),
                            draws: predictor.draws, predictor: predictor.callAsFunction)
    }
}
