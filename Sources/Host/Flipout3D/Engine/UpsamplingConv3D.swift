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

    init(_ geometry: Conv3DGeometry) throws {
        precondition(geometry.upsample == 2, "UpsamplingConv3D: \(geometry) does not upsample")
        self.geometry = geometry
        let g = geometry
        let t = Conv3DGeometry(batch: g.batch, inChannels: g.outChannels, outChannels: g.inChannels,
                               inputSize: g.outputSize, kernel: [4, 4, 4], stride: [2, 2, 2], padding: .same, groups: g.groups)
        precondition(t.outputSize == g.inputSize, "UpsamplingConv3D: \(t) does not map back to \(g.inputSize)")
        inner = try Conv3D(t, plan: .onednn(.direct, reason: "upsampling: the transposed stride-2 convolution"))
        u = Tensor(shape: t.weightShape)
        du = Tensor(shape: t.weightShape)
    }

    /// Per axis, the taps of w each 4-tap position sums (`T` above).
    private static let taps: [[Int]] = [[2], [1, 2], [0, 1], [0]]

    /// U from w: U[grp, ci, co, a, b, c] = sum of w[grp, co, ci, ka, kb, kc] over ka in taps[a], kb in taps[b], kc in taps[c].
    private func deriveKernel(_ w: Tensor) {
        let g = geometry
        let (groups, co, ci) = (g.groups, g.outChannels / g.groups, g.inChannels / g.groups)
        w.withUnsafeValues { wv in
            u.withUnsafeMutableValues { uv in
                for grp in 0..<groups {
                    for o in 0..<co {
                        for i in 0..<ci {
                            let from = ((grp * co + o) * ci + i) * 27, to = ((grp * ci + i) * co + o) * 64
                            for a in 0..<4 {
                                for b in 0..<4 {
                                    for c in 0..<4 {
                                        var sum: Float = 0
                                        for ka in Self.taps[a] { for kb in Self.taps[b] { for kc in Self.taps[c] { sum += wv[from + (ka * 3 + kb) * 3 + kc] } } }
                                        uv[to + (a * 4 + b) * 4 + c] = sum
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// dw = T^T dU: dw[grp, co, ci, ka, kb, kc] = sum of dU[grp, ci, co, a, b, c] over every (a, b, c) whose taps hold (ka, kb, kc).
    private func foldKernelGradient(into dw: Tensor) {
        let g = geometry
        let (groups, co, ci) = (g.groups, g.outChannels / g.groups, g.inChannels / g.groups)
        let positions = (0..<3).map { k in (0..<4).filter { Self.taps[$0].contains(k) } }   // k -> the 4-tap positions reading it
        du.withUnsafeValues { dv in
            dw.withUnsafeMutableValues { wv in
                for grp in 0..<groups {
                    for o in 0..<co {
                        for i in 0..<ci {
                            let from = ((grp * ci + i) * co + o) * 64, to = ((grp * co + o) * ci + i) * 27
                            for ka in 0..<3 {
                                for kb in 0..<3 {
                                    for kc in 0..<3 {
                                        var sum: Float = 0
                                        for a in positions[ka] { for b in positions[kb] { for c in positions[kc] { sum += dv[from + (a * 4 + b) * 4 + c] } } }
                                        wv[to + (ka * 3 + kb) * 3 + kc] = sum
                                    }
                                }
                            }
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
        if let dbias { Self.sumPerChannel(dy, into: dbias, channels: geometry.outChannels) }
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

    /// dbias[c] = sum of dy[n, c, ...] over examples and voxels (Double per plane, planes in order).
    private static func sumPerChannel(_ dy: Tensor, into dbias: Tensor, channels: Int) {
        let plane = dy.count / (dy.shape[0] * dy.shape[1]), planes = dy.count / plane
        var sums = [Double](repeating: 0, count: planes)
        dy.withUnsafeValues { v in
            sums.withUnsafeMutableBufferPointer { s in
                let out = s
                Parallel.ranges(planes) { begin, end in
                    for p in begin..<end {
                        var acc: Double = 0
                        for j in p * plane..<(p + 1) * plane { acc += Double(v[j]) }
                        out[p] = acc
                    }
                }
            }
        }
        var perChannel = [Double](repeating: 0, count: channels)
        for p in 0..<planes { perChannel[p % channels] += sums[p] }
        dbias.withUnsafeMutableValues { b in for c in 0..<channels { b[c] = Float(perChannel[c]) } }
    }
}
