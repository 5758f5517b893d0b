// The 3D U-Net: C input channels to K class logits; strided Flipout down-convolutions, nearest upsampling + convolution, concatenated skips, optional instance norm.
import Foundation

/// What `UNet.backward` needs from its forward pass, as a value (contract C1). Backward takes
/// each block's values as it reaches the block, so they are freed as early as possible (at
/// nnU-Net's scale one full-resolution activation is 512 MiB): a saved value serves one backward.
public struct UNetSaved {
    /// Per block (forward order): its convolution, normalisation and ReLU values; then the head's.
    private let storage: Storage
    /// Per decoder level, from the deepest up: the upsampling and the skip concatenation.
    let concats: [ChannelConcatSaved]
    /// The plan forward ran under.
    public let memoryPlan: MemoryPlan

    init(blocks: [BlockSaved], head: [ConvSaved], headInput: Tensor?, concats: [ChannelConcatSaved], memoryPlan: MemoryPlan) {
        storage = Storage(blocks: blocks, head: (head, headInput))
        self.concats = concats; self.memoryPlan = memoryPlan
    }

    var blockCount: Int { storage.blocks.count }

    /// Block i's values, handed over once.
    func takeBlock(_ i: Int) -> BlockSaved {
        guard let b = storage.blocks[i] else { preconditionFailure("UNet.backward: block \(i)'s saved values were used by an earlier backward") }
        storage.blocks[i] = nil
        return b
    }

    /// Block i's values without handing them over (a later block recomputes block i's output from them).
    func peekBlock(_ i: Int) -> BlockSaved {
        guard let b = storage.blocks[i] else { preconditionFailure("UNet.backward: block \(i)'s saved values were used by an earlier backward") }
        return b
    }

    /// The head's convolution values and, when it kept no copy (`MemoryPlan`), its input; handed over once.
    func takeHead() -> (convs: [ConvSaved], input: Tensor?) {
        guard let h = storage.head else { preconditionFailure("UNet.backward: the head's saved values were used by an earlier backward") }
        storage.head = nil
        return h
    }

    private final class Storage {
        var blocks: [BlockSaved?]
        var head: ([ConvSaved], Tensor?)?
        init(blocks: [BlockSaved], head: ([ConvSaved], Tensor?)) { self.blocks = blocks; self.head = head }
    }
    /// With instance norm, `norm` holds the fused norm · ReLU (no separate mask); without, `relu`.
    /// A recomputed block (`MemoryPlan`) holds neither, convolution values without their input
    /// copy, and `input`: what to recompute the convolution's input from.
    struct BlockSaved {
        /// One convolution value for the batch, or one per example when the block runs example by
        /// example (`MemoryPlan.splitsExamples`); none when its convolution ran on an unmade input.
        let convs: [ConvSaved]
        let norm: InstanceNormSaved?
        let relu: ReLUSaved?
        let input: BlockInput?
        var unmade: Unmade? = nil
    }

    /// A decoder block run example by example whose convolution read its upsampled or
    /// concatenated input without making it (`UnmadeInputConvolutions`): the kernels each
    /// example ran with and what the input is made from (kept whether or not the block recomputes).
    struct Unmade {
        let kernels: [ConvKernels]
        let source: BlockInput
    }

    /// What a block's input is made from (for a recomputed block, each a tensor kept anyway, or
    /// smaller than the input).
    enum BlockInput {
        /// The input itself (the previous block's output, or a skip).
        case tensor(Tensor)
        /// The up block's input: this tensor, which its layer upsamples by 2 inside the convolution
        /// (`Conv3DGeometry.upsample`). Run one example at a time, the convolution reads it unmade.
        case upsampled(Tensor)
        /// The skip (kept, or recomputed: `MemoryPlan.recomputesSkip`) and the upsampled branch
        /// (kept, or recomputed: `MemoryPlan.recomputedBranches`), concatenated along channels.
        /// A kept branch is held here alone (its block keeps what it recomputes from, or its
        /// norm's x̂): a block run example by example writes dL/d(branch) into its storage in backward.
        indirect case concatenated(BlockInput, BlockInput)
        /// The output of block `block` (itself recomputed, so it kept no copy of its input but the
        /// bias it ran with) on the input made from `of`: enc0b's input from x (16× smaller at
        /// U3), and level 0's skip from enc0b on that.
        indirect case blockOutput(block: Int, of: BlockInput)
    }
}

/// Levels l = 0..<L, channels c_l = min(width·2^l, maxChannels):
///
///     encoder, level l:  conv3³(c_{l−1} → c_l, stride 2 if l > 0) · norm · ReLU,  conv3³(c_l → c_l) · norm · ReLU
///     decoder, level l:  up ×2 (nearest) · conv3³(c_{l+1} → c_l) · norm · ReLU,   (one upsampling convolution)
///                        concat(skip_l, ·) · conv3³(2c_l → c_l) · norm · ReLU          for l = L−2 … 0
///     head:              conv1³(c_0 → K), logits
///
/// as nnU-Net's PlainConvUNet (two convolutions per stage, strided convolutions down, skips by
/// concatenation) with nearest-neighbour upsampling followed by a convolution instead of a
/// transposed convolution (same receptive field, no checkerboard artefacts). The upsampling and its
/// convolution are one layer (`Conv3DGeometry.upsample`): the upsampled tensor is never made, and
/// the engine runs the same function as a transposed stride-2 convolution. Convolution i (forward
/// order, head last) draws its randomness from sub-streams keyed by i. Which ones are Flipout
/// layers is `UNetConfig.bayesianLayers`; the others are deterministic convolutions.
public final class UNet {
    public let config: ModelConfig
    public let shape: UNetConfig
    /// Every convolution in forward order: encoder pairs, then (up, dec) per decoder level, head last.
    public let layers: [ConvLayer]
    /// Per convolution but the head: its instance norm (nil without normalisation).
    public let norms: [InstanceNorm?]
    /// Which activations a forward keeps for backward and which backward recomputes (per input
    /// shape, `MemoryPlan.choose`). Gradients are the same bits under every policy.
    public var memoryPolicy: MemoryPolicy = .default
    /// Blocks whose input and output reach this many bytes run one example at a time
    /// (`MemoryPlan.split`; gradients then differ from a batch run in the last bits, as any
    /// change of oneDNN's blocking does, and are the same under every policy).
    public var exampleSplitBytes = MemoryPlan.defaultSplitBytes

