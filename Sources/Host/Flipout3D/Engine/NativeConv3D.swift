// NativeConv3D: the C direct kernels (CConvKernels) for narrow layers, split over threads.
import CConvKernels
import Foundation

/// An instruction-set level of the native kernels. All three are compiled into every binary;
/// `best` is what this CPU runs (cpuid), lowered by FLIPOUT_NATIVE_ISA=avx2|portable for tests and
/// comparisons, so an AVX-512 machine also runs what an AVX2-only one does.
public enum NativeLevel: Int, CaseIterable, Comparable, Sendable, CustomStringConvertible {
    case portable = 0, avx2 = 1, avx512 = 2

    public static func < (a: NativeLevel, b: NativeLevel) -> Bool { a.rawValue < b.rawValue }
    public var description: String { ["portable", "avx2", "avx512"][rawValue] }

    /// The highest level the CPU and OS support.
    public static let supported = NativeLevel(rawValue: Int(fo_isa_best())) ?? .portable
    /// `supported`, capped by FLIPOUT_NATIVE_ISA.
    public static let best: NativeLevel = {
        let cap = ProcessInfo.processInfo.environment["FLIPOUT_NATIVE_ISA"].flatMap { v in allCases.first { $0.description == v } }
        return min(supported, cap ?? supported)
    }()
    /// Floats per vector register at this level.
    public var floatsPerVector: Int { [4, 8, 16][rawValue] }
    /// Every level this machine can run, lowest first.
    public static var runnable: [NativeLevel] { allCases.filter { $0 <= supported } }
}

/// One geometry on the native kernels, plain NCDHW tensors in and out (the layouts of
/// `Conv3D`): forward and backward-weights with any depth and height stride and width stride 1
/// or 2, backward-data (the transposed convolution's forward) with stride 1. Not thread-safe by itself (packed-weight buffers are reused): `Conv3D` serialises.
final class NativeConv3D {
    let geometry: Conv3DGeometry
    let level: NativeLevel
    /// The convolution, and the one whose forward is this one's backward-data.
    private var shape: fo_conv_shape
    private var transposed: fo_conv_shape
    private let packed: Tensor, packedTransposed: Tensor

    /// Whether the native kernels run this geometry in every direction (stride 1, k_w 1 or 3,
    /// at most 64 channels per group on either side, padding below the kernel).
    static func supports(_ g: Conv3DGeometry) -> Bool {
        supportsForward(g) && supportsBackwardData(g)
    }

    /// Whether forward and backward-weights (which read the same shape) run natively: k_w 1 or
    /// 3, width stride 1 or 2, at most 128 output and 64 input channels per group, padding below
    /// the kernel.
    static func supportsForward(_ g: Conv3DGeometry) -> Bool {
        guard g.upsample == 1 else { return false }
        var s = shape(g)
        return fo_supports(&s) != 0
    }

    /// Whether backward-data runs natively: it is the forward of the transposed convolution
    /// (stride 1, at most 128 input and 64 output channels per group).
    static func supportsBackwardData(_ g: Conv3DGeometry) -> Bool {
        guard g.isTransposable else { return false }
        var t = transposedShape(g)
        return fo_supports(&t) != 0
    }

    /// `backwardData`: whether backward-data will run here (then its transposed shape must be supported).
    init(_ g: Conv3DGeometry, level: NativeLevel, backwardData: Bool = true) {
        precondition(NativeConv3D.supportsForward(g) && (!backwardData || NativeConv3D.supportsBackwardData(g)),
                     "NativeConv3D: \(g) is not supported; ask NativeConv3D.supports first")
        precondition(level <= NativeLevel.supported, "NativeConv3D: this CPU cannot run level \(level)")
        geometry = g
        self.level = level
        shape = NativeConv3D.shape(g)
        transposed = NativeConv3D.transposedShape(g)
        let isa = Int32(level.rawValue)
        packed = Tensor(uninitializedShape: [fo_packed_weights_floats(isa, &shape)])
        packedTransposed = Tensor(uninitializedShape: [backwardData ? fo_packed_weights_floats(isa, &transposed) : 0])
    }

