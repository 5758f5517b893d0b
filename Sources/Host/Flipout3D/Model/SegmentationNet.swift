// The 3D segmentation network: Flipout (or deterministic) convolutions, ReLU, one down/up level, skip.
import Foundation

/// What the network's backward needs from its forward pass: each layer's saved value.
public struct SegmentationNetSaved {
    let convs: [ConvSaved]
    let relus: [ReLUSaved]
    /// The encoder-decoder's upsampling (nil for the stack).
    let upsample: Upsample2xSaved?
    /// Per layer: what its after-positive operation saved (nil where it has none).
    let afterPositive: [ChannelAffineSaved?]
}

/// Per-voxel logits for binary segmentation (sigmoid output). Layers are built from plugins found
/// in a `PluginRegistry`; layer i draws its randomness from sub-streams keyed by i.
public final class SegmentationNet {
    public let config: ModelConfig
    public let layers: [ConvLayer]
    /// Per layer: the scale or normalisation after a positive-weight layer (docs/positive-weights.md), or nil.
    public let afterPositive: [ChannelAffine?]

    public init(_ config: ModelConfig, registry: PluginRegistry, seed: UInt64, log: (String) -> Void = { _ in }) throws {
        self.config = config
        let w = config.width
        let specs: [(String, Int, Int, Int, Int)]   // name, in, out, kernel, stride
        switch config.architecture {
        case .encoderDecoder:
            specs = [("enc0", 1, w, 3, 1), ("down1", w, 2 * w, 3, 2), ("mid2", 2 * w, 2 * w, 3, 1), ("dec3", 2 * w, w, 3, 1), ("head4", w, 1, 3, 1)]
        case .stack:
            specs = [("conv0", 1, w, 3, 1), ("conv1", w, w, 3, 1), ("conv2", w, 1, 3, 1)]
        }
        var built: [ConvLayer] = []
        if config.bayesian {
            let postFamily = try registry.family(config.posterior)
            let priorFamily = try registry.family(config.prior)
            guard let estimator = Estimator(rawValue: config.estimator) else {
                throw LayerError.invalidConfiguration("unknown estimator \"\(config.estimator)\"; use one of \(Estimator.allCases.map(\.rawValue).joined(separator: ", ")).")
            }
            let kl: KLMode = config.forceMonteCarloKL ? .monteCarlo(samples: config.klSamples) : .automatic(samples: config.klSamples)
            for (i, s) in specs.enumerated() {
                let custom = i == 0 || config.customLayers == .all
                let normal = custom ? nil : try registry.gaussian()
                let layer = try FlipoutConv3D(
                    name: s.0, index: i, inChannels: s.1, outChannels: s.2, kernel: s.3, stride: s.4, estimator: estimator,
                    posterior: try normal?.instantiate() ?? postFamily.instantiate(config.posteriorHyperparameters),
                    prior: try normal?.instantiate() ?? priorFamily.instantiate(config.priorHyperparameters),
                    priorValues: custom ? config.priorParameters : [:], learnPrior: config.learnPrior, klMode: kl, seed: seed)
                built.append(layer)
                if i == 0 {
                    let klKind = layer.weights.klIsAnalytic ? "analytic" : "Monte Carlo (K=\(config.klSamples))"
                    log("layers: posterior \(postFamily.id), prior \(priorFamily.id), estimator \(layer.estimator)" +
                        (estimator == .auto ? " (auto: posterior is \(postFamily.isSymmetric ? "symmetric" : "not symmetric"))" : "") +
                        ", KL \(klKind)" + (config.customLayers == .first ? " (first layer; the others Normal/Normal)" : ""))
                }
            }
        } else {
            for (i, s) in specs.enumerated() {
                built.append(DeterministicConv3D(name: s.0, index: i, inChannels: s.1, outChannels: s.2, kernel: s.3, stride: s.4, seed: seed))
            }
        }
        built[0].needsInputGradient = false
        layers = built
        let after = config.afterPositive ?? PositiveLayerOutput.recipe
        afterPositive = built.enumerated().map { i, l in
            guard after != .none, i < built.count - 1, let f = l as? FlipoutConv3D,
                  f.weights.posterior.family.capabilities.contains(.positiveSupport) else { return nil }
            return ChannelAffine(name: "\(l.name).after_positive", channels: l.outChannels, mode: after)
        }
        let named = zip(built, afterPositive).compactMap { $1 == nil ? nil : $0.name }
        if !named.isEmpty { log("after the positive-weight layer(s) \(named.joined(separator: ", ")): \(after.rawValue) (--after-positive)") }
    }