    public init(_ config: ModelConfig, shape: UNetConfig, registry: PluginRegistry, seed: UInt64, log: (String) -> Void = { _ in }) throws {
        do { try shape.validate() } catch let e as ConfigError { throw LayerError.invalidConfiguration(e.description) }
        self.config = config; self.shape = shape
        // name, in, out, kernel, stride, in encoder, upsample
        var specs: [(String, Int, Int, Int, Int, Bool, Int)] = []
        for l in 0..<shape.levels {
            let cin = l == 0 ? shape.inputChannels : shape.channels(level: l - 1), c = shape.channels(level: l)
            specs.append(("enc\(l)a", cin, c, 3, l == 0 ? 1 : 2, true, 1))
            specs.append(("enc\(l)b", c, c, 3, 1, true, 1))
        }
        for l in stride(from: shape.levels - 2, through: 0, by: -1) {
            let c = shape.channels(level: l)
            specs.append(("up\(l)", shape.channels(level: l + 1), c, 3, 1, false, 2))
            specs.append(("dec\(l)", 2 * c, c, 3, 1, false, 1))
        }
        specs.append(("head", shape.channels(level: 0), shape.classCount, 1, 1, false, 1))

        var built: [ConvLayer] = []
        let bayesian = config.bayesian ? shape.bayesianLayers : .none
        var firstBayesian = true
        precondition(specs.count == shape.convolutionCount && specs.map(\.5) == (0..<specs.count).map(shape.isEncoder), "UNet: layer table disagrees with UNetConfig")
        for (i, s) in specs.enumerated() {
            if bayesian.isBayesian(index: i, count: specs.count, inEncoder: s.5) {
                built.append(try Self.flipoutLayer(config, registry: registry, name: s.0, index: i, inChannels: s.1, outChannels: s.2,
                                                   kernel: s.3, stride: s.4, upsample: s.6, custom: firstBayesian || config.customLayers == .all, seed: seed,
                                                   log: firstBayesian ? log : { _ in }))
                firstBayesian = false
            } else {
                built.append(DeterministicConv3D(name: s.0, index: i, inChannels: s.1, outChannels: s.2, kernel: s.3, stride: s.4,
                                                 upsample: s.6, seed: seed))
            }
        }
        built[0].needsInputGradient = false
        layers = built
        norms = specs.dropLast().map { shape.normalization == .instance ? InstanceNorm(name: "\($0.0).norm", channels: $0.2) : nil }
        let flipout = built.filter { $0 is FlipoutConv3D }.map(\.name)
        log("U-Net: \(shape.levels) levels, width \(shape.width), \(shape.inputChannels) channels -> \(shape.classCount) classes, "
            + "\(shape.normalization == .instance ? "instance norm" : "no norm"), Flipout on \(flipout.count)/\(built.count) convolutions (\(bayesian))")
    }

    static func flipoutLayer(_ config: ModelConfig, registry: PluginRegistry, name: String, index: Int, inChannels: Int, outChannels: Int,
                             kernel: Int, stride: Int, upsample: Int = 1, custom: Bool, seed: UInt64, log: (String) -> Void) throws -> FlipoutConv3D {
        guard let estimator = Estimator(rawValue: config.estimator) else {
            throw LayerError.invalidConfiguration("unknown estimator \"\(config.estimator)\"; use one of \(Estimator.allCases.map(\.rawValue).joined(separator: ", ")).")
        }
        let postFamily = try registry.family(custom ? config.posterior : "org.flipout3d.normal")
        let priorFamily = try registry.family(custom ? config.prior : "org.flipout3d.normal")
        let kl: KLMode = config.forceMonteCarloKL ? .monteCarlo(samples: config.klSamples) : .automatic(samples: config.klSamples)
        let layer = try FlipoutConv3D(
            name: name, index: index, inChannels: inChannels, outChannels: outChannels, kernel: kernel, stride: stride, upsample: upsample,
            estimator: estimator,
            posterior: try postFamily.instantiate(custom ? config.posteriorHyperparameters : [:]),
            prior: try priorFamily.instantiate(custom ? config.priorHyperparameters : [:]),
            priorValues: custom ? config.priorParameters : [:], learnPrior: config.learnPrior, klMode: kl, seed: seed)
        log("layers: posterior \(postFamily.id), prior \(priorFamily.id), estimator \(layer.estimator)"
            + (estimator == .auto ? " (auto: posterior is \(postFamily.isSymmetric ? "symmetric" : "not symmetric"))" : "")
            + ", KL \(layer.weights.klIsAnalytic ? "analytic" : "Monte Carlo (K=\(config.klSamples))")")
        return layer
    }

    /// Throws unless x is (N, C, D, H, W) with this network's C and sizes that are multiples of 2^(levels−1).
    public func checkInput(_ s: [Int]) throws {
        guard s.count == 5, s[1] == shape.inputChannels else {
            throw LayerError.invalidConfiguration("the U-Net takes (N, \(shape.inputChannels), D, H, W) inputs; got shape \(s).")
        }
        try Self.checkPatch(Array(s[2...]), shape: shape)
    }

    /// Throws unless `patch` is three sizes (d, h, w), each a positive multiple of 2^(levels−1) of at
    /// most `ConfigLimits.patchEdge` voxels.
    public static func checkPatch(_ patch: [Int], shape: UNetConfig) throws {
        let m = shape.sizeMultiple
        guard patch.count == 3, patch.allSatisfy({ $0 >= m && $0 % m == 0 && $0 <= ConfigLimits.patchEdge.upperBound }) else {
            throw LayerError.invalidConfiguration("a U-Net with \(shape.levels) levels needs every patch size to be a positive multiple of \(m); got \(patch)\(patch.count == 3 ? "" : " (\(patch.count) sizes, not 3)"). Choose --patch accordingly (e.g. \((patch + [m, m, m]).prefix(3).map { (min(max($0, m), ConfigLimits.patchEdge.upperBound / m * m) + m - 1) / m * m }.map(String.init).joined(separator: ","))), each at most \(ConfigLimits.patchEdge.upperBound).")
        }
    }

