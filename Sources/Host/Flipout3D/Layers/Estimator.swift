// How a Bayesian layer turns its weight posterior into per-example kernels each forward pass.

/// The gradient estimator of a Bayesian convolution. Every one costs a single (possibly grouped)
/// convolution per pass; they differ in how weight samples are shared across the batch.
public enum Estimator: String, CaseIterable, Sendable, CustomStringConvertible {
    /// One sample per call, decorrelated per example by Rademacher sign flips per
    /// (example, channel) (Wen et al. 2018, TFP's semantics). Needs a symmetric posterior.
    case flipout
    /// One shared sample for the whole batch.
    case reparam
    /// An independent kernel sample per example. Valid for any posterior.
    case perExample = "per-example"
    /// flipout for symmetric posteriors, per-example otherwise.
    case auto

    public var description: String { rawValue }

    /// The concrete estimator for a posterior family; throws when flipout is asked of an
    /// asymmetric posterior, saying why and what to use instead.
    public func resolve(for family: DistributionFamily, layer: String) throws -> Estimator {
        switch self {
        case .auto:
            return family.isSymmetric ? .flipout : .perExample
        case .flipout:
            guard family.isSymmetric else {
                throw LayerError.invalidConfiguration("\(layer): the flipout estimator needs a posterior whose perturbation is symmetric about its center, and \(family.id) does not declare that (its sign-flipped samples would follow a different, symmetrised distribution). Use --estimator per-example (unbiased for any posterior), reparam, or auto.")
            }
            return .flipout
        case .reparam, .perExample:
            return self
        }
    }
}

/// Whether a forward pass samples weights (training, Monte Carlo prediction) or uses the
/// posterior's center (a deterministic "mean network").
public enum WeightMode: Sendable {
    case sample
    case center
}

/// Where a pass's randomness comes from: the run's seed and the step (or prediction draw).
public struct StepContext: Sendable {
    public var seed: UInt64
    public var step: Int
    public var mode: WeightMode
    /// Which rows of the step's global batch this call's examples are (data-parallel ranks hold
    /// every world-size-th row): per-example draws (Flipout signs, per-example noise) are keyed
    /// by the global row, so they do not depend on the number of ranks.
    public var shard: BatchShard = .whole
    public init(seed: UInt64, step: Int, mode: WeightMode = .sample) { self.seed = seed; self.step = step; self.mode = mode }
}
