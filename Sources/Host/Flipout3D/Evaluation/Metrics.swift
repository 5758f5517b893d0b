// Metrics for binary segmentation: Dice, NLL, Brier, ECE, AUROC, and Monte Carlo uncertainty maps (entropy, mutual information).
//
// Conventions, stated once: probabilities are of the foreground class; labels are 0 or 1 (any
// value >= 0.5 counts as foreground); every mean is over all voxels given; logs are natural (nats).
import Foundation

public enum Metrics {
    /// Probabilities are clamped to [eps, 1 - eps] before logs.
    public static let probabilityEpsilon: Double = 1e-7

    /// Dice of the thresholded prediction (p >= threshold) against the labels:
    /// 2|P ∩ L| / (|P| + |L|); both empty gives 1.
    public static func dice(probabilities p: Tensor, labels y: Tensor, threshold: Float = 0.5) -> Double {
        check(p, y, "Metrics.dice")
        var inter = 0, np = 0, nl = 0
        for i in 0..<p.count {
            let a = p.data[i] >= threshold, b = y.data[i] >= 0.5
            if a { np += 1 }
            if b { nl += 1 }
            if a && b { inter += 1 }
        }
        return np + nl == 0 ? 1 : 2 * Double(inter) / Double(np + nl)
    }

    /// Mean per-voxel binary cross-entropy −[y ln p + (1−y) ln(1−p)], p clamped to [1e-7, 1 − 1e-7].
    public static func nll(probabilities p: Tensor, labels y: Tensor) -> Double {
        check(p, y, "Metrics.nll")
        var s = 0.0
        for i in 0..<p.count {
            let q = min(max(Double(p.data[i]), probabilityEpsilon), 1 - probabilityEpsilon)
            s -= y.data[i] >= 0.5 ? Foundation.log(q) : Foundation.log(1 - q)
        }
        return p.count == 0 ? 0 : s / Double(p.count)
    }

    /// Mean squared error (p − y)² of the foreground probability.
    public static func brier(probabilities p: Tensor, labels y: Tensor) -> Double {
        check(p, y, "Metrics.brier")
        var s = 0.0
        for i in 0..<p.count {
            let d = Double(p.data[i]) - (y.data[i] >= 0.5 ? 1 : 0)
            s += d * d
        }
        return p.count == 0 ? 0 : s / Double(p.count)
    }

    /// Expected calibration error over the predicted class: confidence c = max(p, 1 − p), correct
    /// when (p >= 0.5) equals the label; `bins` equal-width bins over [0, 1] (bin = min(⌊c·bins⌋,
    /// bins − 1)); ECE = Σ_b (n_b / N) · |accuracy_b − mean confidence_b|.
    public static func ece(probabilities p: Tensor, labels y: Tensor, bins: Int = 15) -> Double {
        check(p, y, "Metrics.ece")
        precondition(bins > 0, "Metrics.ece: bins must be positive")
        var n = [Int](repeating: 0, count: bins)
        var conf = [Double](repeating: 0, count: bins)
        var correct = [Double](repeating: 0, count: bins)
        for i in 0..<p.count {
            let q = Double(p.data[i])
            let predicted = q >= 0.5
            let c = predicted ? q : 1 - q
            let b = min(max(Int(c * Double(bins)), 0), bins - 1)
            n[b] += 1
            conf[b] += c
            if predicted == (y.data[i] >= 0.5) { correct[b] += 1 }
        }
        guard p.count > 0 else { return 0 }
        var e = 0.0
        for b in 0..<bins where n[b] > 0 {
            e += abs(correct[b] - conf[b]) / Double(p.count) // (n_b/N)·|acc_b − conf_b| = |Σcorrect − Σconf| / N
        }
        return e
    }