    /// x (N, C, D, H, W) -> logits (N, K, D, H, W), and what backward needs.
    public func forward(_ x: Tensor, _ ctx: StepContext) throws -> (logits: Tensor, saved: UNetSaved) {
        try checkInput(x.shape)
        let plan = MemoryPlan.choose(memoryPolicy, shape: shape, input: x.shape, splitBytes: exampleSplitBytes)
        if !plan.split.isEmpty { MallocPolicy.returnFreedBlocksToTheSystem() }
        MemoryTrace.mark("forward input")
        var blocks: [UNetSaved.BlockSaved] = [], cats: [ChannelConcatSaved] = []
        /// One block on the input made from `source`; it keeps `kept` (default: `source`) instead
        /// of activations when the plan recomputes it.
        func block(_ source: UNetSaved.BlockInput, keeping kept: UNetSaved.BlockInput? = nil) throws -> Tensor {
            let i = blocks.count
            let recompute = plan.recomputes(i)
            let c: Tensor, convs: [ConvSaved], unmade: UNetSaved.Unmade?
            if plan.splitsExamples(i), runsUnmade(i, source) {
                let (y, kernels) = try unmadeConvolve(i, source, ctx) { blocks[$0] }
                (c, convs, unmade) = (y, [], UNetSaved.Unmade(kernels: kernels, source: source))
            } else {
                (c, convs) = try Conv3D.$inputSaving.withValue(recompute ? .none : .copy) {
                    try convolve(i, source, ctx, plan.splitsExamples(i) ? .split : .batch, again: nil, { blocks[$0] })
                }
                unmade = nil
            }
            if let norm = norms[i] {
                // Norm and ReLU in one pass; x̂ is kept in the convolution output's storage.
                let (y, ns) = StepProfile.measure(.normalization) { norm.forward(c, relu: true, consuming: true) }
                blocks.append(recompute ? .init(convs: convs, norm: nil, relu: nil, input: kept ?? source, unmade: unmade)
                              : .init(convs: convs, norm: ns, relu: nil, input: nil, unmade: unmade))
                MemoryTrace.mark("forward \(layers[i].name)")
                return y
            }
            let (y, rs) = StepProfile.measure(.activation) { ReLU.forward(c) }
            blocks.append(recompute ? .init(convs: convs, norm: nil, relu: nil, input: kept ?? source, unmade: unmade)
                          : .init(convs: convs, norm: nil, relu: rs, input: nil, unmade: unmade))
            MemoryTrace.mark("forward \(layers[i].name)")
            return y
        }
        var h = x, skips: [UNetSaved.BlockInput] = []
        for l in 0..<shape.levels {
            let input = h
            // enc1a keeps what level 0's skip is recomputed from when the plan recomputes it.
            let a = try block(.tensor(input), keeping: l == 1 && plan.recomputesSkip ? skips[0] : nil)
            // enc0b recomputes its input from x through enc0a (itself recomputed): x is 16× smaller at U3.
            let fromX = l == 0 && plan.recomputes(0) && plan.recomputes(1) && plan.splitsExamples(0) == plan.splitsExamples(1)
            let fromInput = UNetSaved.BlockInput.blockOutput(block: 0, of: .tensor(input))
            h = try block(.tensor(a), keeping: fromX ? fromInput : nil)   // (N, c_l, D/2^l, H/2^l, W/2^l)
            // Level 0's skip, recomputed from x (`MemoryPlan.recomputesSkip`), is not kept past enc1a's forward.
            if l < shape.levels - 1 { skips.append(l == 0 && plan.recomputesSkip ? .blockOutput(block: 1, of: fromInput) : .tensor(h)) }
        }
        for l in stride(from: shape.levels - 2, through: 0, by: -1) {
            // Neither the upsampled branch nor the concatenation is ever made whole: the up block's
            // layer upsamples inside its convolution (it reads h itself), a batch concatenation
            // block makes its input inside `convolve`, and a block run one example at a time reads
            // its input unmade (`UnmadeInputConvolutions`: no full-resolution input or dL/d(input)).
            let b = try block(.upsampled(h))                               // (N, c_l, D/2^l, ...) from (N, c_{l+1}, D/2^(l+1), ...)
            cats.append(ChannelConcatSaved(channels: (sourceShape(skips[l])[1], b.shape[1])))
            // A recomputed branch is remade in backward from what its up block keeps (h).
            let branch = UNetSaved.BlockInput.blockOutput(block: blocks.count - 1, of: .upsampled(h))
            h = try block(.concatenated(skips[l], .tensor(b)),
                          keeping: plan.recomputedBranches.contains(l) ? .concatenated(skips[l], branch) : nil)   // (N, c_l, D/2^l, ...)
        }
        // The head keeps its input itself, not a copy, when it recomputes, and when it runs example by
        // example (a memory-bound head: its backward then writes dL/d(input) into that input).
        let headIndex = layers.count - 1, headRecomputes = plan.recomputes(headIndex) || plan.splitsExamples(headIndex)
        let (logits, hs) = try Conv3D.$inputSaving.withValue(headRecomputes ? .none : .copy) {
            try convolve(headIndex, .tensor(h), ctx, plan.splitsExamples(headIndex) ? .split : .batch, again: nil, nil)
        }   // (N, K, D, H, W)
        MemoryTrace.mark("forward head")
        return (logits, UNetSaved(blocks: blocks, head: hs, headInput: headRecomputes ? h : nil, concats: cats, memoryPlan: plan))
    }

    /// Which examples a convolution runs on: the batch at once, each in turn, or one (shaped (1, ...)).
    enum Examples { case batch, split, one(Int) }

