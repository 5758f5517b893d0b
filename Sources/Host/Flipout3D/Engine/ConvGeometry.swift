// Conv3DGeometry: the shapes, padding, output size and FLOP count of one 3D convolution.

/// How a convolution pads its input, per spatial axis (D, H, W).
public enum Padding: Hashable, Sendable {
    /// TensorFlow's "SAME": output size ceil(in / stride); total pad
    /// max((ceil(in / s) - 1) * s + k - in, 0), front = total / 2, back = the rest.
    case same
    /// No padding: output size floor((in - k) / s) + 1.
    case valid
    /// Explicit zeros before (`front`) and after (`back`) each spatial axis, 3 values each.
    case explicit(front: [Int], back: [Int])
}

/// A user geometry that cannot be convolved; the message says what to change.
public struct GeometryError: Error, CustomStringConvertible, Sendable, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { "Conv3D geometry: \(message)" }
}

/// One 3D convolution: batch, channels, groups, input volume, kernel, stride and padding.
///
/// Layouts (plain, row-major, what `Tensor` holds):
/// - x: (N, Cin, D, H, W)
/// - weights: (Cout, Cin / groups, kD, kH, kW), PyTorch's layout (for groups > 1 the same
///   memory as (groups, Cout / groups, Cin / groups, kD, kH, kW))
/// - bias: (Cout)
/// - y: (N, Cout, oD, oH, oW)
///
/// The per-example form (one kernel per example) is a grouped convolution over the batch: see
/// `foldedOverBatch()`.
public struct Conv3DGeometry: Hashable, Sendable, CustomStringConvertible {
    public var batch: Int
    public var inChannels: Int
    public var outChannels: Int
    public var groups: Int
    /// (D, H, W)
    public var inputSize: [Int]
    /// (kD, kH, kW)
    public var kernel: [Int]
    /// (sD, sH, sW)
    public var stride: [Int]
    public var padding: Padding
    /// 2: the input is upsampled by 2 on every axis (nearest: each voxel repeated 2x2x2) before the
    /// convolution, which then runs on the upsampled grid (a U-Net decoder's upsampling block:
    /// x (N, Cin, D, H, W) -> y (N, Cout, 2D, 2H, 2W)); kernel 3, stride 1, same padding. 1: none.
    public var upsample: Int

    public init(batch: Int, inChannels: Int, outChannels: Int, inputSize: [Int], kernel: [Int],
                stride: [Int] = [1, 1, 1], padding: Padding = .same, groups: Int = 1, upsample: Int = 1) {
        self.batch = batch
        self.upsample = upsample
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.groups = groups
        self.inputSize = inputSize
        self.kernel = kernel
        self.stride = stride
        self.padding = padding
    }

    /// A cubic convenience: input side `size`, kernel side `k`, one stride for every axis.
    public init(batch: Int, inChannels: Int, outChannels: Int, size: Int, k: Int,
                stride: Int = 1, padding: Padding = .same, groups: Int = 1) {
        self.init(batch: batch, inChannels: inChannels, outChannels: outChannels,
                  inputSize: [size, size, size], kernel: [k, k, k], stride: [stride, stride, stride],
                  padding: padding, groups: groups)
    }

    /// The per-example form of this (ungrouped) geometry: the batch folded into channels,
    /// input (1, N*Cin, D, H, W) (the same memory as (N, Cin, D, H, W)), weights
    /// (N*Cout, Cin, kD, kH, kW) (the same memory as (N, Cout, Cin, kD, kH, kW)), groups = N,
    /// output (1, N*Cout, ...) = (N, Cout, ...). Traps if this geometry is already grouped.
    public func foldedOverBatch() -> Conv3DGeometry {
        precondition(groups == 1, "Conv3DGeometry.foldedOverBatch: geometry already has \(groups) groups")
        return Conv3DGeometry(batch: 1, inChannels: batch * inChannels, outChannels: batch * outChannels,
                              inputSize: inputSize, kernel: kernel, stride: stride, padding: padding,
                              groups: batch, upsample: upsample)
    }

    /// Whether this convolution is the backward-data of a stride-1 convolution with padding
    /// k - 1 - p (its transposed convolution): stride 1 and padding below the kernel on every side.
    public var isTransposable: Bool {
        upsample == 1 && stride.allSatisfy { $0 == 1 } && zip(paddingFront + paddingBack, kernel + kernel).allSatisfy { $0 <= $1 - 1 }
    }

    /// Padding before each spatial axis (D, H, W).
    public var paddingFront: [Int] { pads.front }
    /// Padding after each spatial axis (D, H, W).
    public var paddingBack: [Int] { pads.back }

    private var pads: (front: [Int], back: [Int]) {
        switch padding {
        case .valid:
            return ([0, 0, 0], [0, 0, 0])
        case let .explicit(front, back):
            return (front, back)
        case .same:
            var f = [Int](), b = [Int]()
            for a in 0..<min(3, inputSize.count, kernel.count, stride.count) {
                let s = max(stride[a], 1), size = inputSize[a] * upsample
                let outSize = (size + s - 1) / s
                let total = max((outSize - 1) * s + kernel[a] - size, 0)
                f.append(total / 2)
                b.append(total - total / 2)
            }
            return (f, b)
        }
    }

