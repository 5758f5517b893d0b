// ReferenceConv3D: a direct-loop, Double-accumulating 3D convolution used only as the tests' oracle.
import Flipout3D

/// The textbook convolution (cross-correlation, as oneDNN, PyTorch and TF define it) for a
/// `Conv3DGeometry`, on plain arrays:
/// x (N, Cin, D, H, W), w (Cout, Cin/G, kD, kH, kW), bias (Cout), y (N, Cout, oD, oH, oW).
/// Written from the definition y[n,o,p] = b[o] + sum_{c in group(o), t} w[o,c,t] x[n,c, p*s - front + t];
/// backward passes are the same sum read the other way round. Slow on purpose: no tricks.
public struct ReferenceConv3D {
    public let g: Conv3DGeometry
    public init(_ g: Conv3DGeometry) { self.g = g }

    private var cinG: Int { g.inChannels / g.groups }
    private var coutG: Int { g.outChannels / g.groups }

    /// Calls body(xIndex, wIndex, yIndex) for every (output voxel, tap) pair inside the input.
    private func forEachTap(_ body: (Int, Int, Int) -> Void) {
        let (D, H, W) = (g.inputSize[0], g.inputSize[1], g.inputSize[2])
        let o = g.outputSize
        let (kD, kH, kW) = (g.kernel[0], g.kernel[1], g.kernel[2])
        let s = g.stride, f = g.paddingFront
        for n in 0..<g.batch {
            for oc in 0..<g.outChannels {
                let grp = oc / coutG
                for od in 0..<o[0] { for oh in 0..<o[1] { for ow in 0..<o[2] {
                    let yi = (((n * g.outChannels + oc) * o[0] + od) * o[1] + oh) * o[2] + ow
                    for ci in 0..<cinG {
                        let c = grp * cinG + ci
                        for a in 0..<kD {
                            let id = od * s[0] - f[0] + a
                            if id < 0 || id >= D { continue }
                            for b in 0..<kH {
                                let ih = oh * s[1] - f[1] + b
                                if ih < 0 || ih >= H { continue }
                                for e in 0..<kW {
                                    let iw = ow * s[2] - f[2] + e
                                    if iw < 0 || iw >= W { continue }
                                    let xi = (((n * g.inChannels + c) * D + id) * H + ih) * W + iw
                                    let wi = (((oc * cinG + ci) * kD + a) * kH + b) * kW + e
                                    body(xi, wi, yi)
                                }
                            }
                        }
                    }
                }}}
            }
        }
    }

    /// y = conv(x, w) + bias.
    public func forward(x: [Float], w: [Float], bias: [Float]?) -> [Float] {
        let yCount = g.yShape.reduce(1, *)
        var acc = [Double](repeating: 0, count: yCount)
        forEachTap { xi, wi, yi in acc[yi] += Double(x[xi]) * Double(w[wi]) }
        if let bias {
            let per = g.outputVoxels
            for i in 0..<yCount { acc[i] += Double(bias[(i / per) % g.outChannels]) }
        }
        return acc.map { Float($0) }
    }

    /// y = conv(x, w) entirely in Double, for finite-difference references.
    public func forwardDouble(x: [Double], w: [Double]) -> [Double] {
        var acc = [Double](repeating: 0, count: g.yShape.reduce(1, *))
        forEachTap { xi, wi, yi in acc[yi] += x[xi] * w[wi] }
        return acc
    }

    /// dx[n,c,i] = sum over (o, tap) reaching i of w * dy.
    public func backwardData(dy: [Float], w: [Float]) -> [Float] {
        var acc = [Double](repeating: 0, count: g.xShape.reduce(1, *))
        forEachTap { xi, wi, yi in acc[xi] += Double(w[wi]) * Double(dy[yi]) }
        return acc.map { Float($0) }
    }

    /// (dw, dbias): dw[o,c,t] = sum over (n, p) of x * dy; dbias[o] = sum over (n, p) of dy.
    public func backwardWeights(x: [Float], dy: [Float]) -> (dw: [Float], dbias: [Float]) {
        var acc = [Double](repeating: 0, count: g.weightShape.reduce(1, *))
        forEachTap { xi, wi, yi in acc[wi] += Double(x[xi]) * Double(dy[yi]) }
        var db = [Double](repeating: 0, count: g.outChannels)
        let per = g.outputVoxels
        for (i, v) in dy.enumerated() { db[(i / per) % g.outChannels] += Double(v) }
        return (acc.map { Float($0) }, db.map { Float($0) })
    }
}
