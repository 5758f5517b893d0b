// Multi-class segmentation metrics on label maps and probability maps: Dice per class, NLL, Brier, calibration bins.
//
// Conventions, stated once: label maps hold class indices 0..<K (0 = background) per voxel of a
// (D, H, W) grid; probabilities are (K, D, H, W), class-major; logs are natural; probabilities are
// clamped to [1e-7, 1] before logs (`Metrics.probabilityEpsilon`).
//
// Dice of a class absent from both prediction and label: NaN (undefined), and means over classes
// or cases leave NaN out; a mean of nothing but NaN is NaN. This is nnU-Net's rule
// (`compute_metrics`: Dice = NaN when TP + FP + FN = 0, summaries by `np.nanmean`). Every Dice in
// Flipout3D goes through `ClassMetrics.dice(tp:fp:fn:)` and `ClassMetrics.meanIgnoringAbsent`.
import Foundation

public enum ClassMetrics {
    /// THE Dice rule: 2·TP / (2·TP + FP + FN); NaN when the class is absent from both prediction
    /// and label (TP + FP + FN = 0), since nothing was there to find.
    public static func dice(tp: Int, fp: Int, fn: Int) -> Double {
        precondition(tp >= 0 && fp >= 0 && fn >= 0, "ClassMetrics.dice: negative count (\(tp), \(fp), \(fn))")
        let den = 2 * tp + fp + fn
        return den == 0 ? .nan : 2 * Double(tp) / Double(den)
    }

    /// The mean of the defined values (NaN ones, absent classes or cases, left out); NaN when none is defined.
    public static func meanIgnoringAbsent<S: Sequence>(_ values: S) -> Double where S.Element == Double {
        var sum = 0.0, n = 0
        for v in values where !v.isNaN { sum += v; n += 1 }
        return n == 0 ? .nan : sum / Double(n)
    }

    /// Dice of each class c: 2|P_c ∩ L_c| / (|P_c| + |L_c|), NaN when the class is absent from both.
    public static func dice(prediction: [Int32], truth: [Int32], classes: Int) -> [Double] {
        precondition(prediction.count == truth.count, "ClassMetrics.dice: sizes differ")
        let c = OverlapCounts(prediction: prediction, truth: truth, classes: classes)
        return (0..<classes).map { c.dice($0) }
    }

    /// Mean over voxels of −ln p_y(v), the probability given to the true class.
    public static func nll(probabilities p: Tensor, truth: [Int32]) -> Double {
        let n = truth.count
        checkProbabilities(p, n, "ClassMetrics.nll")
        var s = 0.0
        for v in 0..<n { s -= Foundation.log(max(Double(p.data[Int(truth[v]) * n + v]), Metrics.probabilityEpsilon)) }
        return n == 0 ? 0 : s / Double(n)
    }

    /// Brier's multi-class score: mean over voxels of Σ_k (p_k − [y = k])² (in [0, 2]; for K = 2 it is
    /// twice the binary (p − y)² of the foreground probability).
    public static func brier(probabilities p: Tensor, truth: [Int32]) -> Double {
        let n = truth.count
        checkProbabilities(p, n, "ClassMetrics.brier")
        let k = p.shape[0]
        var s = 0.0
        for v in 0..<n {
            for c in 0..<k {
                let e = Double(p.data[c * n + v]) - (Int(truth[v]) == c ? 1 : 0)
                s += e * e
            }
        }
        return n == 0 ? 0 : s / Double(n)
    }

    static func checkProbabilities(_ p: Tensor, _ n: Int, _ what: String) {
        precondition(p.rank == 4 && p.count == p.shape[0] * n, "\(what): probabilities \(p.shape) for \(n) voxels")
    }
}

/// Per-class true-positive, false-positive and false-negative counts of a label map.
public struct OverlapCounts: Sendable {
    public var tp: [Int], fp: [Int], fn: [Int]

    public init(prediction: [Int32], truth: [Int32], classes: Int) {
        tp = [Int](repeating: 0, count: classes); fp = tp; fn = tp
        for v in 0..<prediction.count {
            let p = Int(prediction[v]), t = Int(truth[v])
            precondition(p >= 0 && p < classes && t >= 0 && t < classes, "OverlapCounts: class \(p) or \(t) outside 0..<\(classes)")
            if p == t { tp[p] += 1 } else { fp[p] += 1; fn[t] += 1 }
        }
    }

    /// `ClassMetrics.dice(tp:fp:fn:)` of class c (NaN when absent from both maps).
    public func dice(_ c: Int) -> Double { ClassMetrics.dice(tp: tp[c], fp: fp[c], fn: fn[c]) }

    /// The mean Dice over the foreground classes 1..<K present in either map; NaN when none is.
    public var meanForegroundDice: Double {
        ClassMetrics.meanIgnoringAbsent((1..<max(tp.count, 1)).map { dice($0) })
    }

    /// Counts after voxel v (predicted p, true t) is referred to an expert, i.e. becomes correct.
    public mutating func refer(predicted p: Int, truth t: Int) {
        guard p != t else { return }
        fp[p] -= 1; fn[t] -= 1; tp[t] += 1
    }
}

/// Equal-width confidence bins over [0, 1] of the top-label confidence max_k p_k, counting how often
/// the top label is right: the reliability diagram, and ECE = Σ_b (n_b / N)·|acc_b − conf_b|.
/// Bins of several cases add up (pooled ECE).
public struct CalibrationBins: Codable, Sendable {
    public var count: [Int]
    public var confidence: [Double]
    public var correct: [Int]

    public init(bins: Int = 15) {
        precondition(bins > 0, "CalibrationBins: bins must be positive")
        count = [Int](repeating: 0, count: bins); confidence = [Double](repeating: 0, count: bins); correct = count
    }

    /// Adds the voxels where `include` is true (all if nil).
    public mutating func add(probabilities p: Tensor, truth: [Int32], include: [Bool]?) {
        let n = truth.count, k = p.shape[0], bins = count.count
        ClassMetrics.checkProbabilities(p, n, "CalibrationBins.add")
        for v in 0..<n where include?[v] ?? true {
            var best = 0, top = p.data[v]
            for c in 1..<k where p.data[c * n + v] > top { top = p.data[c * n + v]; best = c }
            let conf = min(max(Double(top), 0), 1)
            let b = min(Int(conf * Double(bins)), bins - 1)
            count[b] += 1; confidence[b] += conf
            if best == Int(truth[v]) { correct[b] += 1 }
        }
    }

    public mutating func merge(_ o: CalibrationBins) {
        precondition(o.count.count == count.count, "CalibrationBins.merge: bin counts differ")
        for b in count.indices { count[b] += o.count[b]; confidence[b] += o.confidence[b]; correct[b] += o.correct[b] }
    }

    public var total: Int { count.reduce(0, +) }

    /// nil when no voxel was added.
    public var ece: Double? {
        let n = total
        guard n > 0 else { return nil }
        var e = 0.0
        for b in count.indices where count[b] > 0 { e += abs(Double(correct[b]) - confidence[b]) }
        return e / Double(n)
    }
}
