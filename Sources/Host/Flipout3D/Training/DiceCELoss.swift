// Dice-CE: softmax cross-entropy plus soft Dice over K classes (MONAI DiceCELoss, nnU-Net DC_and_CE_loss), forward and backward side by side.
import Foundation

/// What `DiceCELoss.backward` needs, and what the step logs.
public struct DiceCESaved {
    /// (N, K, D, H, W) softmax probabilities (0 at ignored voxels).
    public let probabilities: Tensor
    /// (N, 1, D, H, W) class indices stored as Float (the caller's tensor, not copied).
    let labels: Tensor
    /// The label value left out of the loss (nnU-Net's `ignore` label), if any.
    let ignoreLabel: Int?
    /// Per class k: I_k = Σ p·g and S_k = Σ p + Σ g over the batch and every voxel (Double sums).
    let intersection: [Double]
    let total: [Double]
    /// M, the voxels the cross-entropy averages over, ignored ones excluded (every rank's batch together when reduced).
    let voxels: Double
    /// Mean cross-entropy (nats per voxel) and the soft Dice term 1 − mean_k D_k.
    public let crossEntropy: Double
    public let diceLoss: Double
    /// Soft Dice D_k per class (background included, for logging; only foreground enters the loss).
    public let softDice: [Double]
    public var value: Double { crossEntropy + diceLoss }
}

/// loss = CE + (1 − mean over foreground classes of D_k), with
///
///     CE  = −(1/M) Σ_v log p_{v, y_v}                         M = N·D·H·W voxels of the batch
///     D_k = (2 Σ_v p_vk g_vk + s) / (Σ_v p_vk + Σ_v g_vk + s)   g = one-hot labels, s = 1e-5
///
/// p = softmax of the logits over the class axis. The Dice sums run over the whole batch (nnU-Net's
/// `batch_dice`), so a patch without some class does not produce a 0/0 Dice, and over the
/// foreground classes 1..<K only (nnU-Net's `do_bg=False`; MONAI's `include_background=False`).
/// Binary segmentation is K = 2: the Dice of class 1 and a two-class softmax cross-entropy.
///
/// With `ignoreLabel` (dataset.json's label named "ignore", a value ≥ K), voxels of that value are
/// left out: they add nothing to CE or to the Dice sums, M counts only the others, and their
/// gradient is 0 (nnU-Net's `ignore_label` in DC_and_CE_loss).
///
/// Data-parallel ranks each hold part of the batch. `reduce` sums the sufficient statistics
/// (I_k, Σp, Σg, the cross-entropy sum and M) over the ranks before the loss is formed, so every
/// rank computes the loss of the GLOBAL batch (nnU-Net's batch Dice over all GPUs) and, in
/// backward, its share of that loss's gradient; never a mean of per-rank Dice.
///
/// The cross-entropy is the per-voxel negative log-likelihood of a categorical model, the term the
/// ELBO scales (`ELBO.swift`); the Dice term is an auxiliary objective outside the likelihood.
public enum DiceCELoss {
    public static let smooth = 1e-5
    /// Voxels per unit of work in both passes (threads take whole chunks; sums add up per chunk,
    /// then in chunk order): 16 Ki voxels of a 64³ patch is 16 chunks per example.
    static let chunkVoxels = 1 << 14

    /// logits (N, K, D, H, W), labels (N, 1, D, H, W) with values in 0..<K -> the loss terms and what backward needs.
    public static func forward(logits: Tensor, labels: Tensor, ignoreLabel: Int? = nil) -> DiceCESaved {
        forward(logits: logits, labels: labels, ignoreLabel: ignoreLabel, reduce: { $0 })
    }

    /// As `forward(logits:labels:)`, with the sufficient statistics passed through `reduce` (a sum over ranks) first.
    public static func forward(logits: Tensor, labels: Tensor, ignoreLabel: Int? = nil, reduce: ([Double]) throws -> [Double]) rethrows -> DiceCESaved {
        try StepProfile.measure(.loss) { try lossForward(logits: logits, labels: labels, ignoreLabel: ignoreLabel, reduce: reduce) }
    }

