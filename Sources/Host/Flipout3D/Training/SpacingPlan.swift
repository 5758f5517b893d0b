// The default target spacing: the dataset's median, coarsened until a default patch sees a quarter of the median case (nnU-Net's 3d_lowres rule).
import Foundation

/// nnU-Net plans `3d_fullres` at the median spacing and, when that configuration's patch covers
/// less than a quarter of the median case's voxels (`lowres_creation_threshold = 0.25` in
/// `ExperimentPlanner`), a `3d_lowres` one: the spacing grows by 3 % a step (first the fine axes
/// of an anisotropic dataset, until every axis is within a factor 2 of the coarsest, then all
/// together) and the patch is re-planned, until it covers a quarter. nnU-Net trains both and a
/// cascade; on a CPU we train one network, so the default spacing is the low-resolution one when
/// the median-spacing patch would see too little of the case: a brain-extraction network that
/// sees 64 mm of a 180 mm head learns texture, not the head.
///
/// Measured (scripts/real-heads, Colin27 alone, tested on the ITK head; docs/real-heads.md): at
/// the median 1 mm the default patch 60×64×64 covers 3.6 % of the cropped head; this rule plans
/// about 2 mm, where the patch covers a quarter to a third.
public enum SpacingPlan {
    /// nnU-Net's `lowres_creation_threshold`: the fraction of the median case a patch must cover.
    public static let minimumCoverage = 0.25
    /// nnU-Net's `spacing_increase_factor` per step.
    public static let increaseFactor = 1.03

    /// The target spacing ((D, H, W) mm) for cases of median shape `medianShape` (voxels at
    /// `medianSpacing`, cropped to their nonzero region), and the fraction of the case the patch
    /// `patch(shape at spacing, spacing)` covers there. Starts at `medianSpacing`, which it keeps
    /// when the patch already covers `minimumCoverage`.
    public static func spacing(medianSpacing: [Double], medianShape: [Int], patch: ([Int], [Double]) -> [Int]) -> (spacing: [Double], coverage: Double) {
        precondition(medianSpacing.count == 3 && medianShape.count == 3 && medianSpacing.allSatisfy { $0 > 0 } && medianShape.allSatisfy { $0 >= 1 },
                     "SpacingPlan.spacing: (D, H, W) spacing and shape, positive; got \(medianSpacing), \(medianShape)")
        var spacing = medianSpacing
        func coverage() -> Double {
            let shape = (0..<3).map { max(1, Int((Double(medianShape[$0]) * medianSpacing[$0] / spacing[$0]).rounded())) }
            let p = patch(shape, spacing)
            // A patch larger than the case (rounded up to the network's multiple) covers it all.
            return (0..<3).map { min(1, Double(p[$0]) / Double(shape[$0])) }.reduce(1, *)
        }
        var c = coverage()
        // Bounded: 200 steps of 3 % is a factor 370, far coarser than any case needs.
        for _ in 0..<200 where c < minimumCoverage {
            let coarsest = spacing.max()!
            let fine = spacing.map { coarsest / $0 > 2 }
            for a in 0..<3 where !fine.contains(true) || fine[a] { spacing[a] *= increaseFactor }
            c = coverage()
        }
        return ((0..<3).map { (spacing[$0] * 1e4).rounded() / 1e4 }, c)
    }

    /// The default spacing of a dataset: its median spacing and median nonzero-cropped shape
    /// (`DatasetFingerprint`), with the patch `PatchSizePlan` gives for `shape`, `batchSize` and `budgetMiB`.
    public static func spacing(_ f: DatasetFingerprint, shape: UNetConfig, batchSize: Int, budgetMiB: Int) -> (spacing: [Double], coverage: Double) {
        let median = f.medianSpacing
        // Each case's RAS shape at the median spacing, shrunk by the cube root of its nonzero box's fraction.
        let shapes = zip(zip(f.shapes, f.spacings), f.croppedFractions).map { sized, fraction in
            (0..<3).map { a in Double(sized.0[a]) * sized.1[a] / median[a] * pow(max(fraction, 1e-9), 1.0 / 3) }
        }
        let medianShape = (0..<3).map { a in max(1, Int(DatasetFingerprint.median(shapes.map { $0[a] }).rounded())) }
        return spacing(medianSpacing: median, medianShape: medianShape) { caseShape, sp in
            PatchSizePlan.patchSize(medianShape: caseShape, spacing: sp, shape: shape, batchSize: batchSize, budgetMiB: budgetMiB)
        }
    }

    /// The default spacing for `train --data` with its default network (`UNetConfig()`), batch 2
    /// and memory budget, as `datasets check` reports it.
    public static func defaultSpacing(_ f: DatasetFingerprint) -> (spacing: [Double], coverage: Double) {
        var shape = UNetConfig()
        shape.inputChannels = f.channelNames.count; shape.classCount = f.classCount
        return spacing(f, shape: shape, batchSize: 2, budgetMiB: PatchSizePlan.defaultBudgetMiB)
    }

    /// The line training prints when the planned spacing differs from the median.
    public static func describe(_ planned: (spacing: [Double], coverage: Double), median: [Double]) -> String {
        func mm(_ v: [Double]) -> String { v.map { String(format: "%.3g", $0) }.joined(separator: "x") }
        return "spacing \(mm(planned.spacing)) mm planned (the median \(mm(median)) mm would give patches covering less than \(Int(minimumCoverage * 100)) % of the median case; "
            + String(format: "now %.0f %%", 100 * planned.coverage) + ", nnU-Net's 3d_lowres rule; --spacing sets it)"
    }
}
