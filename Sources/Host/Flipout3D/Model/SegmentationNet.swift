// The 3D segmentation network: Flipout (or deterministic) convolutions, ReLU, one down/up level, skip.
import Foundation

/// Per-voxel logits for binary segmentation (sigmoid output). Layers are built from plugins found
/// in a `PluginRegistry`; layer i draws its randomness from sub-streams keyed by i.
public final class SegmentationNet {
    public let config: ModelConfig
    public let layers: [ConvLayer]
    private let relus: [ReLU]
    private var lastInputShape: [Int] = []

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
                let normal = custom ? nil : try registry.family("org.flipout3d.normal")
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
        relus = (0..<built.count - 1).map { _ in ReLU() }
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

    /// x (N, 1, D, H, W) -> logits (N, 1, D, H, W)
    public func forward(_ x: Tensor, _ ctx: StepContext) throws -> Tensor {
        try checkInput(x.shape)
        lastInputShape = x.shape
        switch config.architecture {
        case .stack:
            var h = x
            for (i, layer) in layers.enumerated() {
                h = try layer.forward(h, ctx)
                if i < relus.count { h = relus[i].forward(h) }
            }
            return h
        case .encoderDecoder:
            let a0 = relus[0].forward(try layers[0].forward(x, ctx))          // (N, w, D, H, W)
            let a1 = relus[1].forward(try layers[1].forward(a0, ctx))         // (N, 2w, D/2, H/2, W/2)
            let a2 = relus[2].forward(try layers[2].forward(a1, ctx))         // (N, 2w, D/2, H/2, W/2)
            let u = Upsample2x.forward(a2)                                     // (N, 2w, D, H, W)
            let a3 = relus[3].forward(try layers[3].forward(u, ctx))          // (N, w, D, H, W)
            for i in 0..<a3.count { a3.data[i] += a0.data[i] }                 // skip connection
            return try layers[4].forward(a3, ctx)                              // (N, 1, D, H, W)
        }
    }

    /// Given dL/dlogits, ADD every layer's gradients (call `finishBackward` after KL).
    public func backward(_ dLogits: Tensor) throws {
        switch config.architecture {
        case .stack:
            var g = dLogits
            for i in stride(from: layers.count - 1, through: 0, by: -1) {
                if i < relus.count { g = relus[i].backward(g) }
                g = try layers[i].backward(g)
            }
        case .encoderDecoder:
            let dA3 = try layers[4].backward(dLogits)
            let dU = try layers[3].backward(relus[3].backward(dA3))
            let dA2 = Upsample2x.backward(dU)
            let dA1 = try layers[2].backward(relus[2].backward(dA2))
            let dA0 = try layers[1].backward(relus[1].backward(dA1))
            for i in 0..<dA0.count { dA0.data[i] += dA3.data[i] }            // skip connection
            _ = try layers[0].backward(relus[0].backward(dA0))
        }
    }

    /// Sum of the layers' KL(q || p); adds scale * dKL into their gradients.
    public func kl(gradientScale: Float, _ ctx: StepContext) throws -> Double {
        try layers.reduce(0.0) { $0 + (try $1.kl(gradientScale: gradientScale, ctx)) }
    }

    public func finishBackward() { layers.forEach { $0.finishBackward() } }
    public func zeroGradients() { layers.forEach { $0.zeroGradients() } }
    public var trainable: [NamedParameter] { layers.flatMap(\.trainable) }
    public var flipoutLayers: [FlipoutConv3D] { layers.compactMap { $0 as? FlipoutConv3D } }

    /// Refresh constrained values after the optimizer changed parameters.
    public func parametersChanged() { flipoutLayers.forEach { $0.weights.refresh() } }
}
