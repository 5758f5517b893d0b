// An ordinary Conv3D with point-estimate weights: the deterministic baseline network's layer.
import Foundation

public final class DeterministicConv3D: ConvLayer {
    public let name: String
    public let inChannels: Int
    public let outChannels: Int
    public let kernel: [Int]
    public let stride: [Int]
    public let padding: Padding
    public let upsample: Int
    /// (Cout, Cin, kD, kH, kW)
    public let weight: Tensor
    public let weightGradient: Tensor
    /// (Cout)
    public let bias: Tensor
    public let biasGradient: Tensor
    /// This layer's convolution engines, one per geometry.
    private let engines = Conv3DEngines()
    /// false for a network's first layer: backward then skips dL/dx (returns zeros).
    public var needsInputGradient = true

    /// He-normal initialisation from the layer's own random sub-stream.
    public init(name: String, index: Int, inChannels: Int, outChannels: Int, kernel: Int = 3, stride: Int = 1,
                padding: Padding = .same, upsample: Int = 1, seed: UInt64) {
        self.name = name
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernel = [kernel, kernel, kernel]
        self.stride = [stride, stride, stride]
        self.padding = padding
        self.upsample = upsample
        weight = Tensor(shape: [outChannels, inChannels, kernel, kernel, kernel])
        weightGradient = Tensor(shape: weight.shape)
        bias = Tensor(shape: [outChannels])
        biasGradient = Tensor(shape: [outChannels])
        var s = RandomStream(seed: seed, layer: index, step: 0, purpose: .initialization)
        s.fillNormal(weight.data, count: weight.count)
        let std = Float((2.0 / Double(inChannels * kernel * kernel * kernel)).squareRoot())
        for i in 0..<weight.count { weight[i] *= std }
    }

    /// x (N, Cin, D, H, W) -> y (N, Cout, oD, oH, oW), and what backward needs.
    public func forward(_ x: Tensor, _ ctx: StepContext) throws -> (y: Tensor, saved: ConvSaved) {
        let g = geometry(inputShape: x.shape)
        try g.validate()
        let y = Tensor(uninitializedShape: g.yShape)   // (N, Cout, oD, oH, oW), overwritten
        let input = try engines.engine(g).forward(x: x, w: weight, bias: bias, y: y)
        // The weights the convolution ran with: an optimizer step before backward must not change them.
        return (y, ConvSaved(layer: ObjectIdentifier(self), inputShape: x.shape, input: input, kernels: weight.copy(), draw: nil))
    }

    /// dy (N, Cout, oD, oH, oW) -> dx (N, Cin, D, H, W); ADDS the weight and bias gradients.
    public func backward(_ dy: Tensor, _ saved: ConvSaved) throws -> Tensor {
        _ = checkSaved(saved, dy: dy)
        // dx is written by the convolution (zeros for a first layer); dw, db overwritten.
        let dx = needsInputGradient ? Tensor(uninitializedShape: saved.inputShape) : Tensor(shape: saved.inputShape)
        let dw = Tensor(uninitializedShape: weight.shape), db = Tensor(uninitializedShape: [outChannels])
        try saved.input.engine.backward(saved.input, dy: dy, w: saved.kernels, dx: needsInputGradient ? dx : nil, dw: dw, dbias: db)
        try addGradients(kernels: dw, bias: db, ConvKernels(kernels: saved.kernels, bias: bias, draw: nil))
        return dx
    }

    public func kernels(batch: Int, _ ctx: StepContext) throws -> ConvKernels {
        ConvKernels(kernels: weight.copy(), bias: bias.copy(), draw: nil)
    }

    public func addGradients(kernels dw: Tensor, bias db: Tensor, _ k: ConvKernels) throws {
        dw.checkShape(weight.shape, "\(name).addGradients dw")
        db.checkShape([outChannels], "\(name).addGradients db")
        for i in 0..<dw.count { weightGradient[i] += dw[i] }
        for o in 0..<outChannels { biasGradient[o] += db[o] }
    }

    public func kl(gradientScale: Float, _ ctx: StepContext) throws -> Double { 0 }
    public func finishBackward() {}
    public func zeroGradients() { weightGradient.zero(); biasGradient.zero() }
    public var trainable: [NamedParameter] {
        [NamedParameter(name: "\(name).weight", value: weight, gradient: weightGradient),
         NamedParameter(name: "\(name).bias", value: bias, gradient: biasGradient)]
    }
}
