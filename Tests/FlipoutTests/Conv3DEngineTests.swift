// Conv3D engine vs the direct-loop reference: forward, backward-data, backward-weights, bias gradient.
import Testing
import Flipout3D
import TestSupport

/// The sweep: batch 1..3, channels 1..32, odd non-cubic volumes, kernels 1, 3 and 3x1x3, strides 1
/// and 2, padding same/valid/explicit, groups 2 and the per-example form (groups = N over the
/// batch folded into channels).
let engineCases: [Conv3DGeometry] = [
    .init(batch: 1, inChannels: 1, outChannels: 1, inputSize: [5, 7, 9], kernel: [3, 3, 3]),
    .init(batch: 2, inChannels: 3, outChannels: 8, inputSize: [7, 5, 6], kernel: [3, 3, 3], padding: .valid),
    .init(batch: 3, inChannels: 8, outChannels: 16, inputSize: [5, 7, 9], kernel: [1, 1, 1]),
    .init(batch: 2, inChannels: 16, outChannels: 16, inputSize: [7, 7, 7], kernel: [3, 3, 3], stride: [2, 2, 2]),
    .init(batch: 1, inChannels: 32, outChannels: 32, inputSize: [5, 5, 5], kernel: [3, 3, 3]),
    .init(batch: 2, inChannels: 16, outChannels: 8, inputSize: [9, 7, 5], kernel: [3, 1, 3], stride: [1, 2, 1],
          padding: .explicit(front: [1, 0, 0], back: [1, 0, 2])),
    .init(batch: 3, inChannels: 1, outChannels: 3, inputSize: [9, 5, 7], kernel: [3, 3, 3], stride: [2, 2, 2]),
    // even sizes with stride 2 and same: TF pads 0 before and 1 after
    .init(batch: 2, inChannels: 3, outChannels: 5, inputSize: [8, 6, 10], kernel: [3, 3, 3], stride: [2, 2, 2]),
    .init(batch: 1, inChannels: 3, outChannels: 3, inputSize: [7, 8, 9], kernel: [3, 3, 3], stride: [2, 2, 2],
          padding: .explicit(front: [0, 1, 2], back: [2, 1, 0])),
    // narrow, odd output width, uneven padding up to k-1, a 3x1x3 kernel
    .init(batch: 2, inChannels: 5, outChannels: 3, inputSize: [6, 9, 21], kernel: [3, 1, 3],
          padding: .explicit(front: [2, 0, 1], back: [0, 0, 2])),
    // groups = 2
    .init(batch: 2, inChannels: 8, outChannels: 16, inputSize: [5, 7, 9], kernel: [3, 3, 3], groups: 2),
    .init(batch: 1, inChannels: 4, outChannels: 6, inputSize: [9, 9, 7], kernel: [3, 3, 3], stride: [2, 2, 2],
          padding: .valid, groups: 2),
    // rows of whole vectors at every level (16 and 32 wide): the native kernels store whole
    // tiles straight into y and read dy in place
    Conv3DGeometry(batch: 2, inChannels: 2, outChannels: 8, inputSize: [4, 5, 16], kernel: [3, 3, 3]).foldedOverBatch(),
    Conv3DGeometry(batch: 2, inChannels: 8, outChannels: 1, inputSize: [3, 6, 32], kernel: [3, 3, 3]).foldedOverBatch(),
    // per-example: (N, Cin) -> (N, Cout) as one grouped convolution with groups = N
    Conv3DGeometry(batch: 3, inChannels: 2, outChannels: 4, inputSize: [7, 5, 9], kernel: [3, 3, 3]).foldedOverBatch(),
    Conv3DGeometry(batch: 4, inChannels: 16, outChannels: 16, inputSize: [5, 5, 5], kernel: [3, 3, 3]).foldedOverBatch(),
    Conv3DGeometry(batch: 8, inChannels: 1, outChannels: 8, inputSize: [7, 7, 7], kernel: [3, 3, 3]).foldedOverBatch(),
    Conv3DGeometry(batch: 8, inChannels: 8, outChannels: 1, inputSize: [5, 7, 5], kernel: [3, 3, 3]).foldedOverBatch(),
    Conv3DGeometry(batch: 16, inChannels: 1, outChannels: 2, inputSize: [5, 5, 5], kernel: [3, 3, 3]).foldedOverBatch(),
    Conv3DGeometry(batch: 2, inChannels: 32, outChannels: 32, inputSize: [5, 5, 5], kernel: [3, 3, 3],
                   stride: [2, 2, 2]).foldedOverBatch(),
    // more inputs than outputs (a U-Net decoder's 2c -> c): every direction native, per-example
    // and plain, rows longer than the 64-float tiles
    Conv3DGeometry(batch: 2, inChannels: 16, outChannels: 8, inputSize: [4, 5, 70], kernel: [3, 3, 3]).foldedOverBatch(),
    .init(batch: 2, inChannels: 12, outChannels: 4, inputSize: [5, 6, 7], kernel: [3, 3, 3]),
    // 24 inputs per group: native backward-weights (and forward), backward-data on oneDNN
    .init(batch: 2, inChannels: 24, outChannels: 8, inputSize: [5, 6, 9], kernel: [3, 3, 3]),
    // Strided: native forward and backward-weights (rows of even then odd columns), backward-data
    // on oneDNN. A U-Net's down-sampling layer per example (8->16, even sizes: TF pads 0 before
    // and 1 after), with output rows of 35: more than one 32-float tile, and odd;
    Conv3DGeometry(batch: 2, inChannels: 8, outChannels: 16, inputSize: [6, 7, 70], kernel: [3, 3, 3],
                   stride: [2, 2, 2]).foldedOverBatch(),
    // more output channels than one register block, with a partial last block (24 = 8 + 8 + 8 on
    // AVX-512, 6 x 4 below), odd sizes (pads 1 and 1);
    .init(batch: 1, inChannels: 5, outChannels: 24, inputSize: [7, 5, 19], kernel: [3, 3, 3], stride: [2, 2, 2]),
    // a 3x3x1 kernel with width stride 2, and stride 3 in depth with width stride 1;
    .init(batch: 2, inChannels: 3, outChannels: 4, inputSize: [7, 9, 11], kernel: [3, 3, 1], stride: [2, 2, 2]),
    .init(batch: 1, inChannels: 4, outChannels: 3, inputSize: [10, 6, 9], kernel: [3, 3, 3], stride: [3, 1, 1]),
    // width stride 2 only, valid padding, odd input width (the last column is never read).
    Conv3DGeometry(batch: 3, inChannels: 2, outChannels: 5, inputSize: [5, 4, 17], kernel: [3, 3, 3], stride: [1, 1, 2],
                   padding: .valid).foldedOverBatch(),
]