    /// Convolution i on the input made from `source` (`materialize`): for the batch, or one
    /// example at a time (each with its own global row for Flipout's signs, so the draws are
    /// those of the batch), the input made and the engine's layout copies held per example.
    /// Without `again`: the layer's forward, its values returned. With `again` (a recomputed
    /// block; one value per example run): the same forward again, with the kernels and bias it
    /// ran with (the same bits), the values returned with the input copy (`copy`) or without it
    /// (when only the output is wanted).  y (N, Cout, oD, oH, oW), or (1, ...) for `.one`
    private func convolve(_ i: Int, _ source: UNetSaved.BlockInput, _ ctx: StepContext?, _ examples: Examples,
                          again: (values: [ConvSaved], copy: Bool)?, _ blocks: SavedBlocks?) throws -> (Tensor, [ConvSaved]) {
        let inputShape = sourceShape(source)
        let n = inputShape[0]
        func run(_ e: Int?, value: Int, into y: Tensor?) throws -> (Tensor, ConvSaved) {
            let x = try materialize(source, example: e, blocks)
            if let (values, copy) = again {
                let s = values[value]
                let out = y ?? Tensor(uninitializedShape: layers[i].geometry(inputShape: x.shape).yShape)
                // An input made for this call alone (concatenated, recomputed) is kept as
                // it is where backward-weights reads plain x: no copy of it.
                let input = copy ? try s.input.engine.recomputeForward(s.input, x: x, w: s.kernels, y: out, adopting: Self.isMade(source))
                    : try Conv3D.$inputSaving.withValue(.none) { try s.input.engine.forward(x: x, w: s.kernels, bias: s.input.bias, y: out) }
                return (out, s.withInput(input))
            }
            // Blocks run one example at a time are the memory-bound ones: no layout copies there.
            return try Conv3DEngines.$choice.withValue(e == nil ? .planned : .lowMemory) {
                try layers[i].forward(x, e.map { Self.exampleContext(ctx!, $0, of: n) } ?? ctx!)
            }
        }
        switch examples {
        case .batch:
            let (y, s) = try run(nil, value: 0, into: nil)
            return (y, [s])
        case .one(let e):
            let (y, s) = try run(e, value: 0, into: nil)
            return (y, [s])
        case .split:
            Self.releaseIdleMemory()
            let y = Tensor(uninitializedShape: layers[i].geometry(inputShape: inputShape).yShape)   // (N, Cout, oD, oH, oW)
            var values: [ConvSaved] = []
            for e in 0..<n {
                if again != nil {
                    values.append(try run(e, value: e, into: y.example(e)).1)
                } else {
                    let (ye, s) = try run(e, value: e, into: nil)
                    Self.copy(ye, into: y.example(e))
                    values.append(s)
                }
            }
            return (y, values)
        }
    }

    /// The convolutions decoder blocks run on inputs they never make.
    private let unmadeInputs = UnmadeInputConvolutions()

    /// Whether block i's convolution runs on its input unmade when the block runs example by
    /// example: an upsampled or concatenated input, a 3³ stride-1 'same' convolution.
    private func runsUnmade(_ i: Int, _ source: UNetSaved.BlockInput) -> Bool {
        switch source {
        case .upsampled: return layers[i].upsample == 2 && UnmadeInputConvolutions.runs(layers[i])
        case .concatenated: return layers[i].upsample == 1 && UnmadeInputConvolutions.runs(layers[i])
        case .tensor, .blockOutput: return false
        }
    }

    /// Example e's input as `UnmadeInputConvolutions` reads it (a recomputed skip made for it alone).
    private func unmadeInput(_ source: UNetSaved.BlockInput, _ e: Int, _ blocks: @escaping SavedBlocks) throws -> UnmadeInput {
        switch source {
        case .upsampled(let t): return .upsampled(t.example(e))
        case .concatenated(let a, let b): return .concatenated(try materialize(a, example: e, blocks), try materialize(b, example: e, blocks))
        case .tensor, .blockOutput: preconditionFailure("UNet: block input \(source) is made, not unmade")
        }
    }

    /// Block i's convolution on the input `source` describes, one example at a time, never made:
    /// the output for the batch and the kernels each example ran with (its own Flipout signs:
    /// its global row).  y (N, Cout, D, H, W)
    private func unmadeConvolve(_ i: Int, _ source: UNetSaved.BlockInput, _ ctx: StepContext, _ blocks: @escaping SavedBlocks) throws -> (Tensor, [ConvKernels]) {
        Self.releaseIdleMemory()
        let inputShape = sourceShape(source), n = inputShape[0]
        let y = Tensor(uninitializedShape: layers[i].geometry(inputShape: inputShape).yShape)   // (N, Cout, D, H, W)
        var kernels: [ConvKernels] = []
        for e in 0..<n {
            let k = try layers[i].kernels(batch: 1, Self.exampleContext(ctx, e, of: n))
            try unmadeInputs.forward(try unmadeInput(source, e, blocks), k, into: y.example(e))
            kernels.append(k)
        }
        return (y, kernels)
    }

    /// Backward of a block whose convolution ran on an unmade input, one example at a time: its
    /// convolution and norm (or ReLU) again when it recomputes (the same bits), dL/d(the
    /// convolution's output), then the convolution's backward, with dL/d(input) written where
    /// `into(e, the example's input)` says, then `after(e)`; the parameter gradients are added per example.
    private func unmadeBlockBackward(_ dy: Tensor, _ b: UNetSaved.BlockSaved, _ u: UNetSaved.Unmade, index i: Int, _ saved: UNetSaved,
                                     into: (Int, UnmadeInput) -> UnmadeInputConvolutions.InputGradient, after: (Int) throws -> Void) throws {
        let layer = layers[i]
        Self.releaseIdleMemory()
        defer { Self.releaseIdleMemory() }
        // Kept activations: dL/d(convolution output) for the batch at once, as a batch block does.
        let kept = b.input == nil ? preactivationGradient(dy, b.norm, b.relu, index: i) : nil
        for e in u.kernels.indices {
            let input = try unmadeInput(u.source, e, saved.peekBlock)
            let dc = try kept?.example(e) ?? unmadeRestoredGradient(dy.example(e), input, u.kernels[e], index: i)
            let (dw, db) = try StepProfile.measure(.flipoutGradients) { try unmadeInputs.backward(input, dy: dc, u.kernels[e], into: into(e, input)) }
            try layer.addGradients(kernels: dw, bias: db, u.kernels[e])
            try after(e)
            MemoryTrace.mark("backward \(layer.name), example \(e)")
        }
    }

