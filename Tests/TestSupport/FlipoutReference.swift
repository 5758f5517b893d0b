// Independent references for the Flipout layer: the two-convolution formula and a Double forward.
import Foundation
import Flipout3D

/// TFP's two-convolution Flipout, y = conv(x, Wc) + conv(x * s_in, dW) * s_out + bias, run on the
/// engine's ordinary (ungrouped) convolution. Kept as the reference the one-convolution form must match.
public func twoConvolutionFlipout(x: Tensor, center: Tensor, sample: Tensor, signsIn: Tensor, signsOut: Tensor,
                                  bias: Tensor, geometry g: Conv3DGeometry) throws -> Tensor {
    let conv = try Conv3D(g)
    let y = Tensor(shape: g.yShape), y2 = Tensor(shape: g.yShape)
    _ = try conv.forward(x: x, w: center, bias: bias, y: y)
    let delta = Tensor(shape: center.shape)
    for i in 0..<delta.count { delta[i] = sample[i] - center[i] }
    let xs = x.copy()
    let n = g.batch, cin = g.inChannels, cout = g.outChannels
    let vin = g.inputVoxels, vout = g.outputVoxels
    for b in 0..<n { for c in 0..<cin { let s = signsIn[b * cin + c]; for j in 0..<vin { xs.data[(b * cin + c) * vin + j] *= s } } }
    _ = try conv.forward(x: xs, w: delta, bias: nil, y: y2)
    for b in 0..<n { for o in 0..<cout { let s = signsOut[b * cout + o]; for j in 0..<vout { y.data[(b * cout + o) * vout + j] += s * y2.data[(b * cout + o) * vout + j] } } }
    return y
}

public func softplusD(_ u: Double) -> Double { u > 30 ? u : log1p(exp(u)) }
