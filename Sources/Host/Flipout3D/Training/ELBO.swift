// The loss convention, stated once: the negative ELBO of the training set per training voxel.

/// The trainer minimises the negative ELBO of the training set divided by its voxel count:
///
///     -ELBO / V_train = NLL_dataset / V_train + beta * KL / V_train
///
/// estimated from a batch by the batch's mean per-voxel NLL. V_train is the number of training
/// voxels, KL the sum over all Bayesian weights of KL(q || p) (analytic or Monte Carlo, never a
/// mean over weights), so `klScale` = beta / V_train.
///
/// NLL is the softmax cross-entropy over K classes, averaged over the patch voxels of the batch,
/// and V_train is the voxel count of all training cases on the prepared grid (patches are unbiased
/// samples of their voxels; the third centred on foreground reweights classes as nnU-Net does, a
/// deliberate bias we accept). The soft Dice term of `DiceCELoss` is added with weight 1 outside
/// the likelihood, as MONAI and nnU-Net do:
///
///     loss = CE_batch + (1 − mean foreground soft Dice)  +  beta * KL / V_train.
///
/// `kl` is reported raw (nats, whole network) and `scaledKL` = beta * KL / V_train is what the loss adds.
///
/// Data-parallel training over R ranks (`Distributed/DataParallel.swift`): the batch is the GLOBAL
/// batch; each rank holds B / R of its patches. The loss's sufficient statistics (cross-entropy
/// sum, voxel count, per-class Dice sums) are summed over the ranks first, so every rank computes
/// the global batch's loss; each rank's gradient is R times that loss's gradient for its own
/// patches plus beta * KL / V_train's, and the gradients are then summed over ranks and divided by
/// R. The KL term is identical on every rank (same weights, its Monte Carlo noise keyed by step,
/// never by rank), so the average of its R copies is the KL gradient itself: counted once.
public enum ELBO {
    /// The KL factor of the loss: beta / V_train.
    public static func klScale(beta: Double, trainingVoxels: Int) -> Double {
        beta / Double(trainingVoxels)
    }

    /// Mean binary cross-entropy with logits z and labels y in {0, 1}; writes dL/dz into `grad`
    /// (the W3 benchmark network's loss).
    /// (N, 1, D, H, W) each.
    public static func bceWithLogits(_ z: Tensor, _ y: Tensor, grad: Tensor) -> Double {
        precondition(z.shape == y.shape && z.shape == grad.shape, "bceWithLogits: shapes \(z.shape), \(y.shape), \(grad.shape)")
        let n = Double(z.count), inv = Float(1 / n)
        var total = 0.0
        for i in 0..<z.count {
            let v = z.data[i], t = y.data[i]
            // max(z, 0) - z t + log(1 + exp(-|z|))
            total += Double(max(v, 0) - v * t + log1pf(expf(-abs(v))))
            grad.data[i] = (sigmoid(v) - t) * inv
        }
        return total / n
    }

    @inline(__always) public static func sigmoid(_ z: Float) -> Float { z >= 0 ? 1 / (1 + expf(-z)) : expf(z) / (1 + expf(z)) }
}

#if canImport(Glibc)
import Glibc
#endif