    /// dL/d(block i's convolution output) for one example whose convolution ran on an unmade
    /// input: the convolution and norm (or ReLU) run again, bit for bit; x̂ is freed on return.
    private func unmadeRestoredGradient(_ dy: Tensor, _ input: UnmadeInput, _ k: ConvKernels, index i: Int) throws -> Tensor {
        let shape = UnmadeInputConvolutions.shape(input)
        let y = Tensor(uninitializedShape: [1, layers[i].outChannels] + shape[2...])   // (1, Cout, D, H, W)
        try unmadeInputs.forward(input, k, into: y)
        if let norm = norms[i] {
            let ns = StepProfile.measure(.normalization) { norm.standardize(y, relu: true) }
            return preactivationGradient(dy, ns, nil, index: i)
        }
        return preactivationGradient(dy, nil, StepProfile.measure(.activation) { ReLU.forward(y).saved }, index: i)
    }

    /// Before a block run one example at a time (a memory-bound one): the idle blocks the tensor
    /// pool and the scratch arena hold for other sizes go back to the system, so they do not add
    /// to the block's peak. Measured on U3 (`FLIPOUT_MEMORY_TRACE=1 flipout bench --workloads U3
    /// --repeats 1 --warmup 1`): without this, 600-770 MiB of pool blocks and 390 MiB of arena
    /// blocks sat idle in up0's and dec0's backward, the step's peak. Backward also gives them back
    /// when such a block ends: else the full-resolution blocks' freed transients (~400 MiB) and
    /// then the deeper levels' sat idle in the pool (983 MiB at up2's backward, which became the
    /// step's peak once the decoder's full-resolution blocks stopped making their inputs). The
    /// block's examples still reuse each other's blocks; U1's and U2's steps split nothing and
    /// keep every idle block.
    static func releaseIdleMemory() {
        TensorStorage.trim()
        ScratchArena.shared.trim()
    }

    /// Whether `materialize` makes a new tensor from `source` (nothing else holds or changes it).
    private static func isMade(_ source: UNetSaved.BlockInput) -> Bool {
        switch source {
        case .tensor, .upsampled: return false
        case .concatenated, .blockOutput: return true
        }
    }

    /// The shape of the input made from `source`.  (N, C, D, H, W)
    private func sourceShape(_ source: UNetSaved.BlockInput) -> [Int] {
        switch source {
        case .tensor(let t), .upsampled(let t): return t.shape
        case .concatenated(let a, let b):
            let (s, t) = (sourceShape(a), sourceShape(b))
            return [s[0], s[1] + t[1]] + s[2...]
        case .blockOutput(let j, let t): return layers[j].geometry(inputShape: sourceShape(t)).yShape
        }
    }

    /// Step context of example e of a batch of n: its global row, so per-example draws are the batch's.
    static func exampleContext(_ ctx: StepContext, _ e: Int, of n: Int) -> StepContext {
        var c = ctx
        c.shard = BatchShard(globalCount: ctx.shard.globalCount(local: n), offset: ctx.shard.globalRow(e), stride: 1)
        return c
    }

    /// to = from, over the kernels' threads (same element count).
    static func copy(_ from: Tensor, into to: Tensor) {
        precondition(from.count == to.count, "UNet.copy: \(from.shape) into \(to.shape)")
        copy(from, from: 0, into: to)
    }

    /// to = from's elements from `offset` on (as many as to holds), over the kernels' threads.
    static func copy(_ from: Tensor, from offset: Int, into to: Tensor) {
        precondition(offset >= 0 && offset + to.count <= from.count, "UNet.copy: \(from.shape) from \(offset) into \(to.shape)")
        from.withUnsafeValues { f in to.withUnsafeMutableValues { t in
            let (a, b) = (f.baseAddress! + offset, t.baseAddress!)
            Parallel.ranges(t.count) { begin, end in (b + begin).update(from: a + begin, count: end - begin) }
        } }
    }

