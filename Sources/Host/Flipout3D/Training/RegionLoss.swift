// Region-based loss (nnU-Net's DC_and_BCE_loss for dataset.json regions): one sigmoid per region, binary cross-entropy plus soft Dice, forward and backward side by side.
import Foundation

/// What `RegionLoss.backward` needs, and what the step logs.
public struct RegionLossSaved {
    /// (N, R, D, H, W) sigmoid probabilities, one channel per region (0 at ignored voxels).
    public let probabilities: Tensor
    /// (N, R, D, H, W) region targets, 1 where the voxel's label belongs to the region.
    let targets: Tensor
    /// Voxels that enter the loss (the ignored ones excluded), per example-voxel, not per region
    /// (every rank's batch together when reduced).
    let counted: Double
    let ignoredMask: [Bool]
    /// Per region: I_r = Σ p·t and S_r = Σ p + Σ t over the batch's counted voxels (Double sums).
    let intersection: [Double]
    let total: [Double]
    public let binaryCrossEntropy: Double
    public let diceLoss: Double
    public let softDice: [Double]
    public var value: Double { binaryCrossEntropy + diceLoss }
}

/// loss = BCE + (1 − mean over regions of D_r), with, over the M counted voxels and R regions,
///
///     BCE = −(1/(M·R)) Σ_v Σ_r [t_vr log p_vr + (1 − t_vr) log(1 − p_vr)]     p = σ(z)
///     D_r = (2 Σ_v p_vr t_vr + s) / (Σ_v p_vr + Σ_v t_vr + s)                   s = 1e-5
///
/// t_vr = 1 when the voxel's label value is one of `regions[r]` (BraTS: whole tumour {1, 2, 3},
/// tumour core {2, 3}, enhancing tumour {3}). Regions overlap, so each has its own sigmoid and
/// every region counts in the Dice (nnU-Net's do_bg=True for regions); sums run over the whole
/// batch (batch Dice). Voxels labelled `ignoreLabel` add nothing and get gradient 0.
///
/// Data-parallel ranks: `reduce` sums the sufficient statistics (I_r, S_r, the BCE sum and M) over
/// the ranks before the loss is formed, so every rank computes the GLOBAL batch's loss (as DiceCELoss).
public enum RegionLoss {
    public static let smooth = 1e-5

    /// logits (N, R, D, H, W), labels (N, 1, D, H, W) label values; regions[r] the label values of region r.
    public static func forward(logits: Tensor, labels: Tensor, regions: [[Int]], ignoreLabel: Int? = nil) -> RegionLossSaved {
        forward(logits: logits, labels: labels, regions: regions, ignoreLabel: ignoreLabel, reduce: { $0 })
    }

    /// As `forward(logits:labels:regions:ignoreLabel:)`, with the sufficient statistics passed through `reduce` (a sum over ranks) first.
    public static func forward(logits: Tensor, labels: Tensor, regions: [[Int]], ignoreLabel: Int? = nil,
                               reduce: ([Double]) throws -> [Double]) rethrows -> RegionLossSaved {
        try StepProfile.measure(.loss) { try lossForward(logits: logits, labels: labels, regions: regions, ignoreLabel: ignoreLabel, reduce: reduce) }
    }

    static func lossForward(logits: Tensor, labels: Tensor, regions: [[Int]], ignoreLabel: Int?,
                            reduce: ([Double]) throws -> [Double]) rethrows -> RegionLossSaved {
        precondition(logits.rank == 5 && logits.shape[1] == regions.count && !regions.isEmpty,
                     "RegionLoss: logits \(logits.shape) for \(regions.count) regions")
        labels.checkShape([logits.shape[0], 1] + logits.shape[2...], "RegionLoss labels")
        let (n, r) = (logits.shape[0], logits.shape[1]), v = logits.shape[2...].reduce(1, *)
        let p = Tensor(uninitializedShape: logits.shape), t = Tensor(uninitializedShape: logits.shape)
        var inter = [Double](repeating: 0, count: r), total = inter
        var bce = 0.0, counted = 0
        var ignoredMask = [Bool](repeating: false, count: n * v)
        let members = regions.map(Set.init)
        for b in 0..<n {
            let z = logits.data + b * r * v, q = p.data + b * r * v, g = t.data + b * r * v, y = labels.data + b * v
            for i in 0..<v {
                let label = Int(y[i])
                if let ignoreLabel, label == ignoreLabel {
                    ignoredMask[b * v + i] = true
                    for c in 0..<r { q[c * v + i] = 0; g[c * v + i] = 0 }
                    continue
                }
                counted += 1
                for c in 0..<r {
                    let zz = Double(z[c * v + i]), target: Double = members[c].contains(label) ? 1 : 0
                    let prob = 1 / (1 + exp(-zz))
                    q[c * v + i] = Float(prob); g[c * v + i] = Float(target)
                    // −[t log σ(z) + (1 − t) log(1 − σ(z))] = softplus(z) − t·z, computed stably.
                    bce += max(zz, 0) + log1p(exp(-abs(zz))) - target * zz
                    inter[c] += prob * target; total[c] += prob + target
                }
            }
        }
        let local = inter + total + [bce, Double(counted)]
        let sums = try reduce(local)
        precondition(sums.count == local.count, "RegionLoss: the reduction returned \(sums.count) values for \(local.count)")
        inter = Array(sums[0..<r]); total = Array(sums[r..<(2 * r)]); bce = sums[2 * r]
        let voxels = sums[2 * r + 1]
        let dice = (0..<r).map { (2 * inter[$0] + smooth) / (total[$0] + smooth) }
        return RegionLossSaved(probabilities: p, targets: t, counted: voxels, ignoredMask: ignoredMask, intersection: inter, total: total,
                               binaryCrossEntropy: bce / (max(voxels, 1) * Double(r)),
                               diceLoss: 1 - dice.reduce(0, +) / Double(r), softDice: dice)
    }

    /// dL/dlogits (N, R, D, H, W), times `scale`:
    /// (p − t)/(M·R) − (1/R) · (2 t (S + s) − (2 I + s)) / (S + s)² · p (1 − p).
    public static func backward(_ saved: RegionLossSaved, scale: Float = 1) -> Tensor {
        StepProfile.measure(.loss) { lossBackward(saved, scale: scale) }
    }

    static func lossBackward(_ saved: RegionLossSaved, scale: Float) -> Tensor {
        let p = saved.probabilities, t = saved.targets
        let (n, r) = (p.shape[0], p.shape[1]), v = p.shape[2...].reduce(1, *)
        let dz = Tensor(uninitializedShape: p.shape)
        let bceScale = Double(scale) / (max(saved.counted, 1) * Double(r))
        let denominators = saved.total.map { $0 + smooth }
        for b in 0..<n {
            for c in 0..<r {
                let base = (b * r + c) * v, d = denominators[c], numerator = 2 * saved.intersection[c] + smooth
                for i in 0..<v {
                    if saved.ignoredMask[b * v + i] { dz.data[base + i] = 0; continue }
                    let pp = Double(p.data[base + i]), tt = Double(t.data[base + i])
                    let dDice = (2 * tt * d - numerator) / (d * d)
                    dz.data[base + i] = Float(bceScale * (pp - tt) - Double(scale) / Double(r) * dDice * pp * (1 - pp))
                }
            }
        }
        return dz
    }
}