    /// Throws if the network cannot take volumes of this spatial size (D, H, W).
    public func checkInput(_ shape: [Int]) throws {
        guard shape.count == 5, shape[1] == 1 else {
            throw LayerError.invalidConfiguration("the model takes (N, 1, D, H, W) volumes; got shape \(shape).")
        }
        let m = config.sizeMultiple
        guard shape[2...].allSatisfy({ $0 >= 4 && $0 % m == 0 }) else {
            throw LayerError.invalidConfiguration("the \(config.architecture.rawValue) network needs every spatial size to be at least 4 and a multiple of \(m); got \(Array(shape[2...])). Crop or pad the volume.")
        }
    }

    /// x (N, 1, D, H, W) -> logits (N, 1, D, H, W), and what backward needs.
    public func forward(_ x: Tensor, _ ctx: StepContext) throws -> (logits: Tensor, saved: SegmentationNetSaved) {
        try checkInput(x.shape)
        var convs: [ConvSaved] = [], relus: [ReLUSaved] = [], after: [ChannelAffineSaved?] = []
        /// Layer i, its after-positive operation if any, then, except for the last layer, ReLU.
        func block(_ i: Int, _ h: Tensor) throws -> Tensor {
            var (y, c) = try layers[i].forward(h, ctx)
            convs.append(c)
            let post = afterPositive[i].map { $0.forward(y) }
            after.append(post?.saved)
            if let post { y = post.y }
            guard i < layers.count - 1 else { return y }
            let (a, r) = ReLU.forward(y)
            relus.append(r)
            return a
        }
        switch config.architecture {
        case .stack:
            var h = x
            for i in layers.indices { h = try block(i, h) }
            return (h, SegmentationNetSaved(convs: convs, relus: relus, upsample: nil, afterPositive: after))
        case .encoderDecoder:
            let a0 = try block(0, x)                                           // (N, w, D, H, W)
            let a1 = try block(1, a0)                                          // (N, 2w, D/2, H/2, W/2)
            let a2 = try block(2, a1)                                          // (N, 2w, D/2, H/2, W/2)
            let (u, up) = Upsample2x.forward(a2)                               // (N, 2w, D, H, W)
            let a3 = try block(3, u)                                           // (N, w, D, H, W)
            for i in 0..<a3.count { a3.data[i] += a0.data[i] }                 // skip connection
            let logits = try block(4, a3)                                      // (N, 1, D, H, W)
            return (logits, SegmentationNetSaved(convs: convs, relus: relus, upsample: up, afterPositive: after))
        }
    }

    /// Given dL/dlogits and forward's saved value, ADD every layer's gradients (call
    /// `finishBackward` after KL).
    public func backward(_ dLogits: Tensor, _ saved: SegmentationNetSaved) throws {
        let c = saved.convs, r = saved.relus
        precondition(c.count == layers.count && r.count == layers.count - 1, "SegmentationNet.backward: saved value of another network")
        /// Backward of layer i and its after-positive operation: dy (N, Cout, ...) -> dx (N, Cin, ...).
        func conv(_ i: Int, _ dy: Tensor) throws -> Tensor {
            let g = afterPositive[i].map { $0.backward(dy, saved.afterPositive[i]!) } ?? dy
            return try layers[i].backward(g, c[i])
        }
        switch config.architecture {
        case .stack:
            var g = dLogits
            for i in stride(from: layers.count - 1, through: 0, by: -1) {
                if i < r.count { g = ReLU.backward(g, r[i]) }
                g = try conv(i, g)
            }
        case .encoderDecoder:
            let dA3 = try conv(4, dLogits)
            let dU = try conv(3, ReLU.backward(dA3, r[3]))
            let dA2 = Upsample2x.backward(dU, saved.upsample!)
            let dA1 = try conv(2, ReLU.backward(dA2, r[2]))
            let dA0 = try conv(1, ReLU.backward(dA1, r[1]))
            for i in 0..<dA0.count { dA0.data[i] += dA3.data[i] }            // skip connection
            _ = try conv(0, ReLU.backward(dA0, r[0]))
        }
    }

    /// Sum of the layers' KL(q || p); adds scale * dKL into their gradients.
    public func kl(gradientScale: Float, _ ctx: StepContext) throws -> Double {
        try layers.reduce(0.0) { $0 + (try $1.kl(gradientScale: gradientScale, ctx)) }
    }

    public func finishBackward() { layers.forEach { $0.finishBackward() } }
    public func zeroGradients() {
        layers.forEach { $0.zeroGradients() }
        afterPositive.forEach { $0?.zeroGradients() }
    }
    public var trainable: [NamedParameter] {
        zip(layers, afterPositive).flatMap { $0.trainable + ($1?.trainable ?? []) }
    }
    public var flipoutLayers: [FlipoutConv3D] { layers.compactMap { $0 as? FlipoutConv3D } }

    /// Refresh constrained values after the optimizer changed parameters.
    public func parametersChanged() { flipoutLayers.forEach { $0.weights.refresh() } }
}
