// What follows a positive-weight (Beta / Gamma) layer: a per-channel learnable scale, or a normalisation.
//
// A bank of non-negative filters only computes weighted local sums: every output channel is a
// positive blur of the input, and a ReLU after it keeps nearly everything. Two point-estimate
// per-channel operations outside the Bayesian weights give the network back contrasts:
//   scale: y = gamma_c * x + beta_c,                   gamma starts +1, -1, +1, ... (a learnable sign)
//   norm:  y = gamma_c * (x - mean_nc) / sd_nc + beta_c  (instance normalisation, gamma starts 1)
// with mean_nc and sd_nc = sqrt(var_nc + eps) over the voxels of example n, channel c. Measured
// against each other and against nothing in docs/positive-weights.md.

/// Which operation follows each positive-support layer (`ModelConfig.afterPositive`).
public enum PositiveLayerOutput: String, Codable, CaseIterable, Sendable {
    case none, scale, norm
    /// The documented recipe (what a user gets by default), measured in docs/positive-weights.md.
    public static let recipe: PositiveLayerOutput = .norm
}

/// What `ChannelAffine.backward` needs from its forward pass.
public struct ChannelAffineSaved {
    /// The input (scale) or its normalised form x_hat (norm).  (N, C, D, H, W)
    let xHat: Tensor
    /// 1 / sd per (n, c) for norm; empty for scale.  (N, C)
    let inverseSD: [Float]
}

/// y = gamma_c * f(x) + beta_c per channel, f = identity (scale) or instance normalisation (norm).
public final class ChannelAffine {
    public let name: String
    public let mode: PositiveLayerOutput
    public let channels: Int
    /// (C) each
    public let gamma: Tensor, beta: Tensor
    public let gammaGradient: Tensor, betaGradient: Tensor
    public static let epsilon: Float = 1e-5

    public init(name: String, channels: Int, mode: PositiveLayerOutput) {
        precondition(mode != .none, "ChannelAffine: mode none has no layer")
        self.name = name; self.channels = channels; self.mode = mode
        gamma = Tensor(shape: [channels]); beta = Tensor(shape: [channels])
        gammaGradient = Tensor(shape: [channels]); betaGradient = Tensor(shape: [channels])
        for c in 0..<channels { gamma[c] = mode == .scale && c % 2 == 1 ? -1 : 1 }
    }

    public var trainable: [NamedParameter] {
        [NamedParameter(name: "\(name).gamma", value: gamma, gradient: gammaGradient),
         NamedParameter(name: "\(name).beta", value: beta, gradient: betaGradient)]
    }

    public func zeroGradients() { gammaGradient.zero(); betaGradient.zero() }

    /// x (N, C, D, H, W) -> y (N, C, D, H, W)
    public func forward(_ x: Tensor) -> (y: Tensor, saved: ChannelAffineSaved) {
        precondition(x.shape.count == 5 && x.shape[1] == channels, "\(name): input \(x.shape), expected (N, \(channels), D, H, W)")
        let per = x.shape[2...].reduce(1, *), nc = x.shape[0] * channels
        let y = Tensor(uninitializedShape: x.shape)
        var xHat = x, inv: [Float] = []
        if mode == .norm {
            xHat = Tensor(uninitializedShape: x.shape)
            inv = [Float](repeating: 0, count: nc)
            for k in 0..<nc {
                let src = x.data + k * per, dst = xHat.data + k * per
                var s = 0.0, s2 = 0.0
                for i in 0..<per { let v = Double(src[i]); s += v; s2 += v * v }
                let mean = s / Double(per), variance = max(s2 / Double(per) - mean * mean, 0)
                inv[k] = Float(1 / (variance + Double(Self.epsilon)).squareRoot())
                for i in 0..<per { dst[i] = (src[i] - Float(mean)) * inv[k] }
            }
        }
        for k in 0..<nc {
            let c = k % channels, g = gamma[c], b = beta[c], src = xHat.data + k * per, dst = y.data + k * per
            for i in 0..<per { dst[i] = g * src[i] + b }
        }
        return (y, ChannelAffineSaved(xHat: xHat, inverseSD: inv))
    }

    /// dy (N, C, D, H, W) -> dx; ADDS dL/dgamma and dL/dbeta. For norm, with g = gamma dy:
    /// dx = inv_sd * (g - mean(g) - x_hat * mean(g * x_hat)) over the voxels of (n, c).
    public func backward(_ dy: Tensor, _ saved: ChannelAffineSaved) -> Tensor {
        dy.checkShape(saved.xHat.shape, "\(name).backward dy")
        let per = dy.shape[2...].reduce(1, *), nc = dy.shape[0] * channels
        let dx = Tensor(uninitializedShape: dy.shape)
        for k in 0..<nc {
            let c = k % channels, g = gamma[c], d = dy.data + k * per, h = saved.xHat.data + k * per, out = dx.data + k * per
            var sd = 0.0, sdh = 0.0
            for i in 0..<per { sd += Double(d[i]); sdh += Double(d[i]) * Double(h[i]) }
            gammaGradient[c] += Float(sdh); betaGradient[c] += Float(sd)
            if mode == .scale {
                for i in 0..<per { out[i] = g * d[i] }
            } else {
                let md = Float(sd / Double(per)), mdh = Float(sdh / Double(per)), s = g * saved.inverseSD[k]
                for i in 0..<per { out[i] = s * (d[i] - md - h[i] * mdh) }
            }
        }
        return dx
    }
}