    static func lossForward(logits: Tensor, labels: Tensor, ignoreLabel: Int?, reduce: ([Double]) throws -> [Double]) rethrows -> DiceCESaved {
        precondition(logits.rank == 5 && logits.shape[1] >= 2, "DiceCELoss: logits \(logits.shape), expected (N, K >= 2, D, H, W)")
        labels.checkShape([logits.shape[0], 1] + logits.shape[2...], "DiceCELoss labels")
        let (n, k) = (logits.shape[0], logits.shape[1])
        let v = logits.shape[2...].reduce(1, *)
        let p = Tensor(uninitializedShape: logits.shape)
        let ignored = ignoreLabel.map(Float.init) ?? -1
        // Per chunk of voxels: Σ p_y (hits), Σ p and Σ g per class, the CE sum and the voxel count,
        // summed afterwards in chunk order, so the bits do not depend on the thread count.
        let chunks = (v + chunkVoxels - 1) / chunkVoxels, items = n * chunks, width = 3 * k + 2
        let partials = UnsafeMutableBufferPointer<Double>.allocate(capacity: items * width)
        defer { partials.deallocate() }
        partials.initialize(repeating: 0)
        let (zs, qs, ys, out) = (UnsafePointer(logits.data), p.data, UnsafePointer(labels.data), partials.baseAddress!)
        Parallel.items(items, elementsPerItem: chunkVoxels * k) { begin, end in
            for item in begin..<end {
                let b = item / chunks, lo = item % chunks * chunkVoxels, hi = min(v, lo + chunkVoxels)
                let z = zs + b * k * v, q = qs + b * k * v, y = ys + b * v, part = out + item * width
                for i in lo..<hi {
                    if y[i] == ignored {
                        for c in 0..<k { q[c * v + i] = 0 }
                        continue
                    }
                    part[3 * k + 1] += 1
                    let label = Int(y[i])
                    precondition(label >= 0 && label < k && Float(label) == y[i], "DiceCELoss: label \(y[i]) at voxel \(i) of example \(b) is not a class index in 0..<\(k)")
                    var m = -Float.infinity
                    for c in 0..<k { m = max(m, z[c * v + i]) }
                    var s: Float = 0
                    for c in 0..<k { let e = expf(z[c * v + i] - m); q[c * v + i] = e; s += e }
                    let inv = 1 / s
                    for c in 0..<k { q[c * v + i] *= inv; part[k + c] += Double(q[c * v + i]) }
                    // log p_y = z_y − m − log s, computed from logits (no log of a rounded probability).
                    part[3 * k] -= Double(z[label * v + i] - m) - Double(logf(s))
                    part[label] += Double(q[label * v + i])
                    part[2 * k + label] += 1
                }
            }
        }
        // Chunks add up per example, then examples in order: the same association as ranks that
        // each hold whole examples and sum them through `reduce`.
        var totals = [Double](repeating: 0, count: width)
        for b in 0..<n {
            var example = [Double](repeating: 0, count: width)
            for item in b * chunks..<(b + 1) * chunks {
                for j in 0..<width { example[j] += out[item * width + j] }
            }
            for j in 0..<width { totals[j] += example[j] }
        }
        // (I_k, Σp_k, Σg_k, the CE sum, M), summed over the ranks.
        let sums = try reduce(totals)
        precondition(sums.count == totals.count, "DiceCELoss: the reduction returned \(sums.count) values for \(totals.count)")
        let inter = Array(sums[0..<k]), sumP = Array(sums[k..<(2 * k)]), sumG = Array(sums[(2 * k)..<(3 * k)])
        let ce = sums[3 * k]
        let voxels = sums[3 * k + 1]
        let total = (0..<k).map { sumP[$0] + sumG[$0] }
        let dice = (0..<k).map { (2 * inter[$0] + smooth) / (total[$0] + smooth) }
        let foreground = dice[1...].reduce(0, +) / Double(k - 1)
        return DiceCESaved(probabilities: p, labels: labels, ignoreLabel: ignoreLabel, intersection: inter, total: total, voxels: voxels,
                           crossEntropy: ce / max(voxels, 1), diceLoss: 1 - foreground, softDice: dice)
    }

    /// dL/dlogits (N, K, D, H, W), times `scale`.
    public static func backward(_ saved: DiceCESaved, scale: Float = 1) -> Tensor {
        StepProfile.measure(.loss) { lossBackward(saved, scale: scale) }
    }

    static func lossBackward(_ saved: DiceCESaved, scale: Float) -> Tensor {
        let p = saved.probabilities
        let (n, k) = (p.shape[0], p.shape[1])
        let v = p.shape[2...].reduce(1, *)
        let dz = Tensor(uninitializedShape: p.shape)
        let ceScale = Double(scale) / max(saved.voxels, 1)
        let ignored = saved.ignoreLabel.map(Float.init) ?? -1
        // dL_dice/dp_vk = −(1/|F|) (2 g_vk / (S_k + s) − (2 I_k + s) / (S_k + s)²) for k in F = 1..<K.
        let f = Double(k - 1)
        var dPlain = [Float](repeating: 0, count: k), dHit = [Float](repeating: 0, count: k)
        for c in 1..<k {
            let denominator = saved.total[c] + smooth
            dPlain[c] = Float(Double(scale) / f * (2 * saved.intersection[c] + smooth) / (denominator * denominator))
            dHit[c] = Float(-Double(scale) / f * 2 / denominator)
        }
        let ce = Float(ceScale)
        let chunks = (v + chunkVoxels - 1) / chunkVoxels
        let (qs, ys, gs) = (UnsafePointer(p.data), UnsafePointer(saved.labels.data), dz.data)
        Parallel.items(n * chunks, elementsPerItem: chunkVoxels * k) { begin, end in
            var a = [Float](repeating: 0, count: k)
            for item in begin..<end {
                let b = item / chunks, lo = item % chunks * chunkVoxels, hi = min(v, lo + chunkVoxels)
                let q = qs + b * k * v, y = ys + b * v, g = gs + b * k * v
                for i in lo..<hi {
                    if y[i] == ignored {
                        for c in 0..<k { g[c * v + i] = 0 }
                        continue
                    }
                    let label = Int(y[i])
                    // a = dL_dice/dp; through the softmax: dz_j = p_j (a_j − Σ_c p_c a_c) plus CE's (p_j − g_j)/M.
                    var dot: Float = 0
                    for c in 0..<k {
                        a[c] = dPlain[c] + (c == label ? dHit[c] : 0)
                        dot += q[c * v + i] * a[c]
                    }
                    for c in 0..<k {
                        let pc = q[c * v + i]
                        g[c * v + i] = pc * (a[c] - dot) + ce * (pc - (c == label ? 1 : 0))
                    }
                }
            }
        }
        withExtendedLifetime((p, saved.labels)) {}
        return dz
    }
}