    private static func shape(_ g: Conv3DGeometry) -> fo_conv_shape {
        let i = g.inputSize.map(Int32.init), o = g.outputSize.map(Int32.init), k = g.kernel.map(Int32.init)
        let p = g.paddingFront.map(Int32.init), st = g.stride.map(Int32.init)
        return fo_conv_shape(batch: Int32(g.batch), groups: Int32(g.groups), cin: Int32(g.inChannels / g.groups),
                             cout: Int32(g.outChannels / g.groups), in_d: i[0], in_h: i[1], in_w: i[2],
                             out_d: o[0], out_h: o[1], out_w: o[2], k_d: k[0], k_h: k[1], k_w: k[2],
                             pad_d: p[0], pad_h: p[1], pad_w: p[2], stride_d: st[0], stride_h: st[1], stride_w: st[2])
    }

    /// dx = the forward of this shape on dy with the flipped, transposed kernel: channels swapped,
    /// input and output sizes swapped, front padding k - 1 - p (stride 1: `supportsBackwardData`).
    private static func transposedShape(_ g: Conv3DGeometry) -> fo_conv_shape {
        var s = shape(g)
        swap(&s.cin, &s.cout)
        (s.in_d, s.in_h, s.in_w, s.out_d, s.out_h, s.out_w) = (s.out_d, s.out_h, s.out_w, s.in_d, s.in_h, s.in_w)
        (s.pad_d, s.pad_h, s.pad_w) = (s.k_d - 1 - s.pad_d, s.k_h - 1 - s.pad_h, s.k_w - 1 - s.pad_w)
        return s
    }

    /// Threads the kernels split their work over: OMP_NUM_THREADS when set (oneDNN's count, so
    /// comparisons use one thread count), else every core.
    static let threads: Int = {
        if let v = ProcessInfo.processInfo.environment["OMP_NUM_THREADS"].flatMap({ Int($0) }), v > 0 { return v }
        return ProcessInfo.processInfo.activeProcessorCount
    }()

    /// Runs body(begin, end, scratch) over [0, count) in contiguous chunks: one with one thread,
    /// else `chunksPerThread` per thread, handed out by GCD as threads come free, so a thread the
    /// OS deschedules (a shared machine) delays the call by one chunk, not by half its work.
    private func parallel(_ count: Int, scratchFloats: Int, _ body: (Int, Int, UnsafeMutablePointer<Float>) -> Void) {
        let chunksPerThread = 8
        let parts = NativeConv3D.threads == 1 ? 1 : max(1, min(NativeConv3D.threads * chunksPerThread, count))
        if parts == 1 {
            let scratch = Tensor(uninitializedShape: [scratchFloats])
            body(0, count, scratch.data)
            return withExtendedLifetime(scratch) {}
        }
        DispatchQueue.concurrentPerform(iterations: parts) { p in
            let begin = count * p / parts, end = count * (p + 1) / parts
            let scratch = Tensor(uninitializedShape: [scratchFloats])
            body(begin, end, scratch.data)
            withExtendedLifetime(scratch) {}
        }
    }

    /// y (N, Cout, oD, oH, oW) = conv(x (N, Cin, D, H, W), w (Cout, Cin/G, k...)) + bias (Cout).
    func forward(x: Tensor, w: Tensor, bias: Tensor?, y: Tensor) {
        run(&shape, x: x, w: w, transposedWeights: false, packed: packed, bias: bias, y: y)
    }

    /// dx (N, Cin, D, H, W) from dy (N, Cout, oD, oH, oW) and w (Cout, Cin/G, k...).
    func backwardData(dy: Tensor, w: Tensor, dx: Tensor) {
        precondition(packedTransposed.count > 0, "NativeConv3D: built without backward-data for \(geometry)")
        run(&transposed, x: dy, w: w, transposedWeights: true, packed: packedTransposed, bias: nil, y: dx)
    }

