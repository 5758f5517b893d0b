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
    /// Voxels along an axis that one output voxel depends on (the theoretical receptive field).
    public let receptiveField: Int
    let bayesian: Bool
    let probabilities: (Tensor, StepContext) throws -> Tensor

    /// A checkpoint's network (contract C3: `TrainedModel.probabilities`, K = plan.classCount).
    public init(_ trained: TrainedModel, samples: Int, seed: UInt64) {
        let u = trained.model
        bayesian = !u.flipoutLayers.isEmpty; sizeMultiple = u.shape.sizeMultiple
        receptiveField = Self.receptiveField(u.shape)
        classes = trained.plan.outputCount; channels = trained.plan.channels.count
        probabilities = trained.probabilities
        draws = bayesian && samples > 0 ? samples : 1
        self.seed = seed
    }

    /// A U-Net in memory (e.g. the trainer's, for its test report): K = its class count.
    public init(unet: UNet, samples: Int, seed: UInt64) {
        bayesian = !unet.flipoutLayers.isEmpty; sizeMultiple = unet.shape.sizeMultiple
        receptiveField = Self.receptiveField(unet.shape)
        classes = unet.shape.classCount; channels = unet.shape.inputChannels
        probabilities = { x, ctx in try unet.probabilities(x, ctx) }
        draws = bayesian && samples > 0 ? samples : 1
        self.seed = seed
    }

    /// The U-Net's receptive field along an axis (UNet.swift's layout): r grows by (k − 1)·j for
    /// each k³ convolution applied where one voxel spans j input voxels; a stride-2 convolution
    /// doubles j after it, nearest upsampling halves j and adds nothing.
    /// 3 levels: 35 voxels; 4 levels: 75; 5: 155.
    public static func receptiveField(_ u: UNetConfig) -> Int {
        var r = 1, j = 1
        for l in 0..<u.levels {
            r += 2 * j                  // enc_l a (stride 2 for l > 0: its taps are at the finer spacing)
            if l > 0 { j *= 2 }
            r += 2 * j                  // enc_l b
        }
        for _ in stride(from: u.levels - 2, through: 0, by: -1) {
            j /= 2                      // nearest upsampling
            r += 2 * j + 2 * j          // up_l, dec_l
        }
        return r                        // the head is 1³
    }

    /// windows (B, C, d, h, w) -> probabilities (B, K, d, h, w).
    /// Draw t is one weight sample for every window of the volume: Flipout's signs (and
    /// per-example weight noise) are drawn per batch row, so a Bayesian network's windows run one
    /// at a time, each as row 0 of draw t's stream. Batching them would give row b its own weight
    /// sample, make the result depend on --window-batch, and blending windows of different weight
    /// samples would average epistemic variation away (mean MI falling as the overlap grows).
    public func callAsFunction(_ x: Tensor, _ draw: Int) throws -> Tensor {
        precondition(draw >= 0 && draw < draws, "ModelPredictor: draw \(draw) of \(draws)")
        var ctx = StepContext.prediction(seed: seed, draw: draw)
        if !bayesian { ctx.mode = .center }
        let b = x.shape[0]
        guard bayesian && b > 1 else { return try probabilities(x, ctx) }
        let row = x.count / b
        var out: Tensor?
        for i in 0..<b {
            let xi = Tensor(uninitializedShape: [1] + Array(x.shape.dropFirst())) // (1, C, d, h, w)
            xi.data.update(from: x.data + i * row, count: row)
            let p = try probabilities(xi, ctx) // (1, K, d, h, w)
            if out == nil { out = Tensor(uninitializedShape: [b] + Array(p.shape.dropFirst())) }
            (out!.data + i * p.count).update(from: p.data, count: p.count)
        }
        return out!
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
