// Networks as window predictors: one trained model's Monte Carlo draws (several per network call), and a deep ensemble pooling several models' draws.
//
// Which weight sample draw t is. A Monte Carlo sample must be one weight sample for every window
// of the volume (blending windows of different samples would average epistemic variation away),
// and the maps must not depend on how windows or draws are batched. For the per-example
// estimators (Flipout, and per-example sampling), draw t is global row t mod G of the weight
// group ⌊t / G⌋, G = `drawsPerGroup` = 8: the group's context (`StepContext.prediction(seed, group)`)
// fixes the shared perturbation ΔW and the per-row signs (or, per-example, each row's own kernel),
// and a call holding any contiguous rows of a group (a `BatchShard` of the group's G rows) gives
// each row exactly the kernel it has in every other call. So one call can run up to 8 draws of one
// window as a batch through the grouped (per-example kernel) convolution, or one draw per call
// (`drawsPerCall`), with the same maps either way, and draw t's kernels are the same in every
// window, for any --samples (draw t never depends on T).
// Within a group, draws share |ΔW| and differ by Flipout's sign flips (the estimator's
// pseudo-independent per-example perturbations, as in training); groups are independent.
// For the shared-sample estimator (reparam), every row of a call has the same kernel, so draw t
// is its own context and a call batches several windows of one draw. A network without Flipout
// layers has one draw (posterior centers) and batches windows.
import Foundation

/// A source of Monte Carlo window predictions that can run several draws per call.
public protocol MonteCarloWindowPredictor {
    /// Monte Carlo draws (samples, pooled over ensemble members).
    var draws: Int { get }
    /// Draws one call handles best (its batch across draws); ≥ 1.
    var drawsPerCall: Int { get }
    /// Predicts windows (B, C, d, h, w) for every draw in `draws` (⊆ 0..<self.draws), calling
    /// body(p, rows) after each network call: p (n, K, d, h, w), row j = (draw, window index in B).
    /// Every (draw, window) pair is delivered exactly once, its probabilities independent of the batching.
    func predict(_ windows: Tensor, draws: Range<Int>, _ body: (Tensor, [(draw: Int, window: Int)]) throws -> Void) throws
}

/// Draws of one network (see the file header for which weight sample draw t is).
public struct ModelPredictor: MonteCarloWindowPredictor {
    /// Draws per weight group of the per-example estimators: up to this many draws of a window run as one batch.
    public static let drawsPerGroup = 8
    /// Draws of one window per call for the per-example estimators, by default: 1. Measured with
    /// `flipout predict --samples 8 --no-tta --samples-per-call 1|8` of U1's network (width 8, 3
    /// levels, 32³ windows) on an 80×96×80 two-channel case (54 windows), 2 threads, Zen 4, loaded
    /// machine, alternating: one draw per call 25.7-28.6 s, 8 per call 35.0-37.0 s (identical maps);
    /// on a 64³ case without the plan a tie (14.4 and 13.7 s). The grouped convolution (groups = the
    /// 8 draws, 2-16 channels per group) stays on oneDNN 2.6, slower than the ungrouped kernels
    /// one draw gets (Engine/Conv3DPlan.swift); revisit when grouped layers get native kernels.
    public static let defaultDrawsPerCall = 1

    public let draws: Int
    public let seed: UInt64
    public let classes: Int
    public let channels: Int
    /// Window sizes must be multiples of this.
    public let sizeMultiple: Int
    /// Voxels along an axis that one output voxel depends on (the theoretical receptive field).
    public let receptiveField: Int
    let bayesian: Bool
    /// Whether every row of a call gets its own kernel (Flipout, per-example): draws batch; else windows batch.
    let perRowKernels: Bool
    /// Draws of one window per network call (per-example estimators), 1...drawsPerGroup.
    let rowsPerCall: Int
    let probabilities: (Tensor, StepContext) throws -> Tensor

    /// A checkpoint's network (contract C3: `TrainedModel.probabilities`, K = plan.classCount).
    /// `drawsPerCall`: draws of one window per network call for a Flipout (or per-example)
    /// network, 1...8 (default `defaultDrawsPerCall`); the maps do not depend on it.
    public init(_ trained: TrainedModel, samples: Int, seed: UInt64, drawsPerCall: Int = defaultDrawsPerCall) {
        let u = trained.model
        self.init(u, classes: trained.plan.outputCount, channels: trained.plan.channels.count, samples: samples, seed: seed,
                  drawsPerCall: drawsPerCall, probabilities: trained.probabilities)
    }

    /// A U-Net in memory (e.g. the trainer's, for its test report): K = its class count.
    public init(unet: UNet, samples: Int, seed: UInt64, drawsPerCall: Int = defaultDrawsPerCall) {
        self.init(unet, classes: unet.shape.classCount, channels: unet.shape.inputChannels, samples: samples, seed: seed,
                  drawsPerCall: drawsPerCall, probabilities: { x, ctx in try unet.probabilities(x, ctx) })
    }

    private init(_ u: UNet, classes: Int, channels: Int, samples: Int, seed: UInt64, drawsPerCall: Int,
                 probabilities: @escaping (Tensor, StepContext) throws -> Tensor) {
        precondition((1...Self.drawsPerGroup).contains(drawsPerCall), "ModelPredictor: drawsPerCall \(drawsPerCall)")
        rowsPerCall = drawsPerCall
        let layers = u.flipoutLayers
        bayesian = !layers.isEmpty; sizeMultiple = u.shape.sizeMultiple
        perRowKernels = bayesian && layers.allSatisfy { $0.estimator != .reparam }
        receptiveField = Self.receptiveField(u.shape)
        self.classes = classes; self.channels = channels
        self.probabilities = probabilities
        draws = bayesian && samples > 0 ? samples : 1
        self.seed = seed
    }