    /// Given dL/dlogits (N, K, D, H, W), ADD every layer's gradients (then `kl`, then `finishBackward`).
    public func backward(_ dLogits: consuming Tensor, _ saved: UNetSaved) throws {
        // Every activation-sized gradient is consumed by the step that reads it (`consume`), so
        // it is freed there, not at the end of the loop: at nnU-Net's scale each is 0.5-1 GiB.
        var next = saved.blockCount - 1
        /// After a block run as a batch: in a memory-bound step (one that splits blocks), the
        /// tensor pool's idle blocks go back to the system. Measured on U3 (`FLIPOUT_MEMORY_TRACE=1
        /// flipout bench --workloads U3 --repeats 1 --warmup 1`): else the decoder's levels 1-3 left
        /// 983 MiB idle in the pool at up2's backward, 3731 MiB resident, the step's peak once the
        /// full-resolution blocks stopped making their inputs. U1 and U2 split nothing: their
        /// recycler is unchanged.
        let memoryBound = !saved.memoryPlan.split.isEmpty
        func batchBlockDone(_ i: Int) {
            if memoryBound { TensorStorage.trim() }
            MemoryTrace.mark("backward \(layers[i].name)")
        }
        /// The next block (backward order) and its saved values, handed over once.
        func takeNext() -> (Int, UNetSaved.BlockSaved) {
            defer { next -= 1 }
            return (next, saved.takeBlock(next))
        }
        func block(_ dy: consuming Tensor) throws -> Tensor {
            let (i, b) = takeNext()
            let dx = try blockBackward(dy, b, index: i, saved)
            if b.convs.count == 1 { batchBlockDone(i) } else { MemoryTrace.mark("backward \(layers[i].name)") }
            return dx
        }
        /// The next block's backward with its dL/d(input) added into `sum` (the same bits as adding
        /// `sum` into it).
        func block(_ dy: consuming Tensor, addingInto sum: Tensor) throws {
            let (i, b) = takeNext()
            if b.convs.count == 1 {
                let dx = try blockBackward(dy, b, index: i, saved)
                StepProfile.measure(.upsampleConcat) { Self.add(dx, into: sum) }
                batchBlockDone(i)
            } else {
                try blockBackward(dy, b, index: i, saved) { e, dxe in StepProfile.measure(.upsampleConcat) { Self.add(dxe, into: sum.example(e)) } }
                MemoryTrace.mark("backward \(layers[i].name)")
            }
        }
        /// The next decoder block's saved values when it ran example by example; else runs its
        /// whole-batch backward, handing dL/d(its input) to `whole` (the shared prologue of the two
        /// decoder blocks below).
        func splitDecoderBlock<R>(_ dy: Tensor, whole: (Tensor) -> R) throws -> (index: Int, saved: UNetSaved.BlockSaved, done: R?) {
            let (i, b) = takeNext()
            guard b.convs.count > 1 || b.unmade != nil else {
                let done = whole(try blockBackward(dy, b, index: i, saved))
                batchBlockDone(i)
                return (i, b, done)
            }
            return (i, b, nil)
        }
        /// A decoder block on a concatenation: (dSkip, dUp). Run example by example, each
        /// example's input gradient goes straight into the two halves (no batch-sized dCat), and
        /// the halves into storage that is dead by then: dSkip into dy's (an example's dy is
        /// consumed by its backward; the skip has the block's output channels), dUp into the
        /// upsampled branch's when the block kept it to recompute from (nothing else holds it:
        /// `UNetSaved.BlockInput.concatenated`). At nnU-Net's scale each is 512 MiB.
        func concatBlock(_ dy: consuming Tensor, _ cat: ChannelConcatSaved) throws -> (Tensor, Tensor) {
            let (i, b, done) = try splitDecoderBlock(dy) { Self.split($0, cat) }
            if let done { return done }
            if let u = b.unmade, case .concatenated(let skip, let up) = u.source {
                // dSkip in dy's storage is written after the example's backward has read dy there
                // (through a one-example buffer: the skip's own storage when it was recomputed for
                // this example alone, which the backward-weights has read by then); dUp straight
                // into the branch's when the block recomputes (then nothing else holds the branch).
                let skipShape = sourceShape(skip)
                let dSkip = dy.shape == skipShape ? dy : Tensor(uninitializedShape: skipShape)
                let dUp: Tensor
                if b.input != nil, case .tensor(let t) = up { dUp = t } else { dUp = Tensor(uninitializedShape: sourceShape(up)) }
                // A new buffer is made once the example's recomputed output is freed (it takes that block).
                var buffer: Tensor? = nil   // (1, Ca, D, H, W)
                try unmadeBlockBackward(dy, b, u, index: i, saved) { e, input in
                    if dSkip === dy {
                        if Self.isMade(skip), case .concatenated(let made, _) = input { buffer = made }
                        else { buffer = Tensor(uninitializedShape: [1] + skipShape.dropFirst()) }
                    }
                    return .concatenated(buffer ?? dSkip.example(e), dUp.example(e))
                } after: { e in
                    if let b = buffer { StepProfile.measure(.upsampleConcat) { Self.copy(b, into: dSkip.example(e)) } }
                    buffer = nil
                }
                MemoryTrace.mark("backward \(layers[i].name)")
                return (dSkip, dUp)
            }
            let (ca, cb) = cat.channels, s = b.convs[0].inputShape, n = b.convs.count
            let skipShape = [n, ca] + s[2...], upShape = [n, cb] + s[2...]
            let dSkip = dy.shape == skipShape ? dy : Tensor(uninitializedShape: skipShape)
            let dUp: Tensor
            if case .concatenated(_, .tensor(let up)) = b.input, up.shape == upShape { dUp = up } else { dUp = Tensor(uninitializedShape: upShape) }
            try blockBackward(dy, b, index: i, saved) { e, dx in
                // dx (1, Ca + Cb, D, H, W): the skip's channels, then the upsampled branch's.
                StepProfile.measure(.upsampleConcat) {
                    let skip = dSkip.example(e)
                    Self.copy(dx, from: 0, into: skip); Self.copy(dx, from: skip.count, into: dUp.example(e))
                }
            }
            MemoryTrace.mark("backward \(layers[i].name)")
            return (dSkip, dUp)
        }
        /// The up block (its layer upsamples inside the convolution): dL/d(the tensor before
        /// upsampling), which a batch block's layer gives itself. Run example by example on its
        /// unmade input, each example's gradient goes straight into that tensor's resolution.
        func upsampledBlock(_ dy: consuming Tensor) throws -> Tensor {
            let (i, b, done) = try splitDecoderBlock(dy) { $0 }
            if let done { return done }
            let dx: Tensor
            if let u = b.unmade, case .upsampled(let t) = u.source {
                let below = Tensor(uninitializedShape: t.shape)   // (N, C, D/2, H/2, W/2)
                try unmadeBlockBackward(dy, b, u, index: i, saved) { e, _ in .upsampled(below.example(e)) } after: { _ in }
                dx = below
            } else {
                dx = try blockBackward(dy, b, index: i, saved)
            }
            MemoryTrace.mark("backward \(layers[i].name)")
            return dx
        }
        var g = try headBackward(dLogits, saved.takeHead())
        _ = consume dLogits
        MemoryTrace.mark("backward head")
        var skipGradients = [Tensor?](repeating: nil, count: shape.levels)
        // Decoder levels ran deepest first (j = 0 is level L−2); undo them shallowest first.
        for j in stride(from: saved.concats.count - 1, through: 0, by: -1) {
            let (dSkip, dUp) = try concatBlock(consume g, saved.concats[j])
            skipGradients[shape.levels - 2 - j] = dSkip
            g = try upsampledBlock(consume dUp)
        }
        for l in stride(from: shape.levels - 1, through: 0, by: -1) {
            g = try block(consume g)   // enc(l)b
            guard l > 0, let s = skipGradients[l - 1] else { g = try block(consume g); continue }
            // enc(l)a reads level l−1's skip: its dL/d(input) is added into the skip's gradient
            // (example by example when it runs so: no second tensor of the skip's size).
            skipGradients[l - 1] = nil
            try block(consume g, addingInto: s)
            g = s
        }
        precondition(next == -1, "UNet.backward: \(next + 1) blocks left over")
    }

