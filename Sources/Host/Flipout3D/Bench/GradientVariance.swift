// Variance of the stochastic NLL gradient of a trained U-Net per layer and posterior parameter: flipout, reparam, per-example, batch sizes.
//
// Kingma et al. 2015 and Wen et al. 2018 (Flipout, fig. 1): with one weight sample shared by the
// batch (reparam) the weight noise is common to all examples, so the gradient's variance stays
// about flat in the batch size N; per-example samples (and Flipout's pseudo-independent ones)
// decorrelate it, so their variance falls about like 1/N. This measures it at one trained point of
// a U-Net checkpoint: the batch is FIXED (N training patches of N different cases, drawn as the
// trainer draws them, or N copies of the first), only the weight noise (and Flipout's signs) is
// redrawn, `draws` times, and each parameter element's sample variance is averaged over the
// layer's weights. The gradient is the cross-entropy's (the likelihood term of the ELBO, mean
// over the batch's voxels); Dice couples the examples of a batch and the KL has no data noise.
import Foundation

public struct GradientVarianceRow: Codable, Sendable {
    public var layer: String
    /// The posterior slot, e.g. "loc" or "scale" (the gradient is w.r.t. the stored, unconstrained value).
    public var parameter: String
    public var estimator: String
    public var batch: Int
    /// Mean over the layer's weights of Var(dNLL/dθ) over the noise draws.
    public var variance: Double
    public var draws: Int
}

public enum GradientVariance {
    /// Which fixed batch each N uses.
    public enum BatchKind: String, CaseIterable, Sendable {
        /// N patches of N different training cases (cycling when N exceeds the cases).
        case distinct
        /// N copies of the first patch: the ideal variance ratio per-example / reparam is then exactly 1/N.
        case copies
    }

    /// The fixed batch of N patches (x (N, C, d, h, w), labels (N, 1, d, h, w)), drawn like a training step's.
    public static func batch(_ sampler: PatchSampler, n: Int, kind: BatchKind) -> (x: Tensor, y: Tensor) {
        let cases = kind == .distinct ? (0..<n).map { $0 % sampler.cases.count } : Array(repeating: 0, count: n)
        var draws = sampler.draws(step: 1, caseIndices: cases)
        if kind == .copies { draws = Array(repeating: draws[0], count: n) }
        return sampler.batch(draws)
    }

    /// Rows for every Bayesian layer, posterior slot, estimator and batch size, from `trained`'s parameters.
    /// `progress` receives one line per (estimator, batch).
    public static func measure(trained: UNet, sampler: PatchSampler, seed: UInt64, registry: PluginRegistry,
                               estimators: [Estimator] = [.flipout, .reparam, .perExample], batches: [Int] = [1, 4, 8, 16],
                               draws: Int = 32, kind: BatchKind = .distinct, progress: (String) -> Void = { _ in }) throws -> [GradientVarianceRow] {
        precondition(draws >= 2 && batches.allSatisfy { $0 >= 1 }, "GradientVariance: needs draws >= 2 and batches >= 1")
        guard !trained.flipoutLayers.isEmpty else {
            throw LayerError.invalidConfiguration("gradient variance needs a Bayesian checkpoint; this one has deterministic convolutions.")
        }
        var rows: [GradientVarianceRow] = []
        for e in estimators {
            var config = trained.config
            config.estimator = e.rawValue
            let net = try UNet(config, shape: trained.shape, registry: registry, seed: seed)
            for (to, from) in zip(net.trainable, trained.trainable) {
                precondition(to.name == from.name && to.value.count == from.value.count, "GradientVariance: parameter layout differs")
                to.value.data.update(from: from.value.data, count: from.value.count)
            }
            net.parametersChanged()
            for n in batches {
                let (x, y) = batch(sampler, n: n, kind: kind)
                let layers = net.flipoutLayers
                var stats = layers.map { l in l.weights.gradients.map { WelfordVector(count: $0.count) } }
                for r in 0..<draws {
                    // Negative steps below -1_000_000 never coincide with training (positive) or prediction (-1...-T) draws.
                    _ = try TrainingStep.gradients(net, x: x, ctx: StepContext(seed: seed, step: -1_000_000 - r), klScale: 0) { logits in
                        let (ce, grad) = crossEntropy(logits, labels: y)
                        return (ce, grad)
                    }
                    for (li, l) in layers.enumerated() {
                        for (k, g) in l.weights.gradients.enumerated() { stats[li][k].add(g) }
                    }
                }
                for (li, l) in layers.enumerated() {
                    for (k, slot) in l.weights.posterior.slots.enumerated() {
                        rows.append(GradientVarianceRow(layer: l.name, parameter: slot.name, estimator: e.rawValue, batch: n,
                                                        variance: stats[li][k].meanVariance, draws: draws))
                    }
                }
                progress("gradient variance: \(e.rawValue) N=\(n) done (\(draws) draws)")
            }
        }
        return rows
    }

    /// Mean softmax cross-entropy over the voxels of logits (N, K, D, H, W) and labels (N, 1, D, H, W),
    /// and its gradient (p − onehot) / M.
    static func crossEntropy(_ logits: Tensor, labels: Tensor) -> (Double, Tensor) {
        let p = Softmax.probabilities(logits)
        let (n, k) = (p.shape[0], p.shape[1]), v = p.shape[2...].reduce(1, *)
        let m = Float(n * v)
        var ce = 0.0
        for b in 0..<n {
            let q = p.data + b * k * v, y = labels.data + b * v
            for i in 0..<v {
                let c = Int(y[i])
                ce -= log(max(Double(q[c * v + i]), 1e-30))
                for j in 0..<k { q[j * v + i] = (q[j * v + i] - (j == c ? 1 : 0)) / m }
            }
        }
        return (ce / Double(n * v), p)
    }

    /// Var(estimator) / Var(reparam) at the same layer, parameter and batch; nil without a reparam row.
    public static func ratio(_ rows: [GradientVarianceRow], _ row: GradientVarianceRow) -> Double? {
        rows.first { $0.estimator == Estimator.reparam.rawValue && $0.layer == row.layer && $0.parameter == row.parameter && $0.batch == row.batch }
            .map { row.variance / $0.variance }
    }
}

/// Running per-element mean and sum of squared deviations (Welford), in Double.
struct WelfordVector {
    private var n = 0
    private var mean: [Double]
    private var m2: [Double]
    init(count: Int) { mean = [Double](repeating: 0, count: count); m2 = mean }
    mutating func add(_ t: Tensor) {
        n += 1
        let inv = 1 / Double(n)
        for i in 0..<mean.count {
            let v = Double(t.data[i]), d = v - mean[i]
            mean[i] += d * inv
            m2[i] += d * (v - mean[i])
        }
    }
    /// Mean over elements of the unbiased sample variance.
    var meanVariance: Double { n < 2 ? .nan : m2.reduce(0, +) / Double(n - 1) / Double(max(mean.count, 1)) }
}
