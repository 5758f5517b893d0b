// UpsamplingConv3D: a 3x3x3 convolution of the nearest-upsampled (x2) input, run as a transposed stride-2 convolution.
import Foundation

/// y = conv3x3(upsample2(x)) + bias for a geometry with `upsample` 2, without the upsampled tensor.
///
/// Nearest upsampling repeats each voxel 2x2x2, so along one axis output i = 2m + p reads
/// upsampled voxels i-1, i, i+1, which are low-resolution voxels m-1, m, m (p = 0) or m, m, m+1
/// (p = 1). Per axis that is a 4-tap kernel on the low-resolution grid with stride 2:
///
///     u[0] = w[2],  u[1] = w[1] + w[2],  u[2] = w[0] + w[1],  u[3] = w[0]
///
/// and y = G^T(x; U): the backward-data (transposed convolution) of G, a convolution with 4-tap
/// kernels, stride 2 and padding 1 from the upsampled grid (Cout channels) to the input grid (Cin
/// channels), with U[ci, co, t] = sum over k of T(t, k) w[co, ci, k] on each axis (T above, 4x3).
/// So: forward = G's backward-data; dx = G's forward on dy; dU = G's backward-weights with dy as
/// its input and x as its output gradient, then dw = T^T dU; dbias = the sum of dy per channel.
/// Each pass does 8 multiply-adds per output voxel and channel pair instead of 27.
///
/// Shapes: x (N, Cin, D, H, W), w (Cout, Cin/groups, 3, 3, 3), bias (Cout), y (N, Cout, 2D, 2H, 2W);
/// grouped (the per-example form) as in `Conv3D`.
final class UpsamplingConv3D {
    let geometry: Conv3DGeometry
    /// G: (N, Cout, 2D, 2H, 2W) -> (N, Cin, D, H, W), 4-tap kernels, stride 2, same padding.
    let inner: Conv3D
    /// U (Cin, Cout/groups, 4, 4, 4) = (groups, Cin/groups, Cout/groups, 4, 4, 4) and its gradient.
    private let u: Tensor
    private let du: Tensor

    /// `layout`: where G runs on oneDNN (`Conv3DPlan.choose` decides it for the upsampling geometry).
    init(_ geometry: Conv3DGeometry, layout: Conv3DPlan.Layout) throws {
        precondition(geometry.upsample == 2, "UpsamplingConv3D: \(geometry) does not upsample")
        self.geometry = geometry
        let g = geometry
        let t = Conv3DGeometry(batch: g.batch, inChannels: g.outChannels, outChannels: g.inChannels,
                               inputSize: g.outputSize, kernel: [4, 4, 4], stride: [2, 2, 2], padding: .same, groups: g.groups)
        precondition(t.outputSize == g.inputSize, "UpsamplingConv3D: \(t) does not map back to \(g.inputSize)")
        inner = try Conv3D(t, plan: .onednn(.direct, layout: layout, reason: "upsampling: the transposed stride-2 convolution"))
        u = Tensor(shape: t.weightShape)
        du = Tensor(shape: t.weightShape)
    }

    /// U from w, one axis at a time (`T` above): U[grp, ci, co, a, b, c] = sum over the taps
    /// (ka, kb, kc) of w[grp, co, ci] that T sends to (a, b, c).
    private func deriveKernel(_ w: Tensor) {
        let g = geometry
        let (groups, co, ci) = (g.groups, g.outChannels / g.groups, g.inChannels / g.groups)
        w.withUnsafeValues { wv in
            u.withUnsafeMutableValues { uv in
                var t1 = [Float](repeating: 0, count: 36), t2 = [Float](repeating: 0, count: 48)   // (3, 3, 4), (3, 4, 4)
                for grp in 0..<groups {
                    for o in 0..<co {
                        for i in 0..<ci {
                            let from = ((grp * co + o) * ci + i) * 27, to = ((grp * ci + i) * co + o) * 64
                            for r in 0..<9 { Self.spread(wv, from + 3 * r, 1, into: &t1, 4 * r, 1) }              // along W
                            for a in 0..<3 { for c in 0..<4 { Self.spread(t1, 12 * a + c, 4, into: &t2, 16 * a + c, 4) } }   // along H
                            for r in 0..<16 {                                                              // along D
                                let (x0, x1, x2) = (t2[r], t2[16 + r], t2[32 + r])
                                uv[to + r] = x2; uv[to + 16 + r] = x1 + x2; uv[to + 32 + r] = x0 + x1; uv[to + 48 + r] = x0
                            }
                        }
                    }
                }
            }
        }
    }