    /// dCat (N, Ca + Cb, ...) -> (dSkip, dUp); dCat is freed on return.
    private static func split(_ dCat: consuming Tensor, _ s: ChannelConcatSaved) -> (Tensor, Tensor) {
        StepProfile.measure(.upsampleConcat) { ChannelConcat.backward(dCat, s) }
    }

    /// Block i's backward: dL/d(its input) from dL/d(its output) dy, which the fused norm · ReLU
    /// backward overwrites (dy is this block's alone: a layer's fresh dx, a concat half or a sum).
    /// A recomputed block first runs its convolution and norm (or ReLU) again on its input,
    /// bit for bit as in forward; a block split over examples does all of it one example at a
    /// time (the norm's planes are per example, so its values and parameter gradients are the
    /// batch's bits). x̂ is freed before the convolution's backward.
    private func blockBackward(_ dy: Tensor, _ b: UNetSaved.BlockSaved, index i: Int, _ saved: UNetSaved) throws -> Tensor {
        if b.convs.count == 1 {
            let (conv, dc) = try restoredGradient(dy, b, example: nil, index: i, saved)
            return try layers[i].backward(dc, conv)
        }
        let dx = Tensor(uninitializedShape: [b.convs.count] + b.convs[0].inputShape.dropFirst())   // (N, Cin, D, H, W)
        try blockBackward(dy, b, index: i, saved) { e, dxe in Self.copy(dxe, into: dx.example(e)) }
        return dx
    }

    /// `blockBackward` of a block run example by example, handing each example's input gradient
    /// (1, Cin, D, H, W) to `take` (in example order).
    private func blockBackward(_ dy: Tensor, _ b: UNetSaved.BlockSaved, index i: Int, _ saved: UNetSaved,
                               _ take: (Int, Tensor) throws -> Void) throws {
        let layer = layers[i]
        Self.releaseIdleMemory()
        defer { Self.releaseIdleMemory() }
        if b.input == nil {
            let dc = preactivationGradient(dy, b.norm, b.relu, index: i)
            for e in b.convs.indices { try take(e, try layer.backward(dc.example(e), b.convs[e])) }
            return
        }
        for e in b.convs.indices {
            let (conv, dc) = try restoredGradient(dy.example(e), b, example: e, index: i, saved)
            try take(e, try layer.backward(dc, conv))
            MemoryTrace.mark("backward \(layer.name), example \(e)")
        }
    }

    /// The convolution value (ready for backward) and dL/d(its output) of block i (of example e,
    /// or the batch); x̂ (or the ReLU mask) is freed on return, before the convolution's backward.
    private func restoredGradient(_ dy: Tensor, _ b: UNetSaved.BlockSaved, example e: Int?, index i: Int, _ saved: UNetSaved) throws -> (ConvSaved, Tensor) {
        let (conv, norm, relu) = try restored(b, example: e, index: i, saved)
        return (conv, preactivationGradient(dy, norm, relu, index: i))
    }

    /// dL/d(block i's convolution output) from dL/d(its output) dy (overwritten by the norm's backward).
    private func preactivationGradient(_ dy: Tensor, _ norm: InstanceNormSaved?, _ relu: ReLUSaved?, index i: Int) -> Tensor {
        norms[i].map { n in StepProfile.measure(.normalization) { n.backward(dy, norm!, consuming: true) } }
            ?? StepProfile.measure(.activation) { ReLU.backward(dy, relu!) }
    }

    /// dL/dlogits -> dL/d(head input); the head's input is saved again here when it kept no copy.
    private func headBackward(_ dLogits: Tensor, _ head: (convs: [ConvSaved], input: Tensor?)) throws -> Tensor {
        let layer = layers[layers.count - 1]
        func value(_ s: ConvSaved, _ x: Tensor?) throws -> ConvSaved {
            // The head's input serves this backward alone: kept as it is where the kernels read plain x.
            try x.map { s.withInput(try s.input.engine.saving(x: $0, adopting: true)) } ?? s
        }
        if head.convs.count == 1 { return try layer.backward(dLogits, try value(head.convs[0], head.input)) }
        let n = head.convs.count
        Self.releaseIdleMemory()
        defer { Self.releaseIdleMemory() }
        if let h = head.input {
            // The head kept its input itself (it recomputes): the input serves this backward
            // alone, so each example's dL/d(input) is written into the input's own storage once
            // its backward-weights has read it (no batch-sized dx, no per-example one).
            for e in 0..<n {
                let s = head.convs[e], conv = s.input.engine, (he, dy) = (h.example(e), dLogits.example(e))
                guard let bias = s.input.bias else { preconditionFailure("UNet: the head's forward kept no bias to recompute with") }
                let dw = Tensor(uninitializedShape: s.kernels.shape), db = Tensor(uninitializedShape: bias.shape)
                try StepProfile.measure(.flipoutGradients) {
                    try conv.backwardWeights(try conv.saving(x: he, adopting: true), dy: dy, dw: dw, dbias: db)
                    try conv.backwardData(dy: dy, w: s.kernels, dx: he)
                }
                try layer.addGradients(kernels: dw, bias: db, ConvKernels(kernels: s.kernels, bias: bias, draw: s.draw))
            }
            return h
        }
        let dx = Tensor(uninitializedShape: [n] + head.convs[0].inputShape.dropFirst())   // (N, C0, D, H, W)
        for e in 0..<n {
            Self.copy(try layer.backward(dLogits.example(e), try value(head.convs[e], head.input?.example(e))), into: dx.example(e))
        }
        return dx
    }

