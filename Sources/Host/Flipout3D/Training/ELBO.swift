// The loss convention, stated once: the negative ELBO of the training set per training voxel.

/// The training loss for binary segmentation with per-voxel sigmoid outputs:
///
///     loss = NLL_batch / (B * V)  +  beta * KL / (D * V)
///
/// where NLL_batch is the summed binary cross-entropy of the B volumes in the batch, V voxels per
/// volume, D the number of training volumes, and KL = sum over all Bayesian weights of KL(q || p)
/// (analytic or Monte Carlo, never a mean over weights). This is exactly the negative ELBO of the
/// whole training set, -ELBO = NLL_dataset + beta * KL, estimated from a batch (NLL scaled by D / B),
/// divided by the constant D * V so the loss reads as a per-voxel cross-entropy. `kl` is reported
/// raw (nats, whole network) and `scaledKL` = beta * KL / (D * V) is what the loss adds.
///
/// Data-parallel training over R ranks (`Distributed/DataParallel.swift`): B is the GLOBAL batch,
/// each rank holds B / R of its volumes and computes the gradient of its own mean NLL plus
/// beta * KL / (D * V); the gradients are then summed over ranks and divided by R. The KL term is
/// identical on every rank (same weights, its Monte Carlo noise keyed by step, never by rank), so
/// the average of its R copies is the KL gradient itself: it is counted once, not R times, and
/// the NLL part averages to the global batch's mean NLL. The logged `kl` and `scaledKL` are that
/// single KL, and the logged NLL is the mean over ranks.
public struct ELBOTerms: Sendable {
    public var nll: Double          // mean per-voxel binary cross-entropy of the batch
    public var kl: Double           // sum over weights, nats
    public var scaledKL: Double     // beta * kl / (D * V)
    public var loss: Double { nll + scaledKL }
}

public enum ELBO {
    /// The KL factor of the loss: beta / (D * V).
    public static func klScale(beta: Double, trainingVolumes: Int, voxelsPerVolume: Int) -> Double {
        beta / (Double(trainingVolumes) * Double(voxelsPerVolume))
    }

    /// Mean binary cross-entropy with logits z and labels y in {0, 1}; writes dL/dz into `grad`.
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
