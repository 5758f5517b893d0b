// An upsampling convolution (geometry upsample 2) against the direct convolution of the nearest-upsampled input.
import Testing
import Flipout3D
import TestSupport

/// x (N, C, D, H, W) nearest-upsampled by 2 on every axis.
private func upsampled(_ x: [Float], _ shape: [Int]) -> [Float] {
    let (planes, d, h, w) = (shape[0] * shape[1], shape[2], shape[3], shape[4])
    var out = [Float](repeating: 0, count: x.count * 8)
    for p in 0..<planes {
        for z in 0..<2 * d { for y in 0..<2 * h { for v in 0..<2 * w {
            out[((p * 2 * d + z) * 2 * h + y) * 2 * w + v] = x[((p * d + z / 2) * h + y / 2) * w + v / 2]
        } } }
    }
    return out
}

/// The adjoint of `upsampled`: each 2x2x2 block of g summed into one voxel of (N, C, D, H, W).
private func summedDown(_ g: [Float], _ shape: [Int]) -> [Float] {
    let (planes, d, h, w) = (shape[0] * shape[1], shape[2], shape[3], shape[4])
    var out = [Double](repeating: 0, count: planes * d * h * w)
    for p in 0..<planes {
        for z in 0..<2 * d { for y in 0..<2 * h { for v in 0..<2 * w {
            out[((p * d + z / 2) * h + y / 2) * w + v / 2] += Double(g[((p * 2 * d + z) * 2 * h + y) * 2 * w + v])
        } } }
    }
    return out.map { Float($0) }
}

@Test(arguments: [
    Conv3DGeometry(batch: 2, inChannels: 3, outChannels: 5, inputSize: [3, 4, 5], kernel: [3, 3, 3], upsample: 2),
    Conv3DGeometry(batch: 1, inChannels: 16, outChannels: 8, inputSize: [4, 4, 6], kernel: [3, 3, 3], upsample: 2),
    // the per-example form (one kernel per example): grouped over the batch
    Conv3DGeometry(batch: 2, inChannels: 4, outChannels: 3, inputSize: [2, 3, 4], kernel: [3, 3, 3], upsample: 2).foldedOverBatch(),
])
func upsamplingConvolutionMatchesTheUpsampledOne(_ g: Conv3DGeometry) throws {
    var direct = g
    direct.upsample = 1
    direct.inputSize = g.inputSize.map { $0 * 2 }
    #expect(g.outputSize == direct.outputSize && g.flops == direct.flops)
    let ref = ReferenceConv3D(direct)
    let conv = try Conv3D(g)
    #expect(conv.plan.forward == .onednn && conv.plan.reason.contains("upsampling"), "\(conv.plan)")

    let x = Tensor(shape: g.xShape, values: testValues(g.xShape.reduce(1, *), seed: 31))
    let w = Tensor(shape: g.weightShape, values: testValues(g.weightShape.reduce(1, *), seed: 32))
    let bias = Tensor(shape: g.biasShape, values: testValues(g.outChannels, seed: 33))
    let dy = Tensor(shape: g.yShape, values: testValues(g.yShape.reduce(1, *), seed: 34))
    let xUp = upsampled(x.array, g.xShape)
    let tol: Float = 1e-4 * Float(g.inChannels / g.groups * 27).squareRoot()

    let y = Tensor(shape: g.yShape)
    let saved = try conv.forward(x: x, w: w, bias: bias, y: y)
    assertClose(y.array, ref.forward(x: xUp, w: w.array, bias: bias.array), rtol: 1e-4, atol: tol, "forward \(g)")

    let expectedDx = summedDown(ref.backwardData(dy: dy.array, w: w.array), g.xShape)
    let expectedW = ref.backwardWeights(x: xUp, dy: dy.array)
    let dx = Tensor(shape: g.xShape), dw = Tensor(shape: g.weightShape), dbias = Tensor(shape: g.biasShape)
    try conv.backwardData(dy: dy, w: w, dx: dx)
    assertClose(dx.array, expectedDx, rtol: 1e-4, atol: 8 * tol, "backward-data \(g)")
    dx.fill(7)
    try conv.backward(saved, dy: dy, w: w, dx: dx, dw: dw, dbias: dbias)
    assertClose(dx.array, expectedDx, rtol: 1e-4, atol: 8 * tol, "backward's dx \(g)")
    assertClose(dw.array, expectedW.dw, rtol: 1e-4, atol: 8 * tol, "backward's dw \(g)")
    assertClose(dbias.array, expectedW.dbias, rtol: 1e-4, atol: 8 * tol, "backward's dbias \(g)")
    // Backward-weights alone, after x changed: the saved copy is forward's x.
    x.fill(-3)
    dw.fill(0)
    try conv.backwardWeights(saved, dy: dy, dw: dw, dbias: nil)
    assertClose(dw.array, expectedW.dw, rtol: 1e-4, atol: 8 * tol, "backward-weights alone \(g)")
}

@Test func upsamplingGeometriesAreChecked() {
    // Upsampling takes a 3x3x3 kernel, stride 1 and same padding only, and never the native kernels.
    for bad in [Conv3DGeometry(batch: 1, inChannels: 2, outChannels: 2, size: 4, k: 3, stride: 2),
                Conv3DGeometry(batch: 1, inChannels: 2, outChannels: 2, size: 4, k: 1),
                Conv3DGeometry(batch: 1, inChannels: 2, outChannels: 2, size: 4, k: 3, padding: .valid)] {
        var g = bad
        g.upsample = 2
        #expect(throws: GeometryError.self) { try g.validate() }
    }
    var g = Conv3DGeometry(batch: 1, inChannels: 2, outChannels: 2, size: 4, k: 3)
    g.upsample = 3
    #expect(throws: GeometryError.self) { try g.validate() }
    g.upsample = 2
    #expect(g.outputSize == [8, 8, 8] && "\(g)".contains("upsample 2"))
    #expect(!Conv3DPlan.nativeSupports(g) && !g.isTransposable)
    #expect(throws: GeometryError.self) { try Conv3D(g, plan: .native(.portable)) }
}