/// Tolerance for sums of `terms` products of values in [-1, 1]: fp32 rounding grows like sqrt(terms).
private func tolerance(_ terms: Int) -> Float { 2e-6 * Float(terms) .squareRoot() * 8 + 1e-5 }

/// Every forward strategy that applies: direct always, the transposed backward-data with stride 1.
private func strategies(_ g: Conv3DGeometry) -> [Conv3D.ForwardStrategy] {
    g.isTransposable ? [.direct, .transposedBackwardData] : [.direct]
}

/// Every plan the engine can build for `g` on this machine: oneDNN with each forward strategy
/// (blocked) and channels-last (whatever kernels oneDNN has for them on this CPU);
/// where the native kernels apply, each instruction-set level this CPU runs (AVX-512, AVX2,
/// portable: a Zen 4 run covers what a Zen 3 runs), and mixed plans (native forward with oneDNN
/// backward, and the reverse), which hand the saved copy of x between implementations.
func enginePlans(_ g: Conv3DGeometry) -> [Conv3DPlan] {
    var plans = strategies(g).map { Conv3DPlan.onednn($0) } + [.onednn(.direct, layout: .channelsLast)]
    if Conv3DPlan.nativeSupportsBackwardWeights(g) {
        // Native forward and backward-weights with oneDNN backward-data (which the kernels may not run).
        for level in NativeLevel.runnable {
            plans.append(Conv3DPlan(forward: .native(level), backwardData: .onednn, backwardWeights: .native(level)))
        }
        // oneDNN forward (saving x plain) with native backward-weights: the auto rule for strided layers.
        plans.append(Conv3DPlan(forward: .onednn, backwardData: .onednn, backwardWeights: .native(NativeLevel.supported)))
    }
    guard Conv3DPlan.nativeSupports(g) else { return perGroup(plans, g) }
    plans += NativeLevel.runnable.map { Conv3DPlan.native($0) }
    let best = NativeLevel.supported
    plans.append(Conv3DPlan(forward: .native(best), backwardData: .onednn, backwardWeights: .onednn))
    plans.append(Conv3DPlan(forward: .onednn, backwardData: .native(best), backwardWeights: .native(best)))
    plans.append(Conv3DPlan(forward: .onednn, backwardData: .onednn, backwardWeights: .native(.portable)))
    // Native forward and backward-data with oneDNN backward-weights reading a channels-last copy of x.
    plans.append(Conv3DPlan(forward: .native(best), backwardData: .native(best), backwardWeights: .onednn, layout: .channelsLast))
    return perGroup(plans, g)
}