    /// (oD, oH, oW): floor((in + front + back - k) / s) + 1 per axis, `in` upsampled.
    public var outputSize: [Int] {
        let (f, b) = pads
        return (0..<3).map { a in (inputSize[a] * upsample + f[a] + b[a] - kernel[a]) / stride[a] + 1 }
    }

    public var inputVoxels: Int { inputSize.reduce(1, *) }
    public var outputVoxels: Int { outputSize.reduce(1, *) }
    public var kernelVolume: Int { kernel.reduce(1, *) }

    /// Multiply-adds times two: 2 * N * Cout * (Cin / groups) * kD*kH*kW * output voxels.
    /// Backward-data and backward-weights cost the same. With `upsample` 2 this counts the
    /// convolution of the upsampled input (what the peers run); the engine does 8/27 of it.
    public var flops: Double {
        2 * Double(batch) * Double(outChannels) * Double(inChannels / max(groups, 1))
            * Double(kernelVolume) * Double(outputVoxels)
    }

    /// (N, Cin, D, H, W)
    public var xShape: [Int] { [batch, inChannels] + inputSize }
    /// (Cout, Cin / groups, kD, kH, kW)
    public var weightShape: [Int] { [outChannels, inChannels / max(groups, 1)] + kernel }
    /// (Cout)
    public var biasShape: [Int] { [outChannels] }
    /// (N, Cout, oD, oH, oW)
    public var yShape: [Int] { [batch, outChannels] + outputSize }

    /// Throws a `GeometryError` that says what to change if oneDNN (or anyone) cannot run this.
    public func validate() throws {
        func need(_ ok: Bool, _ message: @autoclosure () -> String) throws {
            if !ok { throw GeometryError(message()) }
        }
        try need(inputSize.count == 3, "inputSize must hold 3 values (D, H, W), got \(inputSize)")
        try need(kernel.count == 3, "kernel must hold 3 values (kD, kH, kW), got \(kernel)")
        try need(stride.count == 3, "stride must hold 3 values (sD, sH, sW), got \(stride)")
        try need(batch >= 1, "batch must be at least 1, got \(batch)")
        try need(inChannels >= 1 && outChannels >= 1,
                 "channel counts must be at least 1, got in \(inChannels), out \(outChannels)")
        try need(groups >= 1, "groups must be at least 1, got \(groups)")
        try need(inChannels % groups == 0,
                 "input channels \(inChannels) are not divisible by groups \(groups); use a group count that divides both channel counts")
        try need(outChannels % groups == 0,
                 "output channels \(outChannels) are not divisible by groups \(groups); use a group count that divides both channel counts")
        try need(inputSize.allSatisfy { $0 >= 1 }, "input size must be positive on every axis, got \(inputSize)")
        try need(kernel.allSatisfy { $0 >= 1 }, "kernel size must be positive on every axis, got \(kernel)")
        try need(stride.allSatisfy { $0 >= 1 }, "stride must be positive on every axis, got \(stride)")
        try need(upsample == 1 || (upsample == 2 && kernel == [3, 3, 3] && stride == [1, 1, 1] && padding == .same),
                 "upsample must be 1, or 2 with kernel 3, stride 1 and padding .same (a U-Net's upsampling block), got upsample \(upsample) with kernel \(kernel), stride \(stride), padding \(padding)")
        if case let .explicit(front, back) = padding {
            try need(front.count == 3 && back.count == 3,
                     "explicit padding needs 3 front and 3 back values (D, H, W), got front \(front), back \(back)")
            try need((front + back).allSatisfy { $0 >= 0 }, "explicit padding must not be negative, got front \(front), back \(back)")
            try need(zip(front + back, kernel + kernel).allSatisfy { $0 < $1 },
                     "explicit padding must be smaller than the kernel on each axis (kernel \(kernel), front \(front), back \(back)); otherwise some outputs see only zeros")
        }
        let (f, b) = pads
        for a in 0..<3 where inputSize[a] * upsample + f[a] + b[a] < kernel[a] {
            let axis = ["D", "H", "W"][a]
            throw GeometryError(
                "kernel \(kernel[a]) is bigger than the padded input \(inputSize[a] + f[a] + b[a]) on axis \(axis) (input \(inputSize[a]), padding \(f[a])+\(b[a])); use a smaller kernel, a bigger input or padding .same")
        }
    }

    public var description: String {
        let pad: String
        switch padding {
        case .same: pad = "same"
        case .valid: pad = "valid"
        case let .explicit(front, back): pad = "explicit(\(front), \(back))"
        }
        let shapesOK = inputSize.count == 3 && kernel.count == 3 && stride.count == 3 && stride.allSatisfy { $0 > 0 }
            && paddingFront.count == 3 && paddingBack.count == 3
        let out = shapesOK ? " -> out \(outputSize)" : ""
        let up = upsample == 1 ? "" : " upsample \(upsample)"
        return "N\(batch) \(inChannels)->\(outChannels) groups \(groups) in \(inputSize)\(up) k \(kernel) s \(stride) pad \(pad)\(out)"
    }
}
