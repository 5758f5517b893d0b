// Instance normalisation (Ulyanov et al. 2016; nnU-Net's default for small batches) with a learned per-channel affine, forward and backward side by side.
import Foundation

/// What `InstanceNorm.backward` needs from its forward pass.
public struct InstanceNormSaved {
    /// (N, C, D, H, W): x̂ = (x − μ_nc) · rstd_nc.
    let normalized: Tensor
    /// (N·C): 1 / sqrt(σ²_nc + ε).
    let rstd: [Float]
}

/// y_nc = γ_c · (x_nc − μ_nc) / sqrt(σ²_nc + ε) + β_c, with μ and σ² (biased) over the spatial voxels
/// of each (example, channel), as PyTorch's `InstanceNorm3d(affine=True)`, ε = 1e-5.
/// Statistics are per example, so training and inference behave the same and batch size 1 works.
public final class InstanceNorm {
    public let name: String
    public let channels: Int
    public let epsilon: Float = 1e-5
    /// (C) scale γ (initialised to 1) and shift β (initialised to 0), with their gradients.
    public let scale: Tensor, shift: Tensor
    public let scaleGradient: Tensor, shiftGradient: Tensor

    public init(name: String, channels: Int) {
        self.name = name; self.channels = channels
        scale = Tensor(shape: [channels]); scale.fill(1)
        shift = Tensor(shape: [channels])
        scaleGradient = Tensor(shape: [channels]); shiftGradient = Tensor(shape: [channels])
    }

    public var trainable: [NamedParameter] {
        [NamedParameter(name: "\(name).scale", value: scale, gradient: scaleGradient),
         NamedParameter(name: "\(name).shift", value: shift, gradient: shiftGradient)]
    }

    public func zeroGradients() { scaleGradient.zero(); shiftGradient.zero() }

    /// x (N, C, D, H, W) -> y (N, C, D, H, W)
    public func forward(_ x: Tensor) -> (y: Tensor, saved: InstanceNormSaved) {
        precondition(x.rank == 5 && x.shape[1] == channels, "\(name): input \(x.shape), expected (N, \(channels), D, H, W)")
        let v = x.shape[2...].reduce(1, *)
        let y = Tensor(uninitializedShape: x.shape), xh = Tensor(uninitializedShape: x.shape)
        var rstd = [Float](repeating: 0, count: x.shape[0] * channels)
        x.withUnsafeValues { xs in y.withUnsafeMutableValues { ys in xh.withUnsafeMutableValues { hs in
            for nc in 0..<x.shape[0] * channels {
                let c = nc % channels
                let src = xs.baseAddress! + nc * v, dst = ys.baseAddress! + nc * v, hat = hs.baseAddress! + nc * v
                var s = 0.0
                for i in 0..<v { s += Double(src[i]) }
                let mean = s / Double(v)
                var s2 = 0.0
                for i in 0..<v { let d = Double(src[i]) - mean; s2 += d * d }
                let r = Float(1 / (s2 / Double(v) + Double(epsilon)).squareRoot())
                rstd[nc] = r
                let m = Float(mean), g = scale[c], b = shift[c]
                for i in 0..<v { let h = (src[i] - m) * r; hat[i] = h; dst[i] = g * h + b }
            }
        } } }
        return (y, InstanceNormSaved(normalized: xh, rstd: rstd))
    }

    /// dy (N, C, D, H, W) -> dx (N, C, D, H, W); ADDS dγ = Σ dy·x̂ and dβ = Σ dy.
    /// dx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ · x̂)) with ĝ = γ · dy.
    public func backward(_ dy: Tensor, _ saved: InstanceNormSaved) -> Tensor {
        dy.checkShape(saved.normalized.shape, "\(name).backward dy")
        let v = dy.shape[2...].reduce(1, *)
        let dx = Tensor(uninitializedShape: dy.shape)
        dy.withUnsafeValues { gs in saved.normalized.withUnsafeValues { hs in dx.withUnsafeMutableValues { ds in
            for nc in 0..<dy.shape[0] * channels {
                let c = nc % channels
                let g = gs.baseAddress! + nc * v, hat = hs.baseAddress! + nc * v, out = ds.baseAddress! + nc * v
                var sumG = 0.0, sumGH = 0.0
                for i in 0..<v { sumG += Double(g[i]); sumGH += Double(g[i]) * Double(hat[i]) }
                scaleGradient[c] += Float(sumGH)
                shiftGradient[c] += Float(sumG)
                let gamma = scale[c], r = saved.rstd[nc]
                let meanG = Float(sumG / Double(v)) * gamma, meanGH = Float(sumGH / Double(v)) * gamma
                for i in 0..<v { out[i] = r * (gamma * g[i] - meanG - hat[i] * meanGH) }
            }
        } } }
        return dx
    }
}
