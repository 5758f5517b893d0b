// Activation recomputation: the same gradient bits as keeping activations (U-Net and Conv3D), the memory plan's choices, the scratch arena's reuse.
import Testing
import TestSupport
import Flipout3D

private func makeNet(norm: UNetConfig.Normalization, bayesian: BayesianLayers, policy: MemoryPolicy, splitBytes: Int = MemoryPlan.defaultSplitBytes) throws -> UNet {
    var m = ModelConfig()
    m.bayesian = bayesian != .none
    var u = UNetConfig()
    // Widths 8, 16, 32: layers on the native kernels, mixed plans and oneDNN.
    u.levels = 3; u.width = 8; u.inputChannels = 2; u.classCount = 3; u.normalization = norm; u.bayesianLayers = bayesian
    let net = try UNet(m, shape: u, registry: try SmallRun.registry(), seed: 7)
    net.memoryPolicy = policy
    net.exampleSplitBytes = splitBytes
    return net
}

/// Logits and every parameter gradient (data term, KL, finished) of one step, as bit patterns.
private func stepBits(_ net: UNet, _ x: Tensor, _ ctx: StepContext) throws -> (logits: [UInt32], gradients: [String: [UInt32]], plan: MemoryPlan) {
    net.zeroGradients()
    let (z, saved) = try net.forward(x, ctx)
    try net.backward(Tensor(shape: z.shape, values: testValues(z.count, seed: 21)), saved)
    _ = try net.kl(gradientScale: 1e-3, ctx)
    net.finishBackward()
    var g: [String: [UInt32]] = [:]
    for p in net.trainable { g[p.name] = p.gradient.array.map(\.bitPattern) }
    return (z.array.map(\.bitPattern), g, saved.memoryPlan)
}

@Test(arguments: [(UNetConfig.Normalization.instance, BayesianLayers.all, false), (.instance, .none, false), (.none, .last(3), false),
                   (.instance, .all, true), (.none, .last(3), true)])
func recomputedBlocksGiveTheSameGradientBits(_ norm: UNetConfig.Normalization, _ bayesian: BayesianLayers, _ split: Bool) throws {
    let x = Tensor(shape: [2, 2, 16, 16, 16], values: testValues(2 * 2 * 4096, seed: 5))
    let ctx = StepContext(seed: 9, step: 3)
    // split: every block runs one example at a time (the same bits under every policy).
    func unet(norm: UNetConfig.Normalization, bayesian: BayesianLayers, policy: MemoryPolicy) throws -> UNet {
        try makeNet(norm: norm, bayesian: bayesian, policy: policy, splitBytes: split ? 0 : MemoryPlan.defaultSplitBytes)
    }
    let kept = try stepBits(try unet(norm: norm, bayesian: bayesian, policy: .keepAll), x, ctx)
    let recomputed = try stepBits(try unet(norm: norm, bayesian: bayesian, policy: .recomputeAll), x, ctx)
    #expect(kept.plan.recomputed.isEmpty && recomputed.plan.recomputed.count == 11)
    #expect(kept.plan.split.count == (split ? 11 : 0) && recomputed.plan.split == kept.plan.split)
    // Split and recomputed throughout, level 0's skip is remade from x where it is read.
    #expect(!kept.plan.recomputesSkip && recomputed.plan.recomputesSkip == split)
    // Recomputed as a batch, every upsampled branch is remade by its up block.
    #expect(kept.plan.recomputedBranches.isEmpty && recomputed.plan.recomputedBranches == (split ? [] : [0, 1]))
    #expect(kept.logits == recomputed.logits, "\(norm) \(bayesian): logits differ")
    #expect(kept.gradients.keys.sorted() == recomputed.gradients.keys.sorted())
    for (name, bits) in kept.gradients {
        let other = recomputed.gradients[name]!
        let differing = zip(bits, other).filter { $0 != $1 }.count
        #expect(differing == 0, "\(norm) \(bayesian): \(name): \(differing) of \(bits.count) gradient elements differ")
        #expect(bits.contains { $0 != 0 }, "\(name): an all-zero gradient tests nothing")
    }
    // A budget between the two picks some blocks and still gives the same bits.
    let partial = try stepBits(try unet(norm: norm, bayesian: bayesian, policy: .budget(bytes: kept.plan.keepAllBytes / 2)), x, ctx)
    #expect(!partial.plan.recomputed.isEmpty && partial.plan.recomputed.count < 11)
    #expect(partial.logits == kept.logits && partial.gradients == kept.gradients)
}