/// For a grouped batch-1 geometry (the per-example form), `plans` and each of its oneDNN plans
/// again with every group run as its own convolution (`Layout.channelsLastPerGroup`, direct forward):
/// per-part slices, the saved copy handed between implementations part by part.
private func perGroup(_ plans: [Conv3DPlan], _ g: Conv3DGeometry) -> [Conv3DPlan] {
    guard g.groups > 1 && g.batch == 1 else { return plans }
    var seen = Set<Conv3DPlan>()
    let split = plans.filter(\.usesOneDNN).map { p -> Conv3DPlan in
        var q = p
        q.layout = .channelsLastPerGroup; q.forwardStrategy = .direct; q.reason = "per group"
        return q
    }.filter { seen.insert($0).inserted }
    return plans + split
}

@Test(arguments: engineCases)
func conv3DMatchesReference(_ g: Conv3DGeometry) throws {
    for plan in enginePlans(g) { try checkEngine(g, plan) }
}

@Test func nativeKernelsCoverTheSweep() {
    // The sweep must exercise the native kernels (ungrouped, grouped, per-example), not skip them all.
    #expect(engineCases.filter(Conv3DPlan.nativeSupports).count >= 6)
    // ... and their strided forward and backward-weights, at width stride 2 and 1.
    let strided = engineCases.filter { $0.stride != [1, 1, 1] && Conv3DPlan.nativeSupportsBackwardWeights($0) }
    #expect(strided.filter { $0.stride[2] == 2 }.count >= 6 && strided.contains { $0.stride[2] == 1 })
    #expect(NativeLevel.runnable.first == .portable)
}

