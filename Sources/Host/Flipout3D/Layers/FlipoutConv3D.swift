// The Bayesian Conv3D layer: plugin posterior and prior, flipout / reparam / per-example in ONE convolution.

/// What a Bayesian layer's forward pass drew, saved for its backward (and readable by tests).
public struct WeightDraw {
    public let mode: WeightMode
    /// (Cout, Cin, k, k, k): the posterior center.
    public let center: Tensor
    /// (Cout, Cin, k, k, k), or per-example (N, Cout, Cin, k, k, k); nil in center mode.
    public let sample: Tensor?
    /// Flipout's Rademacher signs: (N, Cin) and (N, Cout); nil for the other estimators.
    public let signsIn: Tensor?
    public let signsOut: Tensor?
    /// The noise of the samples (one per example for per-example, else one).
    public let noise: [Noise]
}

/// A 3D convolution whose kernel has a plugin posterior q(W) and prior p(W), and a point-estimate bias.
///
/// Flipout (TFP's semantics: one sample per call, Rademacher signs per (example, channel)) is
///     y_n = conv(x_n, Wc) + conv(x_n * s_n, dW) * r_n,   dW = W_sample - Wc,
/// and because the signs are constant over voxels it equals conv(x_n, W_n) with the per-example
/// kernel W_n = Wc + dW * (r_n s_n^T): one grouped convolution over the batch, not two.
/// Backward folds the per-example kernel gradients G_n back: dL/dWc = sum_n G_n and
/// dL/d dW = sum_n G_n * (r_n s_n^T).
public final class FlipoutConv3D {
    public let name: String
    /// Index of the layer in its model: keys its random sub-streams.
    public let index: Int
    public let inChannels: Int
    public let outChannels: Int
    public let kernel: [Int]
    public let stride: [Int]
    public let padding: Padding
    public let upsample: Int
    public let estimator: Estimator
    public let weights: VariationalWeights
    /// (Cout)
    public let bias: Tensor
    public let biasGradient: Tensor
    /// false for a network's first layer: backward then skips dL/dx (returns zeros).
    public var needsInputGradient = true

    /// This layer's convolution engines, one per geometry.
    private let engines = Conv3DEngines()

    public var kernelShape: [Int] { [outChannels, inChannels] + kernel }
    /// Per-example kernels (N, Cout, Cin, k, k, k); for N = 1 the plain kernel shape (same memory),
    /// since a grouped convolution over a batch of one is an ordinary convolution.
    func perExampleShape(_ n: Int) -> [Int] { n == 1 ? kernelShape : [n] + kernelShape }
    public var weightCount: Int { kernelShape.reduce(1, *) }

    public init(name: String, index: Int, inChannels: Int, outChannels: Int, kernel: Int = 3,
                stride: Int = 1, padding: Padding = .same, upsample: Int = 1, estimator: Estimator = .auto,
                posterior: Distribution, prior: Distribution, priorValues: [String: Float] = [:],
                learnPrior: Bool = false, klMode: KLMode = .automatic(samples: 1), seed: UInt64) throws {
        self.name = name
        self.index = index
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernel = [kernel, kernel, kernel]
        self.stride = [stride, stride, stride]
        self.padding = padding
        self.upsample = upsample
        self.estimator = try estimator.resolve(for: posterior.family, layer: name)
        var initStream = RandomStream(seed: seed, layer: index, step: 0, purpose: .initialization)
        weights = try VariationalWeights(name: name, count: outChannels * inChannels * kernel * kernel * kernel,
                                         posterior: posterior, prior: prior, priorValues: priorValues,
                                         learnPrior: learnPrior, klMode: klMode,
                                         locationInitStd: Float((2.0 / Double(inChannels * kernel * kernel * kernel)).squareRoot()),
                                         initStream: &initStream)
        bias = Tensor(shape: [outChannels])
        biasGradient = Tensor(shape: [outChannels])
    }

    private func stream(_ ctx: StepContext, _ purpose: RandomPurpose) -> RandomStream {
        RandomStream(seed: ctx.seed, layer: index, step: ctx.step, purpose: purpose)
    }

    /// y = the layer applied to x (N, Cin, D, H, W) -> (N, Cout, oD, oH, oW), and what backward needs.
    public func forward(_ x: Tensor, _ ctx: StepContext) throws -> (y: Tensor, saved: ConvSaved) {
        try StepProfile.measure(.flipoutSampling) { try sampledForward(x, ctx) }
    }

