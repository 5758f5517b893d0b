// Monte Carlo evaluation on a split: Dice, NLL, Brier, ECE, and per-volume mutual information.

public struct SplitMetrics: Codable, Sendable {
    public var dice: Double
    public var nll: Double
    public var brier: Double
    public var ece: Double
    /// ECE over the region of interest (dilated union of label and prediction, `Metrics.roiECE`).
    public var roiECE: Double? = nil
    /// Mean mutual information (epistemic uncertainty) of each volume, nats.
    public var volumeMutualInformation: [Double]
}

public enum Evaluator {
    /// The step numbers prediction draws use: negative, so they never coincide with training steps.
    public static func predictionContext(seed: UInt64, draw: Int) -> StepContext {
        StepContext(seed: seed, step: -(draw + 1), mode: .sample)
    }

    /// T Monte Carlo probability maps of x (N, 1, D, H, W) accumulated into uncertainty maps.
    /// A deterministic model (or samples == 0) uses one pass with the posterior centers.
    /// `shard`: which rows of a larger batch x holds (data-parallel evaluation; keys Flipout signs).
    public static func predict(_ model: SegmentationNet, _ x: Tensor, samples: Int, seed: UInt64, shard: BatchShard = .whole) throws -> UncertaintyMaps {
        var acc = UncertaintyAccumulator(shape: x.shape)
        let draws = model.config.bayesian && samples > 0 ? samples : 1
        for t in 0..<draws {
            var ctx = predictionContext(seed: seed, draw: t)
            ctx.shard = shard
            if !model.config.bayesian || samples == 0 { ctx.mode = .center }
            let logits = try model.forward(x, ctx).logits
            let p = Tensor(shape: logits.shape)
            for i in 0..<p.count { p.data[i] = ELBO.sigmoid(logits.data[i]) }
            acc.add(p)
        }
        return acc.maps()
    }

    public static func evaluate(_ model: SegmentationNet, _ data: VolumeDataset, _ split: DataSplit, samples: Int, seed: UInt64,
                                batchSize: Int = 4) throws -> SplitMetrics {
        let n = data.count(split)
        let size = data.volumeSize
        let all = Tensor(shape: [n, 1] + size), labels = Tensor(shape: [n, 1] + size)
        var mi: [Double] = []
        let per = size.reduce(1, *)
        for start in stride(from: 0, to: n, by: batchSize) {
            let idx = Array(start..<min(n, start + batchSize))
            let (x, y) = try data.batch(split, indices: idx)
            let maps = try predict(model, x, samples: samples, seed: seed)
            (all.data + start * per).update(from: maps.mean.data, count: maps.mean.count)
            (labels.data + start * per).update(from: y.data, count: y.count)
            for b in 0..<idx.count {
                var s = 0.0
                for j in 0..<per { s += Double(maps.mutualInformation.data[b * per + j]) }
                mi.append(s / Double(per))
            }
        }
        return SplitMetrics(dice: Metrics.dice(probabilities: all, labels: labels), nll: Metrics.nll(probabilities: all, labels: labels),
                            brier: Metrics.brier(probabilities: all, labels: labels), ece: Metrics.ece(probabilities: all, labels: labels),
                            roiECE: Metrics.roiECE(probabilities: all, labels: labels), volumeMutualInformation: mi)
    }

    /// AUROC of per-volume mutual information for telling OOD volumes (positives) from in-distribution ones.
    public static func oodAUROC(inDistribution: SplitMetrics, outOfDistribution: SplitMetrics) -> Double {
        let scores = (inDistribution.volumeMutualInformation + outOfDistribution.volumeMutualInformation).map(Float.init)
        let positives = inDistribution.volumeMutualInformation.map { _ in false } + outOfDistribution.volumeMutualInformation.map { _ in true }
        return Metrics.auroc(scores: scores, positives: positives)
    }
}
