// The real-MRI report: Dice on the whole held-out hemisphere, beside an intensity-threshold baseline.

public struct HemisphereReport: Codable, Sendable {
    public var modelDice: Double
    public var thresholdDice: Double
    /// The z-scored intensity threshold chosen on the training hemisphere.
    public var threshold: Float
    public var meanMutualInformation: Double
}

public enum HemisphereEvaluation {
    /// The threshold maximising Dice of `image >= t` against `labels`, over 256 quantiles.
    public static func bestThreshold(image: Tensor, labels: Tensor) -> Float {
        let sorted = image.array.sorted()
        var best: (Float, Double) = (0, -1)
        for q in 1..<256 {
            let t = sorted[min(sorted.count - 1, q * sorted.count / 256)]
            let d = Metrics.dice(probabilities: image, labels: labels, threshold: t)
            if d > best.1 { best = (t, d) }
        }
        return best.0
    }

    /// Trains nothing: evaluates `model` on the right hemisphere and the threshold baseline fitted on the left.
    public static func run(model: SegmentationNet, colin: Colin27, samples: Int, seed: UInt64) throws -> HemisphereReport {
        let m = model.config.sizeMultiple
        let train = colin.hemisphere(.left, multipleOf: m), test = colin.hemisphere(.right, multipleOf: m)
        let t = bestThreshold(image: train.image, labels: train.label)
        let x = test.image.reshaped([1, 1] + Array(test.image.shape.suffix(3)))
        let maps = try Evaluator.predict(model, x, samples: model.config.bayesian ? samples : 0, seed: seed)
        let labels = test.label.reshaped(x.shape)
        var mi = 0.0
        for v in maps.mutualInformation.buffer { mi += Double(v) }
        return HemisphereReport(modelDice: Metrics.dice(probabilities: maps.mean, labels: labels),
                                thresholdDice: Metrics.dice(probabilities: test.image, labels: test.label, threshold: t),
                                threshold: t, meanMutualInformation: mi / Double(maps.mutualInformation.count))
    }
}