    /// A center and sample drawn for a context (seed, step) of an isolated posterior's
    /// parameters (`VariationalWeights.generation`): by `WeightPrefetch` ahead of a training
    /// step's forward pass (all layers in one round trip), or by an earlier forward pass.
    struct PrefetchedDraw {
        let seed: UInt64, step: Int, generation: Int
        let center: Tensor, sample: Tensor, noise: Noise
    }

    /// Recent draws of an isolated posterior, newest last: a draw depends only on the parameters,
    /// the seed and the step, so the forward passes of one context (every window of a Monte
    /// Carlo sample in prediction, every example of a split batch) reuse one draw instead of a
    /// round trip each, with the same bits. Cleared when the parameters change.
    private var draws: [PrefetchedDraw] = []
    /// Draws kept: the contexts one call of a sliding-window prediction cycles through (up to
    /// `ModelPredictor.drawsPerGroup` draws per chunk of windows; Flipout's calls use one), within
    /// `keptBytes` per layer beyond the newest.
    static let keptDraws = ModelPredictor.drawsPerGroup
    static let keptBytes = 32 << 20

    private func cachedDraw(_ ctx: StepContext) -> PrefetchedDraw? {
        guard ctx.mode == .sample else { return nil }
        return draws.last { $0.seed == ctx.seed && $0.step == ctx.step && $0.generation == weights.generation }
    }

    func remember(_ d: PrefetchedDraw) {
        draws.removeAll { $0.generation != weights.generation || ($0.seed == d.seed && $0.step == d.step) }
        draws.append(d)
        if draws.count > Self.keptDraws { draws.removeFirst(draws.count - Self.keptDraws) }
        func bytes(_ d: PrefetchedDraw) -> Int { (d.center.count + d.sample.count + d.noise.normals.count + d.noise.uniforms.count) * MemoryLayout<Float>.size }
        while draws.count > 1 && draws.reduce(0, { $0 + bytes($1) }) > Self.keptBytes { draws.removeFirst() }
    }

    /// Keeps a draw this forward pass made itself, for the context's other forward passes, when
    /// it could have been drawn ahead (an isolated posterior).
    private func keepForContext(_ ctx: StepContext, center: Tensor, sample: Tensor, noise: Noise) {
        guard drawsAhead(ctx) else { return }
        remember(PrefetchedDraw(seed: ctx.seed, step: ctx.step, generation: weights.generation, center: center, sample: sample, noise: noise))
    }

    /// Whether the forward pass of `ctx` draws center and sample in one call that can be posted
    /// (an isolated posterior; the flipout or reparam estimator).
    private func drawsAhead(_ ctx: StepContext) -> Bool {
        ctx.mode == .sample && (estimator == .flipout || estimator == .reparam) && weights.canPostDraw
    }

    /// Posts this layer's center and sample for `ctx` as its forward pass would draw them, to the
    /// posterior's child (`WeightPrefetch` collects them, then `remember`s them); nil if the forward
    /// pass draws otherwise or already has this draw.
    func postPrefetch(_ ctx: StepContext) throws -> PrefetchedDraw? {
        guard drawsAhead(ctx), cachedDraw(ctx) == nil else { return nil }
        var noiseStream = stream(ctx, .kernelNoise)
        let center = Tensor(uninitializedShape: kernelShape), w = Tensor(uninitializedShape: kernelShape)
        let noise = try weights.postDraw(&noiseStream, center: center.data, sample: w.data)
        return PrefetchedDraw(seed: ctx.seed, step: ctx.step, generation: weights.generation, center: center, sample: w, noise: noise)
    }

    private func sampledForward(_ x: Tensor, _ ctx: StepContext) throws -> (y: Tensor, saved: ConvSaved) {
        let g = geometry(inputShape: x.shape)
        try g.validate()
        let k = try drawKernels(batch: g.batch, ctx)
        let y = Tensor(uninitializedShape: g.yShape)   // (N, Cout, oD, oH, oW), overwritten by the convolution
        // Flipout and per-example: one grouped convolution over the batch, the bias once per group.
        let input = try engines.engine(isGrouped(k.draw!) ? g.foldedOverBatch() : g).forward(x: x, w: k.kernels, bias: k.bias, y: y)
        return (y, ConvSaved(layer: ObjectIdentifier(self), inputShape: x.shape, input: input, kernels: k.kernels, draw: k.draw))
    }