    /// Area under the ROC curve of `scores` for telling positives from negatives: the Mann–Whitney
    /// statistic P(score of a positive > score of a negative) + ½ P(tie). NaN when either class is empty.
    public static func auroc(scores: [Float], positives: [Bool]) -> Double {
        precondition(scores.count == positives.count, "Metrics.auroc: \(scores.count) scores, \(positives.count) labels")
        let order = scores.indices.sorted { scores[$0] < scores[$1] }
        var rankSumPositive = 0.0
        var nPos = 0
        var i = 0
        while i < order.count {
            var j = i
            while j + 1 < order.count && scores[order[j + 1]] == scores[order[i]] { j += 1 }
            let midRank = Double(i + j) / 2 + 1 // ranks are 1-based; ties share the mean rank
            for k in i...j where positives[order[k]] { rankSumPositive += midRank; nPos += 1 }
            i = j + 1
        }
        let nNeg = scores.count - nPos
        guard nPos > 0 && nNeg > 0 else { return .nan }
        let u = rankSumPositive - Double(nPos) * Double(nPos + 1) / 2
        return u / (Double(nPos) * Double(nNeg))
    }

    /// Binary entropy H(p) = −p ln p − (1−p) ln(1−p) in nats, with 0 ln 0 = 0.
    @inline(__always)
    public static func binaryEntropy(_ p: Double) -> Double {
        var h = 0.0
        if p > 0 { h -= p * Foundation.log(p) }
        if p < 1 { h -= (1 - p) * Foundation.log(1 - p) }
        return h
    }

    static func check(_ p: Tensor, _ y: Tensor, _ what: String) {
        precondition(p.count == y.count, "\(what): probabilities \(p.shape) and labels \(y.shape) differ in size")
    }
}

/// Per-voxel predictive uncertainty from T Monte Carlo foreground-probability maps, all of the
/// samples' shape (e.g. (N, 1, D, H, W)):
/// - mean p̄ = (1/T) Σ_t p_t
/// - predictive entropy H[p̄] (total uncertainty)
/// - expected entropy E_t H[p_t] (aleatoric part)
/// - mutual information H[p̄] − E_t H[p_t] ≥ 0 (epistemic part), in nats.
public struct UncertaintyMaps {
    public let mean: Tensor
    public let predictiveEntropy: Tensor
    public let expectedEntropy: Tensor
    public let mutualInformation: Tensor
    public let samples: Int

    /// Computes the maps from all samples at once.
    public init(samples: [Tensor]) {
        precondition(!samples.isEmpty, "UncertaintyMaps: no samples")
        var acc = UncertaintyAccumulator(shape: samples[0].shape)
        for s in samples { acc.add(s) }
        self = acc.maps()
    }

    init(mean: Tensor, predictiveEntropy: Tensor, expectedEntropy: Tensor, mutualInformation: Tensor, samples: Int) {
        self.mean = mean; self.predictiveEntropy = predictiveEntropy
        self.expectedEntropy = expectedEntropy; self.mutualInformation = mutualInformation
        self.samples = samples
    }
}

/// Streams Monte Carlo samples into running sums (Double) so T maps never sit in memory at once.
public struct UncertaintyAccumulator {
    public let shape: [Int]
    var sumP: [Double]
    var sumH: [Double]
    public private(set) var samples = 0

    public init(shape: [Int]) {
        self.shape = shape
        let n = shape.reduce(1, *)
        sumP = [Double](repeating: 0, count: n)
        sumH = [Double](repeating: 0, count: n)
    }

    /// Adds one probability map of `shape`.
    public mutating func add(_ p: Tensor) {
        p.checkShape(shape, "UncertaintyAccumulator.add")
        for i in 0..<p.count {
            let q = min(max(Double(p.data[i]), 0), 1)
            sumP[i] += q
            sumH[i] += Metrics.binaryEntropy(q)
        }
        samples += 1
    }

    /// The maps from the samples added so far (at least one).
    public func maps() -> UncertaintyMaps {
        precondition(samples > 0, "UncertaintyAccumulator.maps: no samples added")
        let mean = Tensor(shape: shape), ph = Tensor(shape: shape), eh = Tensor(shape: shape), mi = Tensor(shape: shape)
        let t = Double(samples)
        for i in 0..<mean.count {
            let m = sumP[i] / t
            let h = Metrics.binaryEntropy(m)
            let e = sumH[i] / t
            mean.data[i] = Float(m)
            ph.data[i] = Float(h)
            eh.data[i] = Float(e)
            // Jensen: H[p̄] >= E H[p_t]; clamp rounding noise at 0.
            mi.data[i] = Float(max(h - e, 0))
        }
        return UncertaintyMaps(mean: mean, predictiveEntropy: ph, expectedEntropy: eh, mutualInformation: mi, samples: samples)
    }
}