/// Expects every logit and gradient of `other` within 1e-4 of the largest magnitude of `reference`'s
/// (per tensor; for the biases before an instance norm, whose true gradient is 0, of all gradients).
private func expectClose(_ reference: (logits: [UInt32], gradients: [String: [UInt32]], plan: MemoryPlan),
                         _ other: (logits: [UInt32], gradients: [String: [UInt32]], plan: MemoryPlan), norm: UNetConfig.Normalization, _ what: String) {
    let largest = reference.gradients.values.map { $0.map { abs(Float(bitPattern: $0)) }.max() ?? 0 }.max() ?? 0
    func close(_ a: [UInt32], _ b: [UInt32], _ name: String, roundingOnly: Bool = false) {
        let (u, v) = (a.map(Float.init(bitPattern:)), b.map(Float.init(bitPattern:)))
        let scale = roundingOnly ? largest : u.map(abs).max() ?? 0
        let worst = zip(u, v).map { abs($0 - $1) }.max() ?? 0
        #expect(u.count == v.count && scale > 0 && worst <= 1e-4 * scale, "\(what): \(name): largest difference \(worst) of scale \(scale)")
    }
    close(reference.logits, other.logits, "logits")
    #expect(reference.gradients.keys.sorted() == other.gradients.keys.sorted())
    for (name, bits) in reference.gradients {
        // Instance norm removes any per-channel constant: the bias of a convolution before it has
        // a gradient of exactly 0, computed as rounding noise, compared to the gradients' scale.
        let beforeNorm = norm == .instance && name.hasSuffix(".bias") && !name.hasPrefix("head")
        close(bits, other.gradients[name] ?? [], name, roundingOnly: beforeNorm)
    }
}

/// Blocks run one example at a time give the batch's logits and gradients up to float rounding
/// (oneDNN blocks a batch-1 convolution differently, and Flipout's per-example kernel gradients are
/// folded per example), with the same Flipout signs (each example keeps its global row).
@Test(arguments: [(UNetConfig.Normalization.instance, BayesianLayers.all), (.none, .last(3))])
func blocksSplitOverExamplesMatchTheBatch(_ norm: UNetConfig.Normalization, _ bayesian: BayesianLayers) throws {
    let x = Tensor(shape: [2, 2, 16, 16, 16], values: testValues(2 * 2 * 4096, seed: 5))
    let ctx = StepContext(seed: 9, step: 3)
    let batch = try stepBits(try makeNet(norm: norm, bayesian: bayesian, policy: .recomputeAll), x, ctx)
    let split = try stepBits(try makeNet(norm: norm, bayesian: bayesian, policy: .recomputeAll, splitBytes: 0), x, ctx)
    #expect(batch.plan.split.isEmpty && split.plan.split.count == 11)
    expectClose(batch, split, norm: norm, "\(norm) \(bayesian)")
}

/// U3's plan on a network small enough to run in a test: the full-resolution blocks (enc0a, enc0b,
/// enc1a, up0, dec0, head) split over examples, every block recomputed under a small budget, the
/// decoder's split blocks writing their gradients into dead storage (dy's, the upsampled
/// branch's). Its step gives the logits and gradients of the whole-batch step that keeps every
/// activation (U1's and U2's path) up to float rounding.
@Test(arguments: [(UNetConfig.Normalization.instance, BayesianLayers.all), (.none, .all), (.instance, .none)])
func u3sPlanMatchesTheWholeBatchStep(_ norm: UNetConfig.Normalization, _ bayesian: BayesianLayers) throws {
    let x = Tensor(shape: [2, 2, 16, 16, 16], values: testValues(2 * 2 * 4096, seed: 5))
    let ctx = StepContext(seed: 9, step: 3)
    let whole = try stepBits(try makeNet(norm: norm, bayesian: bayesian, policy: .keepAll), x, ctx)
    let probe = try makeNet(norm: norm, bayesian: bayesian, policy: .keepAll)
    // Split where U3 splits: blocks keeping at least the head's input (one full-resolution activation).
    let e = MemoryPlan.estimate(probe.shape, input: x.shape)
    let u3Like = try stepBits(try makeNet(norm: norm, bayesian: bayesian, policy: .budget(bytes: 1), splitBytes: e[e.count - 1].kept), x, ctx)
    #expect(whole.plan.split.isEmpty && whole.plan.recomputed.isEmpty)
    #expect(u3Like.plan.split == [0, 1, 2, 8, 9, 10], "split \(u3Like.plan.split.sorted())")
    #expect(u3Like.plan.recomputed.isSuperset(of: [0, 1, 8, 9]) && u3Like.plan.recomputesSkip)
    expectClose(whole, u3Like, norm: norm, "\(norm) \(bayesian)")
}