    /// Whether a forward that drew `draw` runs per-example kernels (N, Cout, Cin, k^3) as one grouped convolution.
    private func isGrouped(_ draw: WeightDraw) -> Bool { draw.mode == .sample && estimator != .reparam }

    public func kernels(batch: Int, _ ctx: StepContext) throws -> ConvKernels {
        try StepProfile.measure(.flipoutSampling) { try drawKernels(batch: batch, ctx) }
    }

    /// The kernels of a forward on n examples under ctx, its bias ((Cout), or per group (N, Cout)
    /// for a grouped convolution) and its draw.
    private func drawKernels(batch n: Int, _ ctx: StepContext) throws -> ConvKernels {
        let e = weightCount
        // A draw made ahead for this step (the same bits as drawing it here), kept for the step's
        // other calls (one example at a time).
        let pre = cachedDraw(ctx)
        let center = pre?.center ?? Tensor(uninitializedShape: kernelShape)   // written by the posterior's center
        var noiseStream = stream(ctx, .kernelNoise)

        switch (ctx.mode, estimator) {
        case (.center, _):
            try center.withUnsafeMutableValues { try weights.center(into: $0.baseAddress!) }
            return ConvKernels(kernels: center, bias: bias.copy(),
                               draw: WeightDraw(mode: .center, center: center, sample: nil, signsIn: nil, signsOut: nil, noise: []))
        case (.sample, .reparam):
            let w = pre?.sample ?? Tensor(uninitializedShape: kernelShape)
            let noise = try pre?.noise ?? center.withUnsafeMutableValues { c in try w.withUnsafeMutableValues { s in
                try weights.drawCenterAndSample(&noiseStream, center: c.baseAddress!, sample: s.baseAddress!)
            } }
            if pre == nil { keepForContext(ctx, center: center, sample: w, noise: noise) }
            return ConvKernels(kernels: w, bias: bias.copy(),
                               draw: WeightDraw(mode: .sample, center: center, sample: w, signsIn: nil, signsOut: nil, noise: [noise]))
        case (.sample, .flipout):
            // Signs for every row of the step's global batch (ctx.shard), then this rank's rows.
            var signStream = stream(ctx, .flipoutSigns)
            let rows = ctx.shard.globalCount(local: n)
            let gIn = Tensor(uninitializedShape: [rows, inChannels]), gOut = Tensor(uninitializedShape: [rows, outChannels])
            gIn.withUnsafeMutableValues { signStream.fillSigns($0.baseAddress!, count: $0.count) }
            gOut.withUnsafeMutableValues { signStream.fillSigns($0.baseAddress!, count: $0.count) }
            let sIn = ctx.shard.localRows(gIn, local: n), sOut = ctx.shard.localRows(gOut, local: n)
            // Noise, center, sample and the per-example kernels of each sub-range of weights in one pass.
            let w = pre?.sample ?? Tensor(uninitializedShape: kernelShape)
            let kernels = Tensor(uninitializedShape: perExampleShape(n))
            if let pre { flipoutKernels(center: center, sample: w, signsIn: sIn, signsOut: sOut, into: kernels, weights: 0..<e) }
            let noise = try pre?.noise ?? center.withUnsafeMutableValues { c in try w.withUnsafeMutableValues { s in
                try weights.drawCenterAndSample(&noiseStream, center: c.baseAddress!, sample: s.baseAddress!) { offset, count in
                    flipoutKernels(center: center, sample: w, signsIn: sIn, signsOut: sOut, into: kernels, weights: offset..<(offset + count))
                }
            } }
            if pre == nil { keepForContext(ctx, center: center, sample: w, noise: noise) }
            return ConvKernels(kernels: kernels, bias: groupBias(n),
                               draw: WeightDraw(mode: .sample, center: center, sample: w, signsIn: sIn, signsOut: sOut, noise: [noise]))
        case (.sample, .perExample):
            try center.withUnsafeMutableValues { try weights.center(into: $0.baseAddress!) }
            let w = Tensor(shape: perExampleShape(n))
            // One draw per row of the global batch, in order; this rank samples its own rows.
            var noise = [Noise](repeating: Noise(normals: 0, uniforms: 0), count: n)
            for row in 0..<ctx.shard.globalCount(local: n) {
                let z = weights.drawNoise(&noiseStream)
                guard let i = ctx.shard.localRow(row, local: n) else { continue }
                try weights.sample(z, into: w.data + i * e)
                noise[i] = z
            }
            return ConvKernels(kernels: w, bias: groupBias(n),
                               draw: WeightDraw(mode: .sample, center: center, sample: w, signsIn: nil, signsOut: nil, noise: noise))
        case (.sample, .auto):
            preconditionFailure("estimator is resolved at init")
        }
    }

