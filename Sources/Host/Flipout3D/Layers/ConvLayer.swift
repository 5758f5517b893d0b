// What a network needs from a convolution layer, Bayesian or deterministic.

/// A trainable tensor and its gradient, named for checkpoints ("enc0.loc", "enc0.bias").
public struct NamedParameter {
    public let name: String
    public let value: Tensor
    public let gradient: Tensor
}

/// What a convolution layer's backward needs from its forward pass, as a value (opaque to
/// networks: they hand it back to the layer that made it).
public struct ConvSaved {
    /// The layer that made it: backward traps when handed another layer's value.
    let layer: ObjectIdentifier
    /// (N, Cin, D, H, W)
    let inputShape: [Int]
    /// The engine's own copy of x (later changes to the caller's x do not reach it); without it
    /// (a network's `MemoryPlan` recomputes the layer) the network restores it before backward.
    let input: Conv3DSaved
    /// The kernels the convolution ran with: (Cout, Cin, k...), or per-example (N, Cout, Cin, k...).
    let kernels: Tensor
    /// Bayesian layers: what the forward pass drew (nil for deterministic layers).
    public let draw: WeightDraw?

    /// The same value with the engine's value replaced (one recomputed or re-saved from x).
    func withInput(_ input: Conv3DSaved) -> ConvSaved {
        ConvSaved(layer: layer, inputShape: inputShape, input: input, kernels: kernels, draw: draw)
    }
}

/// The kernels and bias a layer's forward runs with (and, for a Bayesian layer, its draw),
/// without the convolution: for a network that runs the convolution itself on an input it never
/// makes (`UnmadeInputConvolutions`), then hands dL/d(kernels) back to `addGradients`.
public struct ConvKernels {
    /// (Cout, Cin, k...), or per example (N, Cout, Cin, k...) (Flipout's and the per-example
    /// estimator's for N > 1).
    let kernels: Tensor
    /// (Cout), or per example (N, Cout): a copy, as the forward ran with it.
    let bias: Tensor
    /// Bayesian layers: what was drawn (nil for deterministic layers).
    let draw: WeightDraw?
}

/// A convolution in a network: forward and backward side by side; backward ADDS into gradients.
public protocol ConvLayer: AnyObject {
    var name: String { get }
    var inChannels: Int { get }
    var outChannels: Int { get }
    /// (kD, kH, kW) and (sD, sH, sW)
    var kernel: [Int] { get }
    var stride: [Int] { get }
    var padding: Padding { get }
    /// 2: the layer convolves its input nearest-upsampled by 2 (a U-Net decoder's upsampling block,
    /// `Conv3DGeometry.upsample`); 1: its input itself.
    var upsample: Int { get }
    /// false for a network's first layer: backward then skips dL/dx.
    var needsInputGradient: Bool { get set }
    /// x (N, Cin, D, H, W) -> y (N, Cout, oD, oH, oW), plus what backward needs, as a value.
    func forward(_ x: Tensor, _ ctx: StepContext) throws -> (y: Tensor, saved: ConvSaved)
    /// dy (N, Cout, oD, oH, oW) -> dx (N, Cin, D, H, W); ADDS parameter gradients. Takes forward's value.
    func backward(_ dy: Tensor, _ saved: ConvSaved) throws -> Tensor
    /// The kernels and bias `forward` on `batch` examples runs with under ctx, drawn as it draws
    /// them (the same bits), without running the convolution.
    func kernels(batch: Int, _ ctx: StepContext) throws -> ConvKernels
    /// ADDS the parameter gradients of a convolution run with k, given dL/d(its kernels) dw and
    /// dL/d(its bias) db (the shapes of k's).
    func addGradients(kernels dw: Tensor, bias db: Tensor, _ k: ConvKernels) throws
    /// KL(q || p) of the layer's weights (0 for deterministic layers), adding scale * dKL.
    func kl(gradientScale: Float, _ ctx: StepContext) throws -> Double
    func finishBackward()
    func zeroGradients()
    /// Everything Adam updates.
    var trainable: [NamedParameter] { get }
}

extension ConvLayer {
    /// The convolution this layer runs on an input of `shape` (N, Cin, D, H, W); traps on a wrong rank or channel count.
    public func geometry(inputShape shape: [Int]) -> Conv3DGeometry {
        precondition(shape.count == 5 && shape[1] == inChannels, "\(name): input shape \(shape), expected (N, \(inChannels), D, H, W)")
        return Conv3DGeometry(batch: shape[0], inChannels: inChannels, outChannels: outChannels,
                              inputSize: Array(shape[2...]), kernel: kernel, stride: stride, padding: padding, upsample: upsample)
    }

    /// Traps unless `saved` came from this layer's forward and dy has the output shape for it.
    /// Returns the geometry of that forward pass.
    func checkSaved(_ saved: ConvSaved, dy: Tensor) -> Conv3DGeometry {
        precondition(saved.layer == ObjectIdentifier(self), "\(name).backward: the saved value comes from another layer's forward")
        let g = geometry(inputShape: saved.inputShape)
        dy.checkShape(g.yShape, "\(name).backward dy")
        return g
    }
}

extension FlipoutConv3D: ConvLayer {
    public var trainable: [NamedParameter] {
        // Stored values are unconstrained; names say so unless the transform is the identity.
        var out = weights.posterior.slots.enumerated().map {
            let slot = $0.element
            let suffix = slot.parameter.transform == .identity ? "" : "_unconstrained"
            return NamedParameter(name: "\(name).\(slot.name)\(suffix)", value: weights.parameters[$0.offset], gradient: weights.gradients[$0.offset])
        }
        out.append(NamedParameter(name: "\(name).bias", value: bias, gradient: biasGradient))
        if weights.learnPrior {
            out.append(NamedParameter(name: "\(name).prior_unconstrained", value: weights.priorParameters, gradient: weights.priorGradients))
        }
        return out
    }
}