    public var drawsPerCall: Int { perRowKernels ? min(draws, rowsPerCall) : 1 }

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

    public func predict(_ x: Tensor, draws r: Range<Int>, _ body: (Tensor, [(draw: Int, window: Int)]) throws -> Void) throws {
        precondition(x.rank == 5 && !r.isEmpty && r.lowerBound >= 0 && r.upperBound <= draws, "ModelPredictor: draws \(r) of \(draws), windows \(x.shape)")
        let b = x.shape[0]
        guard bayesian else {
            var ctx = StepContext.prediction(seed: seed, draw: 0)
            ctx.mode = .center
            return try body(try probabilities(x, ctx), (0..<b).map { (0, $0) })
        }
        guard perRowKernels else {
            // One shared kernel per context: all windows of draw t in one call.
            for t in r { try body(try probabilities(x, StepContext.prediction(seed: seed, draw: t)), (0..<b).map { (t, $0) }) }
            return
        }
        // Rows of weight groups: for each window, each run of draws inside one group is one call.
        let g = Self.drawsPerGroup, row = x.count / b
        var t = r.lowerBound
        while t < r.upperBound {
            let group = t / g, end = min(r.upperBound, (group + 1) * g, t + rowsPerCall), n = end - t
            var ctx = StepContext.prediction(seed: seed, draw: group)
            ctx.shard = BatchShard(globalCount: g, offset: t - group * g, stride: 1)
            for w in 0..<b {
                let xs = Tensor(uninitializedShape: [n] + Array(x.shape.dropFirst())) // (n, C, d, h, w): window w, once per draw
                for i in 0..<n { (xs.data + i * row).update(from: x.data + w * row, count: row) }
                try body(try probabilities(xs, ctx), (t..<end).map { ($0, w) })
            }
            t = end
        }
    }

    /// windows (B, C, d, h, w) -> probabilities (B, K, d, h, w) of draw `draw` (the same weight
    /// sample as in `predict(_:draws:_:)`, whatever the batch).
    public func callAsFunction(_ x: Tensor, _ draw: Int) throws -> Tensor {
        precondition(draw >= 0 && draw < draws, "ModelPredictor: draw \(draw) of \(draws)")
        return try Self.gather(x, classes: classes) { try predict(x, draws: draw..<(draw + 1), $0) }
    }

    /// The rows one draw's calls deliver, in window order: (B, K, d, h, w).
    static func gather(_ x: Tensor, classes: Int, _ run: ((Tensor, [(draw: Int, window: Int)]) throws -> Void) throws -> Void) throws -> Tensor {
        let out = Tensor(uninitializedShape: [x.shape[0], classes] + Array(x.shape.suffix(3)))
        let wk = out.count / x.shape[0]
        try run { p, rows in
            for (j, r) in rows.enumerated() { (out.data + r.window * wk).update(from: p.data + j * wk, count: wk) }
        }
        return out
    }
}

/// A deep ensemble: the members' draws one after another (member m's draws are m's own Monte
/// Carlo samples), all pooled into the same sums, so MI measures disagreement between and within members.
public struct EnsemblePredictor: MonteCarloWindowPredictor {
    public let members: [ModelPredictor]
    public var draws: Int { members.reduce(0) { $0 + $1.draws } }
    public var drawsPerCall: Int { members.map(\.drawsPerCall).max()! }

    public init(_ members: [ModelPredictor]) {
        precondition(!members.isEmpty, "EnsemblePredictor: no members")
        self.members = members
    }

    public func predict(_ x: Tensor, draws r: Range<Int>, _ body: (Tensor, [(draw: Int, window: Int)]) throws -> Void) throws {
        var first = 0
        for m in members {
            let lo = max(r.lowerBound - first, 0), hi = min(r.upperBound - first, m.draws)
            if lo < hi {
                let offset = first
                try m.predict(x, draws: lo..<hi) { p, rows in try body(p, rows.map { ($0.draw + offset, $0.window) }) }
            }
            first += m.draws
        }
    }

    public func callAsFunction(_ x: Tensor, _ draw: Int) throws -> Tensor {
        precondition(draw >= 0 && draw < draws, "EnsemblePredictor: draw \(draw) of \(draws)")
        return try ModelPredictor.gather(x, classes: members[0].classes) { try predict(x, draws: draw..<(draw + 1), $0) }
    }
}

/// A per-draw closure (`WindowPredictor`) as a Monte Carlo predictor: one draw per call.
public struct PerDrawPredictor: MonteCarloWindowPredictor {
    public let draws: Int
    public var drawsPerCall: Int { 1 }
    let run: WindowPredictor

    public init(draws: Int, _ run: @escaping WindowPredictor) { self.draws = draws; self.run = run }

    public func predict(_ x: Tensor, draws r: Range<Int>, _ body: (Tensor, [(draw: Int, window: Int)]) throws -> Void) throws {
        for t in r { try body(try run(x, t), (0..<x.shape[0]).map { (t, $0) }) }
    }
}