    /// The (output channel, input channel) rows of `taps` weights that meet `weights`, each with
    /// the part of it inside: body(o, i, first, end) for the weight indices first..<end.
    @inline(__always)
    private func rows(meeting weights: Range<Int>, _ body: (_ o: Int, _ i: Int, _ first: Int, _ end: Int) -> Void) {
        let taps = kernel.reduce(1, *), cin = inChannels
        guard !weights.isEmpty else { return }
        for r in (weights.lowerBound / taps)...((weights.upperBound - 1) / taps) {
            body(r / cin, r % cin, max(r * taps, weights.lowerBound), min((r + 1) * taps, weights.upperBound))
        }
    }

    /// W_n = Wc + (Ws - Wc) * r_n[o] * s_n[i] for the weights `weights` (indices into the
    /// (Cout, Cin, k^3) kernel); center, sample (Cout, Cin, k^3); kernels (N, Cout, Cin, k^3).
    /// Elementwise: any split of the weights gives the same bits.
    func flipoutKernels(center: Tensor, sample: Tensor, signsIn: Tensor, signsOut: Tensor, into kernels: Tensor, weights: Range<Int>) {
        let e = weightCount, n = signsIn.shape[0], (cin, cout) = (inChannels, outChannels)
        center.withUnsafeValues { cv in sample.withUnsafeValues { sv in kernels.withUnsafeMutableValues { kv in
            signsIn.withUnsafeValues { siv in signsOut.withUnsafeValues { sov in
                let (c, s, out, si, so) = (cv.baseAddress!, sv.baseAddress!, kv.baseAddress!, siv.baseAddress!, sov.baseAddress!)
                rows(meeting: weights) { o, i, first, end in
                    for b in 0..<n {
                        let sign = so[b * cout + o] * si[b * cin + i], dst = out + b * e
                        for j in first..<end { dst[j] = c[j] + (s[j] - c[j]) * sign }
                    }
                }
            } }
        } } }
    }

    /// Flipout's fold of the per-example kernel gradients G (N, Cout, Cin, k^3) for the weights
    /// `weights`, into dCenter and dDelta (indexed from weights.lowerBound):
    /// dDelta = sum_n G_n * r_n s_n^T and dCenter = sum_n G_n - dDelta (Wc enters W_n as Wc (1 - r s)).
    /// Sums over n in example order; any split of the weights gives the same bits.
    func foldFlipoutGradients(_ perExample: Tensor, signsIn: Tensor, signsOut: Tensor, weights: Range<Int>,
                              center dCenter: UnsafeMutablePointer<Float>, delta dDelta: UnsafeMutablePointer<Float>) {
        let e = weightCount, n = signsIn.shape[0], (cin, cout) = (inChannels, outChannels)
        let (dc, dd) = (dCenter - weights.lowerBound, dDelta - weights.lowerBound)
        perExample.withUnsafeValues { gv in signsIn.withUnsafeValues { siv in signsOut.withUnsafeValues { sov in
            let (G, si, so) = (gv.baseAddress!, siv.baseAddress!, sov.baseAddress!)
            rows(meeting: weights) { o, i, first, end in
                for j in first..<end { dc[j] = 0; dd[j] = 0 }
                for b in 0..<n {
                    let sign = so[b * cout + o] * si[b * cin + i], src = G + b * e
                    for j in first..<end { dc[j] += src[j]; dd[j] += src[j] * sign }
                }
                for j in first..<end { dc[j] -= dd[j] }
            }
        } } }
    }

    /// The bias once per group of the convolution folded over n examples: (N, Cout), or (Cout) for one.
    private func groupBias(_ n: Int) -> Tensor {
        let b = Tensor(uninitializedShape: n == 1 ? [outChannels] : [n, outChannels])
        for i in 0..<n { (b.data + i * outChannels).update(from: bias.data, count: outChannels) }
        return b
    }

