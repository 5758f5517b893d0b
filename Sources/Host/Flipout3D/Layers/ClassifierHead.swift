// A volume classifier head: global average pooling, then a Flipout 1x1x1 convolution to class logits.

/// What the head's backward needs from its forward pass.
public struct ClassifierHeadSaved {
    /// (N, C, D, H, W): the pooled input's shape.
    let inputShape: [Int]
    /// The 1x1x1 convolution's saved value (its weight draw is `conv.draw`).
    public let conv: ConvSaved
}

/// logits (N, classes) = FlipoutConv3D_1x1x1(mean over voxels of x), x (N, C, D, H, W). The
/// convolution brings its own plugin posterior, prior, estimator and KL.
public final class ClassifierHead {
    public let conv: FlipoutConv3D

    public init(name: String, index: Int, inChannels: Int, classes: Int, estimator: Estimator = .auto,
                posterior: Distribution, prior: Distribution, priorValues: [String: Float] = [:], seed: UInt64) throws {
        conv = try FlipoutConv3D(name: name, index: index, inChannels: inChannels, outChannels: classes, kernel: 1,
                                 estimator: estimator, posterior: posterior, prior: prior, priorValues: priorValues, seed: seed)
    }

    /// x (N, C, D, H, W) -> logits (N, classes), and what backward needs.
    public func forward(_ x: Tensor, _ ctx: StepContext) throws -> (logits: Tensor, saved: ClassifierHeadSaved) {
        precondition(x.rank == 5, "\(conv.name): input shape \(x.shape), expected (N, C, D, H, W)")
        let (n, c) = (x.shape[0], x.shape[1]), voxels = x.count / max(n * c, 1)
        let pooled = Tensor(shape: [n, c, 1, 1, 1])                          // (N, C, 1, 1, 1)
        for k in 0..<n * c {
            var s: Float = 0
            for j in 0..<voxels { s += x.data[k * voxels + j] }
            pooled.data[k] = s / Float(voxels)
        }
        let (y, saved) = try conv.forward(pooled, ctx)                       // (N, classes, 1, 1, 1)
        return (y.reshaped([n, conv.outChannels]), ClassifierHeadSaved(inputShape: x.shape, conv: saved))
    }

    /// dLogits (N, classes) -> dx (N, C, D, H, W); adds the head's parameter gradients.
    public func backward(_ dLogits: Tensor, _ saved: ClassifierHeadSaved) throws -> Tensor {
        let (n, c) = (saved.inputShape[0], saved.inputShape[1])
        dLogits.checkShape([n, conv.outChannels], "\(conv.name).backward dLogits")
        let dPooled = try conv.backward(dLogits.reshaped([n, conv.outChannels, 1, 1, 1]), saved.conv)
        let dx = Tensor(uninitializedShape: saved.inputShape), voxels = dx.count / max(n * c, 1)
        for k in 0..<n * c {
            let g = dPooled.data[k] / Float(voxels)
            for j in 0..<voxels { dx.data[k * voxels + j] = g }
        }
        return dx
    }
}
