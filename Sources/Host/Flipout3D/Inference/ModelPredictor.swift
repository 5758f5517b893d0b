// Networks as window predictors: one trained model's Monte Carlo draws, and a deep ensemble pooling several models' draws.

/// Draws of one network: draw t is Monte Carlo sample t (`StepContext.prediction(seed, t)`);
/// a network without Flipout layers has one draw (posterior centers).
public struct ModelPredictor {
    public let draws: Int
    public let seed: UInt64
    public let classes: Int
    public let channels: Int
    /// Window sizes must be multiples of this.
    public let sizeMultiple: Int
    let bayesian: Bool
    let probabilities: (Tensor, StepContext) throws -> Tensor

    /// A checkpoint's network (contract C3: `TrainedModel.probabilities`, K = plan.classCount).
    public init(_ trained: TrainedModel, samples: Int, seed: UInt64) {
        let u = trained.model
        bayesian = !u.flipoutLayers.isEmpty; sizeMultiple = u.shape.sizeMultiple
        classes = trained.plan.classCount; channels = trained.plan.channels.count
        probabilities = trained.probabilities
        draws = bayesian && samples > 0 ? samples : 1
        self.seed = seed
    }

    /// windows (B, C, d, h, w) -> probabilities (B, K, d, h, w)
    public func callAsFunction(_ x: Tensor, _ draw: Int) throws -> Tensor {
        precondition(draw >= 0 && draw < draws, "ModelPredictor: draw \(draw) of \(draws)")
        var ctx = StepContext.prediction(seed: seed, draw: draw)
        if !bayesian { ctx.mode = .center }
        return try probabilities(x, ctx)
    }
}

/// A deep ensemble: the members' draws one after another (member m's draws are m's own Monte
/// Carlo samples), all pooled into the same sums, so MI measures disagreement between and within members.
public struct EnsemblePredictor {
    public let members: [ModelPredictor]
    public var draws: Int { members.reduce(0) { $0 + $1.draws } }

    public init(_ members: [ModelPredictor]) {
        precondition(!members.isEmpty, "EnsemblePredictor: no members")
        self.members = members
    }

    public func callAsFunction(_ x: Tensor, _ draw: Int) throws -> Tensor {
        var d = draw
        for m in members {
            if d < m.draws { return try m(x, d) }
            d -= m.draws
        }
        preconditionFailure("EnsemblePredictor: draw \(draw) of \(draws)")
    }
}
