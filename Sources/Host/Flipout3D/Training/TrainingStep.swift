// The step protocol, written once: zero, forward (returns saved state), loss, backward, KL, finish, all-reduce, optimizer, refresh.
import Foundation

/// What a network offers the step: llm.c's shape, forward returning what backward needs as a value.
/// Nothing outside `TrainingStep` calls these in training order, so no caller can forget a step
/// (a missing `parametersChanged()` would train on stale constrained values).
public protocol TrainableNetwork: AnyObject {
    associatedtype Saved
    /// x (N, C, D, H, W) -> logits (N, K, D, H, W), and what backward needs.
    func forward(_ x: Tensor, _ ctx: StepContext) throws -> (logits: Tensor, saved: Saved)
    /// ADDs every parameter's gradient of the data term given dL/dlogits.
    func backward(_ dLogits: consuming Tensor, _ saved: Saved) throws
    /// Sum of KL(q || p) over the Bayesian layers; ADDs gradientScale * dKL into their gradients.
    func kl(gradientScale: Float, _ ctx: StepContext) throws -> Double
    /// Turns the accumulated gradients of the sampled weights into the posterior parameters' gradients.
    func finishBackward()
    func zeroGradients()
    /// Refreshes constrained values (scales, probabilities) after the parameters changed.
    func parametersChanged()
    var trainable: [NamedParameter] { get }
}

extension UNet: TrainableNetwork {}

/// A data term: logits -> (what to log, dL/dlogits). It may reduce sufficient statistics over the
/// ranks before forming the loss (DiceCELoss's per-class sums).
public typealias DataLoss<Terms> = (_ logits: Tensor) throws -> (terms: Terms, gradient: Tensor)

public enum TrainingStep {
    /// Gradients of one batch: zero, forward, data loss, backward, KL (scaled by `klScale`),
    /// finish. Returns the loss terms and the raw KL. The optimizer is not touched (gradient
    /// measurements call this alone).
    public static func gradients<M: TrainableNetwork, Terms>(_ model: M, x: Tensor, ctx: StepContext, klScale: Double,
                                                            loss: DataLoss<Terms>) throws -> (terms: Terms, kl: Double) {
        model.zeroGradients()
        try WeightPrefetch.draw(model, ctx)  // isolated plugins: every layer's weight draw and KL values in one round trip; no-op in-process
        // The logits live only until the loss has read them, dL/dlogits only until the network's
        // last layer has (2 × 48 MiB at U3, beside the step's peak in the decoder's backward).
        let (terms, dLogits, saved) = try { () throws -> (Terms, Tensor, M.Saved) in
            let (logits, saved) = try model.forward(x, ctx)
            let (terms, dLogits) = try loss(logits)
            return (terms, dLogits, saved)
        }()
        try model.backward(consume dLogits, saved)
        let kl = try model.kl(gradientScale: Float(klScale), ctx)
        try PostedPluginCalls.collect()  // isolated plugins' posted gradient calls land (and fail) here; no-op in-process
        model.finishBackward()
        return (terms, kl)
    }

    /// One optimizer step: `gradients`, then the ranks' average of the gradient block, the
    /// optimizer's update, and the refresh of constrained values.
    public static func run<M: TrainableNetwork, Terms>(_ model: M, optimizer: Adam, parallel: DataParallel, x: Tensor, ctx: StepContext,
                                                      klScale: Double, loss: DataLoss<Terms>) throws -> (terms: Terms, kl: Double) {
        let r = try gradients(model, x: x, ctx: ctx, klScale: klScale, loss: loss)
        try parallel.averageGradients(optimizer.arena)
        try optimizer.update()
        model.parametersChanged()
        return r
    }
}