    /// Given dy = dL/dy (N, Cout, oD, oH, oW) and forward's saved value, ADD the parameter
    /// gradients and return dL/dx (N, Cin, D, H, W).
    public func backward(_ dy: Tensor, _ saved: ConvSaved) throws -> Tensor {
        try StepProfile.measure(.flipoutGradients) { try foldedBackward(dy, saved) }
    }

    private func foldedBackward(_ dy: Tensor, _ saved: ConvSaved) throws -> Tensor {
        let g = checkSaved(saved, dy: dy)
        guard let draw = saved.draw else { preconditionFailure("\(name).backward: the saved value has no weight draw") }
        let n = g.batch
        // (N, Cin, D, H, W): written by the convolution, or zeros for a first layer.
        let dx = needsInputGradient ? Tensor(uninitializedShape: saved.inputShape) : Tensor(shape: saved.inputShape)
        // dw: the kernels' shape, per example for a grouped convolution; db per group.
        let dw = Tensor(uninitializedShape: saved.kernels.shape)
        let db = Tensor(uninitializedShape: isGrouped(draw) && n > 1 ? [n, outChannels] : [outChannels])
        try saved.input.engine.backward(saved.input, dy: dy, w: saved.kernels, dx: needsInputGradient ? dx : nil, dw: dw, dbias: db)
        try foldGradients(kernels: dw, bias: db, draw)
        return dx
    }

    public func addGradients(kernels dw: Tensor, bias db: Tensor, _ k: ConvKernels) throws {
        guard let draw = k.draw else { preconditionFailure("\(name).addGradients: the kernels have no weight draw") }
        dw.checkShape(k.kernels.shape, "\(name).addGradients dw")
        db.checkShape(k.bias.shape, "\(name).addGradients db")
        try StepProfile.measure(.flipoutGradients) { try foldGradients(kernels: dw, bias: db, draw) }
    }

    /// ADDS the parameter gradients from dL/d(kernels) dw and dL/d(bias) db of a convolution that
    /// ran with `draw`'s kernels: (Cout, Cin, k^3) and (Cout), or per example (N, ...).
    private func foldGradients(kernels dw: Tensor, bias db: Tensor, _ draw: WeightDraw) throws {
        let e = weightCount, rows = db.count / outChannels
        for b in 0..<rows { for o in 0..<outChannels { biasGradient[o] += db[b * outChannels + o] } }
        guard isGrouped(draw) else {
            if draw.mode == .center {
                try weights.centerBackward(dw.data)
            } else {
                try weights.sampleBackward(draw.noise[0], x: draw.sample!.data, g: dw.data)
            }
            return
        }
        if estimator == .perExample {
            for b in 0..<draw.noise.count {
                try weights.sampleBackward(draw.noise[b], x: draw.sample!.data + b * e, g: dw.data + b * e)
            }
            return
        }
        // Flipout: dWc = sum_n G_n, d(dW) = sum_n G_n * r_n s_n^T; Wc = center, dW = sample - center.
        // Folded per sub-range of weights right before that sub-range's posterior VJPs (one pass).
        let (sIn, sOut) = (draw.signsIn!, draw.signsOut!)
        try draw.sample!.withUnsafeValues { x in
            try weights.centerAndSampleBackward(draw.noise[0], x: x.baseAddress!) { offset, count, gCenter, gSample in
                foldFlipoutGradients(dw, signsIn: sIn, signsOut: sOut, weights: offset..<(offset + count), center: gCenter, delta: gSample)
            }
        }
    }

    /// KL(q || p) of the kernel, summed over weights; adds scale * dKL into the gradients.
    public func kl(gradientScale: Float, _ ctx: StepContext) throws -> Double {
        var s = stream(ctx, .klNoise)
        return try StepProfile.measure(.kl) { try weights.kl(gradientScale: gradientScale, stream: &s) }
    }

    /// Move the accumulated constrained-value gradients into the unconstrained parameters' gradients.
    public func finishBackward() { StepProfile.measure(.flipoutGradients) { weights.finishBackward() } }

    public func zeroGradients() {
        weights.zeroGradients()
        biasGradient.zero()
    }
}