    private func run(_ s: inout fo_conv_shape, x: Tensor, w: Tensor, transposedWeights: Bool, packed: Tensor,
                     bias: Tensor?, y: Tensor) {
        let isa = Int32(level.rawValue)
        fo_pack_weights(isa, &s, w.data, transposedWeights ? 1 : 0, packed.data)
        let shape = s
        let scratch = Int(fo_forward_scratch_floats(isa, &s))
        let (xp, pp, bp, yp) = (UnsafePointer(x.data), UnsafePointer(packed.data), bias.map { UnsafePointer($0.data) }, y.data)
        parallel(Int(fo_forward_items(&s)), scratchFloats: scratch) { begin, end, sc in
            var s = shape
            fo_forward(isa, &s, xp, pp, bp, yp, begin, end, sc)
        }
        withExtendedLifetime((x, w, bias, y, packed)) {}
    }

    /// Ranges backward-weights is split into: a constant, so that dw (the ranges' partial sums
    /// added in order) is the same for every thread count.
    static let backwardWeightsRanges = 16

    /// dw (Cout, Cin/G, k...) and dbias (Cout) from plain x (N, Cin, D, H, W) and dy.
    func backwardWeights(x: UnsafePointer<Float>, dy: Tensor, dw: Tensor, dbias: Tensor?) {
        let isa = Int32(level.rawValue)
        let shape = self.shape
        var s = shape
        let scratch = Int(fo_backward_weights_scratch_floats(isa, &s))
        let items = Int(fo_backward_weights_items(isa, &s))
        let ranges = min(items, NativeConv3D.backwardWeightsRanges)
        let partials = Tensor(uninitializedShape: [ranges, dw.count])
        let (dyp, pp, dwCount) = (UnsafePointer(dy.data), partials.data, dw.count)
        let range: (Int) -> Void = { r in
            var s = shape
            let sc = Tensor(uninitializedShape: [scratch])
            fo_backward_weights(isa, &s, x, dyp, pp + r * dwCount, items * r / ranges, items * (r + 1) / ranges, sc.data)
            withExtendedLifetime(sc) {}
        }
        if NativeConv3D.threads == 1 {
            for r in 0..<ranges { range(r) }
        } else {
            DispatchQueue.concurrentPerform(iterations: ranges, execute: range)
        }
        dw.data.update(from: partials.data, count: dwCount)
        for r in 1..<ranges {
            let p = partials.data + r * dwCount
            for i in 0..<dwCount { dw.data[i] += p[i] }
        }
        withExtendedLifetime(partials) {}
        if let dbias { Self.biasGradient(dy: dy, batch: geometry.batch, channels: geometry.outChannels, into: dbias) }
        withExtendedLifetime((dy, dw, dbias)) {}
    }

    /// dbias[c] = the sum of dy (batch, channels, voxels) over examples and voxels, overwritten.
    static func biasGradient(dy: Tensor, batch: Int, channels: Int, into dbias: Tensor) {
        let (dyp, dbp, voxels) = (UnsafePointer(dy.data), dbias.data, dy.count / (batch * channels))
        // One channel per range (each sum in its own fixed order): the same bits for every thread count.
        if NativeConv3D.threads > 1 && dy.count >= Parallel.minimumElements {
            DispatchQueue.concurrentPerform(iterations: channels) { c in
                fo_bias_gradient(dyp, Int32(batch), Int32(channels), voxels, dbp, Int32(c), Int32(c + 1))
            }
        } else {
            fo_bias_gradient(dyp, Int32(batch), Int32(channels), voxels, dbp, 0, Int32(channels))
        }
        withExtendedLifetime((dy, dbias)) {}
    }
}
