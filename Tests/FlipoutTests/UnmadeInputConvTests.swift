// A decoder convolution on an unmade input (nearest-upsampled, or a skip concatenation) against making the input and running the layer on it.
import Testing
import TestSupport
import Flipout3D

/// The input the layer reads for what `unmade` describes (1, C, D, H, W), and the gradients of what
/// it is made from given the input's. An upsampling layer reads x itself (`Conv3DGeometry.upsample`,
/// run by `UpsamplingConv3D` on oneDNN: an implementation independent of the sub-pixel phases).
private func made(_ unmade: UnmadeInput) -> (Tensor, (Tensor) -> [Tensor]) {
    switch unmade {
    case .upsampled(let x):
        return (x, { [$0] })
    case .concatenated(let a, let b):
        let (y, s) = ChannelConcat.forward(a, b)
        return (y, { let (da, db) = ChannelConcat.backward($0, s); return [da, db] })
    }
}

/// Every parameter gradient of `layer`, by name.
private func gradients(_ layer: ConvLayer) -> [String: [Float]] {
    Dictionary(uniqueKeysWithValues: layer.trainable.map { ($0.name, $0.gradient.array) })
}

/// Expects b within 1e-5 of a's largest magnitude (float rounding: the sub-pixel phases pre-sum
/// taps, the concatenation sums its two halves' outputs, and their engines block differently).
private func expectClose(_ a: [Float], _ b: [Float], _ what: String) {
    let scale = a.map(abs).max() ?? 0, worst = zip(a, b).map { abs($0 - $1) }.max() ?? .infinity
    #expect(a.count == b.count && scale > 0 && worst <= 1e-5 * scale, "\(what): largest difference \(worst) of scale \(scale)")
}

/// The layer's forward and backward on the made input, against `UnmadeInputConvolutions` with the
/// kernels the layer draws for the same context, handing its kernel gradients back to the layer:
/// the output, dL/d(what the input is made from), and every parameter gradient (Flipout's fold
/// and posterior VJPs included) agree up to float rounding.
private func check(_ layer: ConvLayer, _ unmade: UnmadeInput, _ what: String) throws {
    let ctx = StepContext(seed: 3, step: 5)
    let (x, madeBackward) = made(unmade)
    layer.zeroGradients()
    let (y, saved) = try layer.forward(x, ctx)
    let dy = Tensor(shape: y.shape, values: testValues(y.count, seed: 11))
    let dxMade = try layer.backward(dy, saved)
    layer.finishBackward()
    let expected = gradients(layer)

    layer.zeroGradients()
    let convs = UnmadeInputConvolutions()
    let k = try layer.kernels(batch: 1, ctx)
    let y2 = Tensor(shape: y.shape)
    try convs.forward(unmade, k, into: y2)
    expectClose(y.array, y2.array, "\(what): y")
    let reference = madeBackward(dxMade)
    let into: UnmadeInputConvolutions.InputGradient
    switch unmade {
    case .upsampled(let low): into = .upsampled(Tensor(shape: low.shape))
    case .concatenated(let a, let b): into = .concatenated(Tensor(shape: a.shape), Tensor(shape: b.shape))
    }
    let (dw, db) = try convs.backward(unmade, dy: dy, k, into: into)
    try layer.addGradients(kernels: dw, bias: db, k)
    layer.finishBackward()
    switch into {
    case .upsampled(let dx): expectClose(reference[0].array, dx.array, "\(what): dL/dx")
    case .concatenated(let da, let db):
        expectClose(reference[0].array, da.array, "\(what): dL/da")
        expectClose(reference[1].array, db.array, "\(what): dL/db")
    }
    let got = gradients(layer)
    #expect(got.keys.sorted() == expected.keys.sorted())
    for (name, g) in expected { expectClose(g, got[name] ?? [], "\(what): \(name)") }
}

private func flipout(_ cin: Int, _ cout: Int, upsample: Int = 1) throws -> FlipoutConv3D {
    let registry = try SmallRun.registry()
    let normal = try registry.family("org.flipout3d.normal")
    return try FlipoutConv3D(name: "up", index: 4, inChannels: cin, outChannels: cout, upsample: upsample, estimator: .flipout,
                             posterior: try normal.instantiate([:]), prior: try normal.instantiate([:]), seed: 2)
}

/// Sizes odd and unequal per axis (every phase's edge padding), and U3's up0 channels (64 -> 32).
@Test(arguments: [(4, 3, [3, 4, 5]), (64, 32, [4, 4, 4]), (5, 8, [2, 3, 2])])
func unmadeUpsampledConvolutionMatchesTheUpsamplingLayer(_ cin: Int, _ cout: Int, _ size: [Int]) throws {
    let x = Tensor(shape: [1, cin] + size, values: testValues(cin * size.reduce(1, *), seed: 7))
    try check(DeterministicConv3D(name: "up", index: 4, inChannels: cin, outChannels: cout, upsample: 2, seed: 2), .upsampled(x),
              "deterministic \(cin)->\(cout) \(size)")
    try check(try flipout(cin, cout, upsample: 2), .upsampled(x), "flipout \(cin)->\(cout) \(size)")
}

/// U3's dec0 channels (32 + 32 -> 32) and unequal halves.
@Test(arguments: [(3, 2, 4, [5, 4, 6]), (32, 32, 32, [4, 4, 4])])
func unmadeConcatenatedConvolutionMatchesConcatenatingThenConvolving(_ ca: Int, _ cb: Int, _ cout: Int, _ size: [Int]) throws {
    let v = size.reduce(1, *)
    let a = Tensor(shape: [1, ca] + size, values: testValues(ca * v, seed: 8))
    let b = Tensor(shape: [1, cb] + size, values: testValues(cb * v, seed: 9))
    try check(DeterministicConv3D(name: "dec", index: 5, inChannels: ca + cb, outChannels: cout, seed: 2), .concatenated(a, b), "deterministic \(ca)+\(cb)->\(cout)")
    try check(try flipout(ca + cb, cout), .concatenated(a, b), "flipout \(ca)+\(cb)->\(cout)")
}
