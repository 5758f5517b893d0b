// Validation over ranks: sums that Dice, NLL, Brier and ECE are computed from, reduced with one all-reduce.
import Foundation

/// Sufficient statistics of binary segmentation metrics over any set of voxels: sums that add
/// over volumes and over ranks. Metrics computed from them equal `Metrics.dice/nll/brier/ece` on
/// all the voxels at once (same conventions: foreground p >= 0.5, labels >= 0.5, p clamped to
/// [1e-7, 1 - 1e-7], 15 equal-width confidence bins), up to the order of summation. Ranks reduce
/// these, never their own Dice: a mean of per-rank Dice is not the Dice of the split.
public struct SegmentationStatistics: Equatable, Sendable {
    public static let bins = 15
    public var truePositives = 0.0, falsePositives = 0.0, falseNegatives = 0.0
    public var voxels = 0.0
    public var nllSum = 0.0, brierSum = 0.0
    /// Per ECE bin: voxels, summed confidence, correct voxels.
    public var binCount = [Double](repeating: 0, count: bins)
    public var binConfidence = [Double](repeating: 0, count: bins)
    public var binCorrect = [Double](repeating: 0, count: bins)

    public init() {}

    /// Adds voxels: foreground probabilities and labels of the same size.
    public mutating func add(probabilities p: Tensor, labels y: Tensor) {
        precondition(p.count == y.count, "SegmentationStatistics.add: probabilities \(p.shape), labels \(y.shape)")
        let eps = Metrics.probabilityEpsilon
        for i in 0..<p.count {
            let q = Double(p.data[i]), fg = y.data[i] >= 0.5, predicted = p.data[i] >= 0.5
            if predicted && fg { truePositives += 1 } else if predicted { falsePositives += 1 } else if fg { falseNegatives += 1 }
            let qc = min(max(q, eps), 1 - eps)
            nllSum -= fg ? Foundation.log(qc) : Foundation.log(1 - qc)
            let d = q - (fg ? 1 : 0)
            brierSum += d * d
            let c = predicted ? q : 1 - q
            let b = min(max(Int(c * Double(Self.bins)), 0), Self.bins - 1)
            binCount[b] += 1; binConfidence[b] += c
            if predicted == fg { binCorrect[b] += 1 }
        }
        voxels += Double(p.count)
    }

    var packed: [Double] { [truePositives, falsePositives, falseNegatives, voxels, nllSum, brierSum] + binCount + binConfidence + binCorrect }

    init(packed v: [Double]) {
        let b = Self.bins
        precondition(v.count == 6 + 3 * b, "SegmentationStatistics: \(v.count) packed values")
        (truePositives, falsePositives, falseNegatives, voxels, nllSum, brierSum) = (v[0], v[1], v[2], v[3], v[4], v[5])
        binCount = Array(v[6..<(6 + b)]); binConfidence = Array(v[(6 + b)..<(6 + 2 * b)]); binCorrect = Array(v[(6 + 2 * b)...])
    }

    /// The sums over every rank (one all-reduce of 51 Doubles).
    public func reduced(_ communicator: Communicator) throws -> SegmentationStatistics {
        communicator.worldSize == 1 ? self : SegmentationStatistics(packed: try communicator.allReduceSum(packed))
    }

    /// 2 TP / (2 TP + FP + FN); 1 when prediction and label are both empty.
    public var dice: Double {
        let d = 2 * truePositives + falsePositives + falseNegatives
        return d == 0 ? 1 : 2 * truePositives / d
    }
    public var nll: Double { voxels == 0 ? 0 : nllSum / voxels }
    public var brier: Double { voxels == 0 ? 0 : brierSum / voxels }
    public var ece: Double {
        guard voxels > 0 else { return 0 }
        var e = 0.0
        for b in 0..<Self.bins where binCount[b] > 0 { e += abs(binCorrect[b] - binConfidence[b]) / voxels }
        return e
    }
}

public enum ShardedEvaluation {
    /// Dice/NLL/Brier/ECE of a split with the volumes spread over the ranks: global evaluation
    /// batches of `batchSize` volumes in index order, rank r taking rows r, r + R, ... of each
    /// (Flipout signs keyed by the global row, as in training), then one reduction of the sums.
    /// Every rank gets the same result; with one rank it equals `Evaluator.evaluate`'s figures.
    public static func statistics(_ model: SegmentationNet, _ data: VolumeDataset, _ split: DataSplit, samples: Int, seed: UInt64,
                                  batchSize: Int, communicator: Communicator) throws -> SegmentationStatistics {
        let n = data.count(split), r = communicator.rank, world = communicator.worldSize
        var stats = SegmentationStatistics()
        for start in stride(from: 0, to: n, by: batchSize) {
            let shard = BatchShard.interleaved(globalCount: min(n, start + batchSize) - start, rank: r, worldSize: world)
            let idx = shard.localElements(Array(start..<min(n, start + batchSize)))
            guard !idx.isEmpty else { continue }
            let (x, y) = try data.batch(split, indices: idx)
            let maps = try Evaluator.predict(model, x, samples: samples, seed: seed, shard: shard)
            stats.add(probabilities: maps.mean, labels: y)
        }
        return try stats.reduced(communicator)
    }
}