    /// Block i's saved values (of example e, or of the batch), recomputed from its input when the
    /// plan dropped them: the convolution runs again with the kernels and bias it ran with, and
    /// the norm (or ReLU) again on its output, bit for bit as in forward; the norm keeps only x̂
    /// (in the output's storage).
    private func restored(_ b: UNetSaved.BlockSaved, example e: Int?, index i: Int, _ saved: UNetSaved) throws -> (ConvSaved, InstanceNormSaved?, ReLUSaved?) {
        guard let input = b.input else { return (b.convs[0], b.norm, b.relu) }
        let (y, convs) = try convolve(i, input, nil, e.map { .one($0) } ?? .batch, again: ([b.convs[e ?? 0]], true), saved.peekBlock)
        if let norm = norms[i] {
            return (convs[0], StepProfile.measure(.normalization) { norm.standardize(y, relu: true) }, nil)
        }
        return (convs[0], nil, StepProfile.measure(.activation) { ReLU.forward(y).saved })
    }

    /// Block j's saved values, to recompute an input from: forward's so far, or backward's
    /// (`UNetSaved.peekBlock`).
    typealias SavedBlocks = (Int) -> UNetSaved.BlockSaved

    /// The input made from `source` (of example e only, shaped (1, ...), when e is given), bit for
    /// bit as forward made it.  (N, C, D, H, W)
    private func materialize(_ source: UNetSaved.BlockInput, example e: Int?, _ blocks: SavedBlocks?) throws -> Tensor {
        switch source {
        case .tensor(let t), .upsampled(let t): return e.map { t.example($0) } ?? t
        case .concatenated(let a, let b):
            let (skip, branch) = (try materialize(a, example: e, blocks), try materialize(b, example: e, blocks))
            return StepProfile.measure(.upsampleConcat) { ChannelConcat.forward(skip, branch).y }
        case .blockOutput(let j, let t):
            // Block j's convolution on t with the kernels and bias it ran with, then its norm · ReLU
            // (or ReLU): the calls forward made, so the same bits. No copy of t is kept; the norm
            // writes its output over the convolution's (nothing differentiates through it here).
            guard let b = blocks?(j) else { preconditionFailure("UNet: block \(j)'s output is recomputed from its saved values only") }
            precondition(b.input != nil, "UNet: block \(j) kept its input; a later block cannot recompute from it")
            precondition((b.convs.count == 1) == (e == nil), "UNet: block \(j) and its reader differ in running example by example")
            let (y, _) = try convolve(j, t, nil, e.map { .one($0) } ?? .batch, again: ([b.convs[e ?? 0]], false), blocks)
            if let norm = norms[j] { return StepProfile.measure(.normalization) { norm.forwardInPlace(y, relu: true) } }
            return StepProfile.measure(.activation) { ReLU.forward(y).y }
        }
    }

    /// into += s, elementwise over the kernels' threads (same shapes).
    static func add(_ s: Tensor, into g: Tensor) {
        g.checkShape(s.shape, "UNet skip gradient")
        add(s, into: g, at: 0)
    }

    /// g's elements from `offset` on (as many as s holds) += s, over the kernels' threads.
    static func add(_ s: Tensor, into g: Tensor, at offset: Int) {
        precondition(offset >= 0 && offset + s.count <= g.count, "UNet.add: \(s.shape) into \(g.shape) at \(offset)")
        s.withUnsafeValues { sv in g.withUnsafeMutableValues { gv in
            let (a, b) = (sv.baseAddress!, gv.baseAddress! + offset)
            Parallel.ranges(sv.count) { begin, end in for i in begin..<end { b[i] += a[i] } }
        } }
    }

    /// x (N, C, D, H, W) -> softmax probabilities (N, K, D, H, W); one Monte Carlo draw per call (ctx keys it).
    public func probabilities(_ x: Tensor, _ ctx: StepContext) throws -> Tensor {
        Softmax.probabilities(try forward(x, ctx).logits)
    }

    /// Sum of the Flipout layers' KL(q || p); adds scale * dKL into their gradients.
    public func kl(gradientScale: Float, _ ctx: StepContext) throws -> Double {
        try layers.reduce(0.0) { $0 + (try $1.kl(gradientScale: gradientScale, ctx)) }
    }

    public func finishBackward() { layers.forEach { $0.finishBackward() } }
    public func zeroGradients() { layers.forEach { $0.zeroGradients() }; norms.forEach { $0?.zeroGradients() } }
    public var trainable: [NamedParameter] { layers.flatMap(\.trainable) + norms.flatMap { $0?.trainable ?? [] } }
    public var flipoutLayers: [FlipoutConv3D] { layers.compactMap { $0 as? FlipoutConv3D } }

    /// Refresh constrained values after the optimizer changed parameters.
    public func parametersChanged() { StepProfile.measure(.optimizer) { flipoutLayers.forEach { $0.weights.refresh() } } }
}

/// Softmax over the class axis: logits (N, K, D, H, W) -> probabilities (N, K, D, H, W).
public enum Softmax {
    public static func probabilities(_ z: Tensor) -> Tensor {
        StepProfile.measure(.activation) { computeProbabilities(z) }
    }

    static func computeProbabilities(_ z: Tensor) -> Tensor {
        precondition(z.rank == 5, "Softmax: logits \(z.shape), expected (N, K, D, H, W)")
        let (n, k) = (z.shape[0], z.shape[1]), v = z.shape[2...].reduce(1, *)
        let p = Tensor(uninitializedShape: z.shape)
        for b in 0..<n {
            let src = z.data + b * k * v, dst = p.data + b * k * v
            for i in 0..<v {
                var m = -Float.infinity
                for c in 0..<k { m = max(m, src[c * v + i]) }
                var s: Float = 0
                for c in 0..<k { let e = expf(src[c * v + i] - m); dst[c * v + i] = e; s += e }
                for c in 0..<k { dst[c * v + i] /= s }
            }
        }
        return p
    }
}

extension UNetConfig {
    /// Convolutions of the network: two per level, two per decoder level, and the head.
    public var convolutionCount: Int { 4 * levels - 1 }
    /// Whether convolution `index` (forward order) belongs to the encoder.
    public func isEncoder(_ index: Int) -> Bool { index < 2 * levels }
    /// How many convolutions are Flipout layers (0: a deterministic network, which pins no plugins).
    public func flipoutLayerCount(bayesian: Bool) -> Int {
        guard bayesian else { return 0 }
        return (0..<convolutionCount).filter { bayesianLayers.isBayesian(index: $0, count: convolutionCount, inEncoder: isEncoder($0)) }.count
    }
}
