// Does the uncertainty find the errors? Error-detection AUROC, uncertainty–error overlap, Dice retention curve, and the ROI they use.
//
// The region of interest (ROI) is the union of the true and the predicted foreground, dilated by
// `margin` mm: outside it both maps say background, so there is no error there, and a volume's
// sea of certain background would otherwise dominate ECE, AUROC and the retention curve.

public enum UncertaintyMetrics {
    /// Voxels within `margin` (units of `spacing`, along (D, H, W)) of a foreground voxel of either map.
    public static func regionOfInterest(prediction: [Int32], truth: [Int32], shape: [Int], spacing: [Double], margin: Double) -> [Bool] {
        let union = zip(prediction, truth).map { $0 != 0 || $1 != 0 }
        guard union.contains(true) else { return union }
        let d = DistanceTransform.euclidean(features: union, shape: shape, spacing: spacing)
        return d.map { $0 <= margin }
    }

    /// AUROC of `scores` for telling positives from negatives: P(s⁺ > s⁻) + ½ P(s⁺ = s⁻) over all
    /// pairs (the Mann–Whitney U / (n⁺ n⁻)); nil when either class is empty. Sorts once: O(n log n).
    public static func auroc(scores: [Float], positives: [Bool]) -> Double? {
        precondition(scores.count == positives.count, "auroc: \(scores.count) scores, \(positives.count) labels")
        // Keys ordered by score (order-preserving map of the float bits), ties kept together.
        let keys = scores.indices.map { i -> UInt64 in
            precondition(!scores[i].isNaN, "auroc: NaN score at \(i)")
            let b = (scores[i] == 0 ? 0 : scores[i]).bitPattern // -0 ties +0
            let ordered = b & 0x8000_0000 != 0 ? ~b : b | 0x8000_0000
            return UInt64(ordered) << 1 | (positives[i] ? 1 : 0)
        }.sorted()
        var rankSum = 0.0, nPos = 0, i = 0
        while i < keys.count {
            var j = i
            while j + 1 < keys.count && keys[j + 1] >> 1 == keys[i] >> 1 { j += 1 }
            let mid = Double(i + j) / 2 + 1
            for k in i...j where keys[k] & 1 == 1 { rankSum += mid; nPos += 1 }
            i = j + 1
        }
        let nNeg = keys.count - nPos
        guard nPos > 0 && nNeg > 0 else { return nil }
        return (rankSum - Double(nPos) * Double(nPos + 1) / 2) / (Double(nPos) * Double(nNeg))
    }

    /// Uncertainty–error overlap (Jungo et al. 2020): the Dice between {u ≥ τ} and the error mask,
    /// for τ on a grid of `steps` − 1 interior points of [0, maximum]; the best τ and its Dice.
    /// Both sets empty counts as 1.
    public static func uncertaintyErrorOverlap(uncertainty u: [Float], errors: [Bool], maximum: Double, steps: Int = 20)
        -> (overlap: Double, threshold: Double) {
        precondition(u.count == errors.count && steps >= 2, "uncertaintyErrorOverlap: sizes or steps")
        var best = (overlap: -1.0, threshold: 0.0)
        let nErr = errors.reduce(0) { $0 + ($1 ? 1 : 0) }
        for s in 1..<steps {
            let t = maximum * Double(s) / Double(steps)
            var both = 0, nU = 0
            for v in 0..<u.count where Double(u[v]) >= t {
                nU += 1
                if errors[v] { both += 1 }
            }
            let dice = nU + nErr == 0 ? 1 : 2 * Double(both) / Double(nU + nErr)
            if dice > best.overlap { best = (dice, t) }
        }
        return best
    }

    /// The Dice retention curve: mean foreground Dice when the fraction f of the ROI voxels with the
    /// highest uncertainty is referred (counted as correct), at f = 0, 1/(points−1), …, 1; ties in
    /// uncertainty are referred in voxel order. Also its area ∫₀¹ Dice(f) df (trapezoid).
    public static func retentionCurve(prediction: [Int32], truth: [Int32], classes: Int, uncertainty u: [Float], roi: [Bool],
                                      points: Int = 21) -> (curve: [Double], area: Double) {
        precondition(points >= 2, "retentionCurve: need at least 2 points")
        var counts = OverlapCounts(prediction: prediction, truth: truth, classes: classes)
        let order = roi.indices.filter { roi[$0] }.sorted { u[$0] != u[$1] ? u[$0] > u[$1] : $0 < $1 }
        var curve = [counts.meanForegroundDice]
        var referred = 0
        for p in 1..<points {
            let target = Int((Double(order.count) * Double(p) / Double(points - 1)).rounded())
            while referred < target {
                let v = order[referred]
                counts.refer(predicted: Int(prediction[v]), truth: Int(truth[v]))
                referred += 1
            }
            curve.append(counts.meanForegroundDice)
        }
        var area = 0.0
        for p in 1..<points { area += (curve[p] + curve[p - 1]) / 2 }
        return (curve, area / Double(points - 1))
    }
}