@Test func exampleViewsShareTheirParentsStorage() {
    let t = Tensor(shape: [2, 3, 4], values: (0..<24).map(Float.init))
    var view: Tensor? = t.example(1)
    #expect(view!.shape == [1, 3, 4] && view!.array == (12..<24).map(Float.init))
    view![0] = -1
    #expect(t[12] == -1)
    view = nil
    #expect(t[12] == -1 && t[11] == 11)
    // A view keeps its parent's storage alive.
    let orphan = Tensor(shape: [2, 2], values: [1, 2, 3, 4]).example(1)
    #expect(orphan.array == [3, 4])
}

@Test(arguments: [
    Conv3DGeometry(batch: 2, inChannels: 16, outChannels: 32, inputSize: [6, 7, 8], kernel: [3, 3, 3]),
    Conv3DGeometry(batch: 2, inChannels: 32, outChannels: 16, inputSize: [8, 6, 6], kernel: [3, 3, 3], stride: [2, 2, 2]),
    Conv3DGeometry(batch: 2, inChannels: 16, outChannels: 16, inputSize: [6, 6, 6], kernel: [3, 3, 3]).foldedOverBatch(),
    Conv3DGeometry(batch: 2, inChannels: 4, outChannels: 8, inputSize: [5, 6, 16], kernel: [3, 3, 3]),
    Conv3DGeometry(batch: 2, inChannels: 8, outChannels: 3, inputSize: [5, 6, 7], kernel: [1, 1, 1]),
])
func conv3DWithoutItsCopyRecomputesAndResavesTheSameBits(_ g: Conv3DGeometry) throws {
    let conv = try Conv3D(g)
    let x = Tensor(shape: g.xShape, values: testValues(g.xShape.reduce(1, *), seed: 1))
    let w = Tensor(shape: g.weightShape, values: testValues(g.weightShape.reduce(1, *), seed: 2))
    let bias = Tensor(shape: g.biasShape, values: testValues(g.outChannels, seed: 3))
    let dy = Tensor(shape: g.yShape, values: testValues(g.yShape.reduce(1, *), seed: 4))
    func gradients(_ saved: Conv3DSaved) throws -> [UInt32] {
        let dx = Tensor(shape: g.xShape), dw = Tensor(shape: g.weightShape), db = Tensor(shape: g.biasShape)
        try conv.backward(saved, dy: dy, w: w, dx: dx, dw: dw, dbias: db)
        return (dx.array + dw.array + db.array).map(\.bitPattern)
    }
    let y = Tensor(shape: g.yShape)
    let full = try conv.forward(x: x, w: w, bias: bias, y: y)
    #expect(full.hasInput)
    let expected = try gradients(full)

    let y2 = Tensor(shape: g.yShape)
    let bare = try Conv3D.$inputSaving.withValue(.none) { try conv.forward(x: x, w: w, bias: bias, y: y2) }
    #expect(!bare.hasInput)
    #expect(y2.array.map(\.bitPattern) == y.array.map(\.bitPattern), "\(g) \(conv.plan): forward without a copy")
    bias.fill(100)   // the recomputation uses the bias the forward ran with, not the parameter's later value
    let y3 = Tensor(shape: g.yShape)
    let again = try conv.recomputeForward(bare, x: x, w: w, y: y3)
    #expect(y3.array.map(\.bitPattern) == y.array.map(\.bitPattern), "\(g) \(conv.plan): recomputed forward")
    #expect(try gradients(again) == expected, "\(g) \(conv.plan): gradients after recomputation")
    #expect(try gradients(try conv.saving(x: x)) == expected, "\(g) \(conv.plan): gradients from a re-saved x")

    // Adopting x (a network's input made for the call): x itself where backward-weights reads
    // plain x (the native kernels), else a copy; the same bits either way.
    let native = conv.plan.backwardWeights != .onednn
    let bare2 = try Conv3D.$inputSaving.withValue(.none) { try conv.forward(x: x, w: w, bias: bias, y: Tensor(shape: g.yShape)) }
    let adopted = try conv.recomputeForward(bare2, x: x, w: w, y: Tensor(shape: g.yShape), adopting: true)
    #expect(adopted.keeps(x) == native && !full.keeps(x), "\(g) \(conv.plan): adopted x")
    #expect(try gradients(adopted) == expected, "\(g) \(conv.plan): gradients with x adopted")
    let resaved = try conv.saving(x: x, adopting: true)
    let copied = try conv.saving(x: x)
    #expect(resaved.keeps(x) == native && !copied.keeps(x))
    #expect(try gradients(resaved) == expected, "\(g) \(conv.plan): gradients from an adopted re-saved x")
    let forwardAdopting = try Conv3D.$inputSaving.withValue(.adopt) { try conv.forward(x: x, w: w, bias: bias, y: Tensor(shape: g.yShape)) }
    #expect(forwardAdopting.keeps(x) == native)
    #expect(try gradients(forwardAdopting) == expected, "\(g) \(conv.plan): gradients from a forward adopting x")
}