private func checkEngine(_ g: Conv3DGeometry, _ plan: Conv3DPlan) throws {
    let conv = try Conv3D(g, plan: plan)
    if plan.forward == .onednn { #expect(conv.forwardStrategy == plan.forwardStrategy) }
    let ref = ReferenceConv3D(g)
    let context = "\(g) plan \(plan) [impl fwd \(conv.implementations.forward), bwd-data \(conv.implementations.backwardData), bwd-weights \(conv.implementations.backwardWeights)]"
    let seed = UInt64("\(g)".utf8.reduce(0) { $0 &* 31 &+ Int($1) } & 0xffff)
    let x = Tensor(shape: g.xShape, values: testValues(g.xShape.reduce(1, *), seed: seed))
    let w = Tensor(shape: g.weightShape, values: testValues(g.weightShape.reduce(1, *), seed: seed + 1))
    let bias = Tensor(shape: g.biasShape, values: testValues(g.outChannels, seed: seed + 2))
    let dy = Tensor(shape: g.yShape, values: testValues(g.yShape.reduce(1, *), seed: seed + 3))

    // Outputs start as garbage: the engine must overwrite, not accumulate.
    let y = Tensor(shape: g.yShape); y.fill(1e30)
    let saved = try conv.forward(x: x, w: w, bias: bias, y: y)
    let fwdTerms = (g.inChannels / g.groups) * g.kernelVolume
    assertClose(y.array, ref.forward(x: x.array, w: w.array, bias: bias.array),
                rtol: 1e-4, atol: tolerance(fwdTerms), "forward \(context)")

    let yNoBias = Tensor(shape: g.yShape); yNoBias.fill(1e30)
    _ = try conv.forward(x: x, w: w, bias: nil, y: yNoBias)
    assertClose(yNoBias.array, ref.forward(x: x.array, w: w.array, bias: nil),
                rtol: 1e-4, atol: tolerance(fwdTerms), "forward without bias \(context)")

    let dx = Tensor(shape: g.xShape); dx.fill(1e30)
    try conv.backwardData(dy: dy, w: w, dx: dx)
    let bdTerms = (g.outChannels / g.groups) * g.kernelVolume
    assertClose(dx.array, ref.backwardData(dy: dy.array, w: w.array),
                rtol: 1e-4, atol: tolerance(bdTerms), "backward-data \(context)")

    let dw = Tensor(shape: g.weightShape); dw.fill(1e30)
    let dbias = Tensor(shape: g.biasShape); dbias.fill(1e30)
    try conv.backwardWeights(saved, dy: dy, dw: dw, dbias: dbias)
    let expected = ref.backwardWeights(x: x.array, dy: dy.array)
    let bwTerms = g.batch * g.outputVoxels
    assertClose(dw.array, expected.dw, rtol: 1e-4, atol: tolerance(bwTerms), "backward-weights \(context)")
    assertClose(dbias.array, expected.dbias, rtol: 1e-4, atol: tolerance(bwTerms), "bias gradient \(context)")

    // The combined backward (dy reordered once) gives the same gradients, with and without dx.
    let dx3 = Tensor(shape: g.xShape); dx3.fill(1e30)
    let dw3 = Tensor(shape: g.weightShape); dw3.fill(1e30)
    let db3 = Tensor(shape: g.biasShape); db3.fill(1e30)
    try conv.backward(saved, dy: dy, w: w, dx: dx3, dw: dw3, dbias: db3)
    assertClose(dx3.array, dx.array, rtol: 1e-6, atol: 1e-6, "combined backward dx \(context)")
    assertClose(dw3.array, expected.dw, rtol: 1e-4, atol: tolerance(bwTerms), "combined backward dw \(context)")
    assertClose(db3.array, expected.dbias, rtol: 1e-4, atol: tolerance(bwTerms), "combined backward dbias \(context)")
    dw3.fill(1e30)
    try conv.backward(saved, dy: dy, w: w, dx: nil, dw: dw3, dbias: nil)
    assertClose(dw3.array, expected.dw, rtol: 1e-4, atol: tolerance(bwTerms), "combined backward without dx \(context)")

    // Without dbias the weight gradient is unchanged.
    let dw2 = Tensor(shape: g.weightShape); dw2.fill(1e30)
    try conv.backwardWeights(saved, dy: dy, dw: dw2, dbias: nil)
    assertClose(dw2.array, expected.dw, rtol: 1e-4, atol: tolerance(bwTerms), "backward-weights without dbias \(context)")
}

@Test func perExampleFormIsOneConvolutionPerExample() throws {
    // Folded over the batch, example n convolves with its own kernel W_n: compare each example
    // with an ordinary N=1 convolution. Tensors use the unfolded views (N, C, ...).
    let base = Conv3DGeometry(batch: 3, inChannels: 4, outChannels: 5, inputSize: [5, 6, 7], kernel: [3, 3, 3])
    let folded = try Conv3D(base.foldedOverBatch())
    let single = ReferenceConv3D(Conv3DGeometry(batch: 1, inChannels: 4, outChannels: 5, inputSize: [5, 6, 7], kernel: [3, 3, 3]))
    let x = Tensor(shape: base.xShape, values: testValues(base.xShape.reduce(1, *), seed: 7))
    let wCount = base.weightShape.reduce(1, *)
    let w = Tensor(shape: [3, 5, 4, 3, 3, 3], values: testValues(3 * wCount, seed: 8)) // (N, Cout, Cin, k, k, k)
    let y = Tensor(shape: base.yShape)
    _ = try folded.forward(x: x, w: w, bias: nil, y: y)
    let xa = x.array, wa = w.array, ya = y.array
    let xPer = xa.count / 3, yPer = ya.count / 3
    for n in 0..<3 {
        let expected = single.forward(x: Array(xa[n * xPer..<(n + 1) * xPer]),
                                      w: Array(wa[n * wCount..<(n + 1) * wCount]), bias: nil)
        assertClose(Array(ya[n * yPer..<(n + 1) * yPer]), expected, rtol: 1e-4, atol: 1e-4, "per-example forward, example \(n)")
    }
}

/// The saved-state contract, on whatever kernels and layouts this CPU gets: backward computes
/// the gradients of the forward that made the saved value, whatever happened in between — other
/// forwards on the same engine, in-place changes to the caller's x, x freed and its storage
/// recycled, backward-data runs — for every forward strategy and kind of geometry.
@Test(arguments: [
    Conv3DGeometry(batch: 2, inChannels: 16, outChannels: 16, inputSize: [5, 6, 7], kernel: [3, 3, 3]),
    Conv3DGeometry(batch: 2, inChannels: 8, outChannels: 8, inputSize: [6, 5, 7], kernel: [3, 3, 3]),
    Conv3DGeometry(batch: 3, inChannels: 1, outChannels: 8, inputSize: [5, 6, 7], kernel: [3, 3, 3], stride: [2, 2, 2]),
    Conv3DGeometry(batch: 4, inChannels: 8, outChannels: 1, inputSize: [5, 5, 6], kernel: [3, 3, 3]).foldedOverBatch(),
    Conv3DGeometry(batch: 2, inChannels: 16, outChannels: 16, inputSize: [5, 5, 5], kernel: [3, 3, 3]).foldedOverBatch(),
])
func backwardUsesWhatItsForwardSaved(_ g: Conv3DGeometry) throws {
    for plan in enginePlans(g) {
        let conv = try Conv3D(g, plan: plan)
        let ref = ReferenceConv3D(g)
        let tol = tolerance(g.batch * g.outputVoxels)
        let w = Tensor(shape: g.weightShape, values: testValues(g.weightShape.reduce(1, *), seed: 13))
        let dy = Tensor(shape: g.yShape, values: testValues(g.yShape.reduce(1, *), seed: 14))
        let y = Tensor(shape: g.yShape), dx = Tensor(shape: g.xShape), dw = Tensor(shape: g.weightShape)
        let context = "\(g) plan \(plan)"
        func fresh(_ seed: UInt64) -> Tensor { Tensor(shape: g.xShape, values: testValues(g.xShape.reduce(1, *), seed: seed)) }

        let x = fresh(11), xValues = x.array
        let expected = ref.backwardWeights(x: xValues, dy: dy.array).dw
        let saved = try conv.forward(x: x, w: w, bias: nil, y: y)
        // Another forward on the same engine, then x changed in place, then a backward-data.
        let other = fresh(12)
        let savedOther = try conv.forward(x: other, w: w, bias: nil, y: y)
        for i in 0..<x.count { x.data[i] = -x.data[i] + 0.25 }
        try conv.backwardData(dy: dy, w: w, dx: dx)
        try conv.backward(saved, dy: dy, w: w, dx: dx, dw: dw, dbias: nil)
        assertClose(dw.array, expected, rtol: 1e-4, atol: tol, "dw of the first forward \(context)")
        assertClose(dx.array, ref.backwardData(dy: dy.array, w: w.array), rtol: 1e-4, atol: tol, "dx \(context)")
        // The second forward's value is its own x's.
        try conv.backwardWeights(savedOther, dy: dy, dw: dw, dbias: nil)
        assertClose(dw.array, ref.backwardWeights(x: other.array, dy: dy.array).dw, rtol: 1e-4, atol: tol, "dw of the second forward \(context)")
        // Saved values outlive their x: free it, reuse its storage for another tensor, backward again.
        var dropped: Tensor? = fresh(15)
        let savedDropped = try conv.forward(x: dropped!, w: w, bias: nil, y: y)
        let droppedValues = dropped!.array
        dropped = nil
        let reuse = Tensor(uninitializedShape: g.xShape); reuse.fill(7)
        _ = try conv.forward(x: reuse, w: w, bias: nil, y: y)
        try conv.backward(savedDropped, dy: dy, w: nil, dx: nil, dw: dw, dbias: nil)
        assertClose(dw.array, ref.backwardWeights(x: droppedValues, dy: dy.array).dw, rtol: 1e-4, atol: tol,
                    "dw after x was freed and its storage reused \(context)")
        // The first value, used again after all that, still gives its gradients.
        try conv.backwardWeights(saved, dy: dy, dw: dw, dbias: nil)
        assertClose(dw.array, expected, rtol: 1e-4, atol: tol, "dw of the first forward, again \(context)")
        withExtendedLifetime(reuse) {}
    }
}

@Test func assertCloseCatchesWrongValues() {
    withKnownIssue("a wrong value must be reported") {
        assertClose([1, 2, 3.01], [1, 2, 3], rtol: 1e-4, atol: 1e-5, "deliberately wrong")
    }
    withKnownIssue("NaN must be reported") {
        assertClose([.nan], [0], rtol: 1e-4, atol: 1e-5, "deliberately NaN")
    }
}

@Test func samePaddingFollowsTensorFlow() {
    // in 7, k 3, s 2: out 4, total pad (4-1)*2+3-7 = 2 -> 1/1; in 8, k 3, s 2: out 4, total 1 -> 0/1.
    let g = Conv3DGeometry(batch: 1, inChannels: 1, outChannels: 1, inputSize: [7, 8, 32], kernel: [3, 3, 3], stride: [2, 2, 1])
    #expect(g.outputSize == [4, 4, 32])
    #expect(g.paddingFront == [1, 0, 1])
    #expect(g.paddingBack == [1, 1, 1])
    let v = Conv3DGeometry(batch: 1, inChannels: 1, outChannels: 1, inputSize: [7, 8, 9], kernel: [3, 3, 3], stride: [2, 2, 2], padding: .valid)
    #expect(v.outputSize == [3, 3, 4])
    let w4 = Conv3DGeometry(batch: 4, inChannels: 16, outChannels: 16, size: 32, k: 3)
    #expect(w4.flops == 2 * 4 * 16 * 16 * 27 * 32768)
    #expect(w4.yShape == [4, 16, 32, 32, 32] && w4.weightShape == [16, 16, 3, 3, 3])
    let folded = w4.foldedOverBatch()
    #expect(folded.xShape == [1, 64, 32, 32, 32] && folded.weightShape == [64, 16, 3, 3, 3] && folded.flops == w4.flops)
}

@Test func invalidGeometriesThrowActionableErrors() {
    func message(_ g: Conv3DGeometry) -> String {
        do { try g.validate(); return "" } catch { return "\(error)" }
    }
    #expect(message(.init(batch: 1, inChannels: 6, outChannels: 4, size: 5, k: 3, groups: 4)).contains("not divisible by groups"))
    #expect(message(.init(batch: 1, inChannels: 2, outChannels: 2, size: 3, k: 5, padding: .valid)).contains("bigger than the padded input"))
    #expect(message(.init(batch: 1, inChannels: 2, outChannels: 2, inputSize: [4, 4], kernel: [3, 3, 3])).contains("3 values"))
    #expect(message(.init(batch: 0, inChannels: 2, outChannels: 2, size: 4, k: 3)).contains("batch"))
    #expect(message(.init(batch: 1, inChannels: 2, outChannels: 2, size: 4, k: 3,
                          padding: .explicit(front: [1, 1], back: [1, 1, 1]))).contains("explicit padding"))
    #expect(message(.init(batch: 1, inChannels: 2, outChannels: 2, size: 4, k: 3)) == "")
    #expect(throws: GeometryError.self) { try Conv3D(.init(batch: 1, inChannels: 3, outChannels: 4, size: 5, k: 3, groups: 2)) }
    #expect(throws: GeometryError.self) {
        try Conv3D(.init(batch: 1, inChannels: 2, outChannels: 2, size: 5, k: 3, stride: 2), forward: .transposedBackwardData)
    }
    #expect(throws: GeometryError.self) {
        try Conv3D(.init(batch: 1, inChannels: 2, outChannels: 2, size: 5, k: 3, stride: 2), plan: .native(.portable))
    }
}