    /// T along one axis: (x0, x1, x2) at `from`, `from + step`, ... -> (x2, x1 + x2, x0 + x1, x0) at `to`, `to + toStep`, ...
    @inline(__always)
    private static func spread<S: Collection>(_ src: S, _ from: Int, _ step: Int, into dst: inout [Float], _ to: Int, _ toStep: Int)
    where S.Element == Float, S.Index == Int {
        let (x0, x1, x2) = (src[from], src[from + step], src[from + 2 * step])
        dst[to] = x2; dst[to + toStep] = x1 + x2; dst[to + 2 * toStep] = x0 + x1; dst[to + 3 * toStep] = x0
    }

    /// T^T along one axis: (t0, t1, t2, t3) -> (t2 + t3, t1 + t2, t0 + t1).
    @inline(__always)
    private static func gather<S: Collection>(_ src: S, _ from: Int, _ step: Int, into dst: inout [Float], _ to: Int, _ toStep: Int)
    where S.Element == Float, S.Index == Int {
        let (t0, t1, t2, t3) = (src[from], src[from + step], src[from + 2 * step], src[from + 3 * step])
        dst[to] = t2 + t3; dst[to + toStep] = t1 + t2; dst[to + 2 * toStep] = t0 + t1
    }

    /// dw = T^T dU, one axis at a time: dw[grp, co, ci, ka, kb, kc] = the sum of dU[grp, ci, co] over
    /// the positions (a, b, c) T sends (ka, kb, kc) to.
    private func foldKernelGradient(into dw: Tensor) {
        let g = geometry
        let (groups, co, ci) = (g.groups, g.outChannels / g.groups, g.inChannels / g.groups)
        du.withUnsafeValues { dv in
            dw.withUnsafeMutableValues { wv in
                var t1 = [Float](repeating: 0, count: 48), t2 = [Float](repeating: 0, count: 36), t3 = [Float](repeating: 0, count: 27)
                for grp in 0..<groups {
                    for o in 0..<co {
                        for i in 0..<ci {
                            let from = ((grp * ci + i) * co + o) * 64, to = ((grp * co + o) * ci + i) * 27
                            for r in 0..<16 { Self.gather(dv, from + 4 * r, 1, into: &t1, 3 * r, 1) }              // along W: (4, 4, 3)
                            for a in 0..<4 { for c in 0..<3 { Self.gather(t1, 12 * a + c, 3, into: &t2, 9 * a + c, 3) } }   // along H: (4, 3, 3)
                            for r in 0..<9 { Self.gather(t2, r, 9, into: &t3, r, 9) }                               // along D: (3, 3, 3)
                            for k in 0..<27 { wv[to + k] = t3[k] }
                        }
                    }
                }
            }
        }
    }

    /// y (N, Cout, 2D, 2H, 2W) = conv3x3(upsample2(x)) + bias, overwritten.
    func forward(x: Tensor, w: Tensor, bias: Tensor?, y: Tensor) throws {
        deriveKernel(w)
        try inner.backwardData(dy: x, w: u, dx: y)
        if let bias { Self.addBias(bias, to: y, channels: geometry.outChannels) }
    }

    /// dx (N, Cin, D, H, W), overwritten, from dy (N, Cout, 2D, 2H, 2W) and w.
    func backwardData(dy: Tensor, w: Tensor, dx: Tensor) throws {
        deriveKernel(w)
        _ = try Conv3D.$inputSaving.withValue(.none) { try inner.forward(x: dy, w: u, bias: nil, y: dx) }
    }

    /// dw, dbias (nil: none) from x (plain, as forward read it) and dy; with dx (and w) backward-data too.
    func backward(x: Tensor, dy: Tensor, w: Tensor?, dx: Tensor?, dw: Tensor, dbias: Tensor?) throws {
        let savedDy: Conv3DSaved
        if let dx, let w {
            deriveKernel(w)
            savedDy = try Conv3D.$inputSaving.withValue(.copy) { try inner.forward(x: dy, w: u, bias: nil, y: dx) }
        } else {
            savedDy = try inner.saving(x: dy)
        }
        try inner.backwardWeights(savedDy, dy: x, dw: du, dbias: nil)
        foldKernelGradient(into: dw)
        if let dbias { NativeConv3D.biasGradient(dy: dy, batch: geometry.batch, channels: geometry.outChannels, into: dbias) }
    }

    /// y[n, c, ...] += bias[c] on plain (N, C, ...) (or its per-example view).
    private static func addBias(_ bias: Tensor, to y: Tensor, channels: Int) {
        let plane = y.count / (y.shape[0] * y.shape[1]), planes = y.count / plane
        bias.withUnsafeValues { b in
            y.withUnsafeMutableValues { v in
                Parallel.ranges(planes) { begin, end in
                    for p in begin..<end {
                        let add = b[p % channels]
                        for j in p * plane..<(p + 1) * plane { v[j] += add }
                    }
                }
            }
        }
    }
}