/// The engines a memory-bound block asks for (`Conv3DEngines.Choice.lowMemory`): the native
/// kernels in every direction where they apply (no oneDNN layout copies), the planned engine
/// elsewhere; each choice its own engine.
@Test func lowMemoryEnginesRunTheNativeKernelsWhereTheyApply() throws {
    let engines = Conv3DEngines()
    let wide = Conv3DGeometry(batch: 1, inChannels: 64, outChannels: 32, inputSize: [8, 8, 8], kernel: [3, 3, 3])
    let strided = Conv3DGeometry(batch: 1, inChannels: 32, outChannels: 64, inputSize: [8, 8, 8], kernel: [3, 3, 3], stride: [2, 2, 2])
    let planned = try engines.engine(wide)
    #expect(planned.plan == Conv3DPlan.choose(wide))
    let low = try Conv3DEngines.$choice.withValue(.lowMemory) { try engines.engine(wide) }
    if ConvEngineChoice.current == .onednn {
        #expect(low === planned)
    } else {
        #expect(low !== planned && [low.plan.forward, low.plan.backwardData, low.plan.backwardWeights].allSatisfy { $0 == .native(.best) }, "\(low.plan)")
        #expect(try engines.engine(wide) === planned)
    }
    // The native kernels take no stride-2 backward-data: the planned engine.
    let s = try Conv3DEngines.$choice.withValue(.lowMemory) { try engines.engine(strided) }
    #expect(s === (try engines.engine(strided)) && s.plan == Conv3DPlan.choose(strided))
}

@Test func memoryPlanKeepsU1AndU2AndRecomputesU3() {
    func plan(_ w: UNetWorkload) -> MemoryPlan {
        MemoryPlan.choose(.default, shape: w.shape, input: [w.batch, w.channels, w.patch, w.patch, w.patch])
    }
    // The figures MemoryPolicy.defaultBudgetBytes cites.
    #expect(plan(.u1).keepAllBytes >> 20 == 23 && plan(.u2).keepAllBytes >> 20 == 384 && plan(.u3).keepAllBytes >> 20 == 6118)
    #expect(plan(.u1).recomputed.isEmpty && plan(.u2).recomputed.isEmpty)
    let u3 = plan(.u3)
    // Every full-resolution block (enc0a, enc0b, up0, dec0) recomputes.
    #expect(u3.recomputed.isSuperset(of: [0, 1, 16, 17]) && u3.keptBytes < u3.keepAllBytes * 2 / 5)
    // U3's full-resolution blocks (enc0a, enc0b, enc1a, up0, dec0, head) run one example at a time; U1's and U2's none.
    #expect(u3.split == [0, 1, 2, 16, 17, 18] && plan(.u1).split.isEmpty && plan(.u2).split.isEmpty)
    // U3 remakes level 0's skip (512 MiB) from x instead of keeping it; U1 and U2 keep theirs.
    #expect(u3.recomputesSkip && !plan(.u1).recomputesSkip && !plan(.u2).recomputesSkip)
    // Its batch decoder levels (1-3) remake their upsampled branches; level 0's (split) is kept.
    #expect(u3.recomputedBranches == [1, 2, 3] && plan(.u1).recomputedBranches.isEmpty)
    #expect(MemoryPlan.choose(.keepAll, shape: UNetWorkload.u3.shape, input: [2, 2, 128, 128, 128]).split == u3.split)
    #expect(MemoryPlan.choose(.keepAll, shape: UNetWorkload.u3.shape, input: [2, 2, 128, 128, 128]).recomputed.isEmpty)
}

@Test func scratchArenaReusesOneBlockForCallsInSequence() {
    let arena = ScratchArena()
    var first: UnsafeMutableRawPointer?
    arena.withLease(bytes: 1 << 20) { p in first = p; p.storeBytes(of: 1, as: Int.self) }
    arena.withLease(bytes: 1 << 10) { p in #expect(p == first) }
    #expect(arena.idleBytes == 1 << 20)
    // Nested leases are different blocks; a larger request replaces the largest idle block.
    arena.withLease(bytes: 1 << 20) { a in arena.withLease(bytes: 1 << 20) { b in #expect(a != b) } }
    #expect(arena.idleBytes == 2 << 20)
    arena.withLease(bytes: 3 << 20) { _ in }
    #expect(arena.idleBytes == 4 << 20)
    arena.trim()
    #expect(arena.idleBytes == 0)
}
