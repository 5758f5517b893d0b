// UnmadeInputConv: a U-Net decoder's 3³ convolution on a nearest-upsampled tensor or on a skip concatenation, run without making that input.
import Foundation

/// The input a decoder convolution reads, described by what it is made from, never made.
public enum UnmadeInput {
    /// Nearest 2× upsampling of x (1, C, d, h, w): the input (1, C, 2d, 2h, 2w).
    case upsampled(Tensor)
    /// a (1, Ca, D, H, W) and b (1, Cb, D, H, W) along channels: the input (1, Ca + Cb, D, H, W).
    case concatenated(Tensor, Tensor)
}

/// One example's 3³, stride-1, 'same' convolution on an `UnmadeInput`, with the kernels a layer
/// drew for it (`ConvLayer.kernels`): the same function as making the input and convolving it,
/// up to float rounding, with none of the input's or dL/d(input)'s full-resolution transients.
///
/// - Upsampled (the sub-pixel identity): along an axis, output 2i reads the upsampled input at
///   2i-1, 2i, 2i+1, which is x at i-1, i, i; output 2i+1 reads x at i, i, i+1. So for each
///   parity p of (depth, height) the output is a convolution on x itself with the taps summed
///   per axis (p = 0: x[i-1] <- W0, x[i] <- W1 + W2; p = 1: x[i] <- W0 + W1, x[i+1] <- W2): a
///   2 × 2 kernel with padding before (p = 0) or after (p = 1). Width keeps 3 taps (the native
///   kernels' k_w is 1 or 3) and carries both width parities as 2·Cout output channels (one
///   zero tap each). Four convolutions of Cin -> 2·Cout, 2 × 2 × 3 taps at the low resolution:
///   4·2·12/(8·27) = 0.44 of the multiply-adds of the 3³ convolution at the high resolution, in
///   each direction. Their outputs are interleaved into y; dL/dx sums the four backward-datas at
///   the low resolution; dL/dW maps each phase's tap gradients back by the transpose of the sums.
/// - Concatenated: conv(concat(a, b), W) = conv(a, W_a) + conv(b, W_b), W split along its input
///   channels: the same multiply-adds, plus one pass adding the second output into the first.
///   dL/da and dL/db are the two backward-datas, written where the caller says.
///
/// Runs on the native kernels where they apply (`Conv3DEngines.Choice.lowMemory`), which read x
/// in place (no layout copies).
public final class UnmadeInputConvolutions {
    private let engines = Conv3DEngines()

    public init() {}

    /// Whether `layer` is a convolution this runs: 3³, stride 1, 'same' padding.
    public static func runs(_ layer: ConvLayer) -> Bool {
        layer.kernel == [3, 3, 3] && layer.stride == [1, 1, 1] && layer.padding == .same
    }

    private func engine(_ g: Conv3DGeometry) throws -> Conv3D {
        try Conv3DEngines.$choice.withValue(.lowMemory) { try engines.engine(g) }
    }

    /// The input's shape (1, C, D, H, W).
    public static func shape(_ input: UnmadeInput) -> [Int] {
        switch input {
        case .upsampled(let x): return [1, x.shape[1]] + x.shape[2...].map { 2 * $0 }
        case .concatenated(let a, let b): return [1, a.shape[1] + b.shape[1]] + a.shape[2...]
        }
    }

    // MARK: - Forward

    /// y (1, Cout, D, H, W) = conv(input, k's kernels (Cout, Cin, 3, 3, 3)) + k's bias (Cout); y is overwritten.
    public func forward(_ input: UnmadeInput, _ k: ConvKernels, into y: Tensor) throws {
        let cout = y.shape[1]
        precondition(k.kernels.count == cout * Self.shape(input)[1] * 27 && k.bias.count == cout,
                     "UnmadeInputConvolutions: kernels \(k.kernels.shape) and bias \(k.bias.shape) for input \(Self.shape(input)), output \(y.shape)")
        y.checkShape([1, cout] + Self.shape(input)[2...], "UnmadeInputConvolutions.forward y")
        try Conv3D.$inputSaving.withValue(.none) {
            switch input {
            case .upsampled(let x): try upsampledForward(x, k, into: y)
            case .concatenated(let a, let b): try concatenatedForward(a, b, k, into: y)
            }
        }
    }

    private func upsampledForward(_ x: Tensor, _ k: ConvKernels, into y: Tensor) throws {
        let cout = y.shape[1]
        let bias = Tensor(uninitializedShape: [2 * cout])   // both width parities
        for p in 0..<2 { (bias.data + p * cout).update(from: k.bias.data, count: cout) }
        for phase in Self.phases {
            let g = Self.phaseGeometry(x, cout: cout, phase)
            let yp = Tensor(uninitializedShape: g.yShape)   // (1, 2·Cout, d, h, w)
            _ = try engine(g).forward(x: x, w: Self.phaseKernels(k.kernels, cin: x.shape[1], cout: cout, phase), bias: bias, y: yp)
            StepProfile.measure(.upsampleConcat) { Self.interleave(yp, phase, into: y) }
        }
        withExtendedLifetime(bias) {}
    }

    /// Output channels of b's part computed at once: b's part is made in slices of this many
    /// channels (each added into its own channels of y, which are contiguous), so the transient is
    /// 1/4 of y at U3's dec0 (32 output channels; 64 MiB instead of 256, beside the step's peak in
    /// dec0's backward). The native kernels block output channels by at most 8 (AVX-512; 4 on AVX2).
    static let partChannels = 8

    private func concatenatedForward(_ a: Tensor, _ b: Tensor, _ k: ConvKernels, into y: Tensor) throws {
        let cout = y.shape[1], voxels = y.count / cout
        let (wa, wb) = Self.split(k.kernels, cout: cout, a: a.shape[1], b: b.shape[1])
        _ = try engine(Self.geometry(a, cout: cout)).forward(x: a, w: wa, bias: k.bias, y: y)
        let width = min(cout, Self.partChannels)
        for first in stride(from: 0, to: cout, by: width) {
            let n = min(width, cout - first)
            let t = Tensor(uninitializedShape: [1, n] + y.shape[2...])   // (1, n, D, H, W): b's part, channels first..<first + n
            let w = Tensor(uninitializedShape: [n, b.shape[1], 3, 3, 3])   // wb's rows first..<first + n (contiguous)
            w.data.update(from: wb.data + first * w.count / n, count: w.count)
            _ = try engine(Self.geometry(b, cout: n)).forward(x: b, w: w, bias: nil, y: t)
            StepProfile.measure(.upsampleConcat) { UNet.add(t, into: y, at: first * voxels) }
        }
    }

    // MARK: - Backward

    /// Where dL/d(input) goes: for an upsampled input, dL/dx (1, C, d, h, w); for a
    /// concatenation, dL/da and dL/db (each may be the storage of the tensor it is the gradient
    /// of: backward-data runs after both backward-weights have read the inputs).
    public enum InputGradient {
        case upsampled(Tensor)
        case concatenated(Tensor, Tensor)
    }

    /// Given dy = dL/dy (1, Cout, D, H, W): writes dL/d(input) into `dInput` and returns
    /// dL/d(kernels) (k's shape) and dL/d(bias) (Cout).
    public func backward(_ input: UnmadeInput, dy: Tensor, _ k: ConvKernels, into dInput: InputGradient) throws -> (kernels: Tensor, bias: Tensor) {
        let cout = dy.shape[1]
        dy.checkShape([1, cout] + Self.shape(input)[2...], "UnmadeInputConvolutions.backward dy")
        switch (input, dInput) {
        case (.upsampled(let x), .upsampled(let dx)):
            dx.checkShape(x.shape, "UnmadeInputConvolutions.backward dx")
            return try upsampledBackward(x, dy: dy, k, dx: dx)
        case (.concatenated(let a, let b), .concatenated(let da, let db)):
            da.checkShape(a.shape, "UnmadeInputConvolutions.backward da")
            db.checkShape(b.shape, "UnmadeInputConvolutions.backward db")
            return try concatenatedBackward(a, b, dy: dy, k, da: da, db: db)
        default:
            preconditionFailure("UnmadeInputConvolutions.backward: the input gradient is not of the input's kind")
        }
    }

    private func upsampledBackward(_ x: Tensor, dy: Tensor, _ k: ConvKernels, dx: Tensor) throws -> (kernels: Tensor, bias: Tensor) {
        let (cin, cout) = (x.shape[1], dy.shape[1])
        precondition(k.kernels.count == cout * cin * 27, "UnmadeInputConvolutions.backward: kernels \(k.kernels.shape) for \(cin) -> \(cout) channels")
        let dw = Tensor(shape: k.kernels.shape), db = Tensor(shape: [cout])   // (Cout, Cin, 3, 3, 3), summed over the phases
        let partial = Tensor(uninitializedShape: x.shape)   // (1, Cin, d, h, w): one phase's dL/dx after the first
        for (index, phase) in Self.phases.enumerated() {
            let g = Self.phaseGeometry(x, cout: cout, phase)
            let conv = try engine(g)
            let dyp = Tensor(uninitializedShape: g.yShape)   // (1, 2·Cout, d, h, w)
            StepProfile.measure(.upsampleConcat) { Self.gather(dy, phase, into: dyp) }
            let dwp = Tensor(uninitializedShape: g.weightShape), dbp = Tensor(uninitializedShape: [2 * cout])
            try conv.backwardWeights(try conv.saving(x: x, adopting: true), dy: dyp, dw: dwp, dbias: dbp)
            try conv.backwardData(dy: dyp, w: Self.phaseKernels(k.kernels, cin: cin, cout: cout, phase), dx: index == 0 ? dx : partial)
            if index > 0 { StepProfile.measure(.upsampleConcat) { UNet.add(partial, into: dx) } }
            Self.addPhaseGradient(dwp, phase, cin: cin, cout: cout, into: dw)
            for c in 0..<cout { db[c] += dbp[c]; db[c] += dbp[cout + c] }
        }
        return (dw, db)
    }

    private func concatenatedBackward(_ a: Tensor, _ b: Tensor, dy: Tensor, _ k: ConvKernels, da: Tensor, db: Tensor) throws -> (kernels: Tensor, bias: Tensor) {
        let (ca, cb, cout) = (a.shape[1], b.shape[1], dy.shape[1])
        let (wa, wb) = Self.split(k.kernels, cout: cout, a: ca, b: cb)
        let (convA, convB) = (try engine(Self.geometry(a, cout: cout)), try engine(Self.geometry(b, cout: cout)))
        let dwa = Tensor(uninitializedShape: wa.shape), dwb = Tensor(uninitializedShape: wb.shape), dbias = Tensor(uninitializedShape: [cout])
        try convA.backwardWeights(try convA.saving(x: a, adopting: true), dy: dy, dw: dwa, dbias: dbias)
        try convB.backwardWeights(try convB.saving(x: b, adopting: true), dy: dy, dw: dwb, dbias: nil)
        // a and b are read no more: da and db may be their storage.
        try convA.backwardData(dy: dy, w: wa, dx: da)
        try convB.backwardData(dy: dy, w: wb, dx: db)
        let dw = Tensor(uninitializedShape: k.kernels.shape)   // (Cout, Ca + Cb, 3, 3, 3)
        for o in 0..<cout {
            (dw.data + o * (ca + cb) * 27).update(from: dwa.data + o * ca * 27, count: ca * 27)
            (dw.data + (o * (ca + cb) + ca) * 27).update(from: dwb.data + o * cb * 27, count: cb * 27)
        }
        return (dw, dbias)
    }

    // MARK: - The concatenation's parts

    /// The 3³ 'same' convolution of one example x (1, C, D, H, W) to Cout channels.
    static func geometry(_ x: Tensor, cout: Int) -> Conv3DGeometry {
        Conv3DGeometry(batch: 1, inChannels: x.shape[1], outChannels: cout, inputSize: Array(x.shape[2...]), kernel: [3, 3, 3])
    }

    /// w (Cout, Ca + Cb, 3, 3, 3) -> (w_a (Cout, Ca, 3, 3, 3), w_b (Cout, Cb, 3, 3, 3)).
    static func split(_ w: Tensor, cout: Int, a ca: Int, b cb: Int) -> (Tensor, Tensor) {
        let wa = Tensor(uninitializedShape: [cout, ca, 3, 3, 3]), wb = Tensor(uninitializedShape: [cout, cb, 3, 3, 3])
        for o in 0..<cout {
            (wa.data + o * ca * 27).update(from: w.data + o * (ca + cb) * 27, count: ca * 27)
            (wb.data + o * cb * 27).update(from: w.data + (o * (ca + cb) + ca) * 27, count: cb * 27)
        }
        return (wa, wb)
    }

    // MARK: - The sub-pixel phases

    /// The parities (depth, height) of the output voxels one phase convolution computes.
    typealias Phase = (d: Int, h: Int)
    static let phases: [Phase] = [(0, 0), (0, 1), (1, 0), (1, 1)]

    /// Which of a phase's taps (0 or 1; width: 0, 1 or 2 with the parity's offset) tap t of the
    /// 3³ kernel adds into, at parity p: p = 0 reads x[i-1] (t = 0) and x[i] (t = 1, 2); p = 1
    /// reads x[i] (t = 0, 1) and x[i+1] (t = 2).
    static func tap(_ t: Int, parity p: Int) -> Int { p == 0 ? min(t, 1) : t / 2 }

    /// A phase's convolution on x (1, C, d, h, w): C -> 2·Cout (width parity 0, then 1),
    /// 2 × 2 × 3 taps, the 2-tap axes padded before (parity 0) or after (parity 1).
    static func phaseGeometry(_ x: Tensor, cout: Int, _ p: Phase) -> Conv3DGeometry {
        Conv3DGeometry(batch: 1, inChannels: x.shape[1], outChannels: 2 * cout, inputSize: Array(x.shape[2...]), kernel: [2, 2, 3],
                       padding: .explicit(front: [1 - p.d, 1 - p.h, 1], back: [p.d, p.h, 1]))
    }

    /// The phase's kernels (2·Cout, Cin, 2, 2, 3) from w (Cout, Cin, 3, 3, 3): each tap of w
    /// summed into the tap it reads at this parity, in the order of w's taps.
    static func phaseKernels(_ w: Tensor, cin: Int, cout: Int, _ p: Phase) -> Tensor {
        let kp = Tensor(shape: [2 * cout, cin, 2, 2, 3])
        w.withUnsafeValues { wv in kp.withUnsafeMutableValues { kv in
            for pw in 0..<2 { for c in 0..<cout { for ci in 0..<cin {
                let src = wv.baseAddress! + (c * cin + ci) * 27, dst = kv.baseAddress! + ((pw * cout + c) * cin + ci) * 12
                for td in 0..<3 { for th in 0..<3 { for tw in 0..<3 {
                    dst[(tap(td, parity: p.d) * 2 + tap(th, parity: p.h)) * 3 + tap(tw, parity: pw) + pw] += src[(td * 3 + th) * 3 + tw]
                } } }
            } } }
        } }
        return kp
    }

    /// dw (Cout, Cin, 3, 3, 3) += the phase's tap gradients dwp (2·Cout, Cin, 2, 2, 3) mapped
    /// back: each tap of w gets the gradient of the tap it was summed into.
    static func addPhaseGradient(_ dwp: Tensor, _ p: Phase, cin: Int, cout: Int, into dw: Tensor) {
        dwp.withUnsafeValues { gv in dw.withUnsafeMutableValues { wv in
            for pw in 0..<2 { for c in 0..<cout { for ci in 0..<cin {
                let src = gv.baseAddress! + ((pw * cout + c) * cin + ci) * 12, dst = wv.baseAddress! + (c * cin + ci) * 27
                for td in 0..<3 { for th in 0..<3 { for tw in 0..<3 {
                    dst[(td * 3 + th) * 3 + tw] += src[(tap(td, parity: p.d) * 2 + tap(th, parity: p.h)) * 3 + tap(tw, parity: pw) + pw]
                } } }
            } } }
        } }
    }

    /// y (1, Cout, 2d, 2h, 2w) at the phase's parities <- yp (1, 2·Cout, d, h, w): channel
    /// pw·Cout + c holds y[c] at width parity pw.
    static func interleave(_ yp: Tensor, _ p: Phase, into y: Tensor) {
        let (cout, d, h, w) = (y.shape[1], yp.shape[2], yp.shape[3], yp.shape[4])
        yp.withUnsafeValues { sv in y.withUnsafeMutableValues { dv in
            let (s, t) = (sv.baseAddress!, dv.baseAddress!)
            Parallel.items(cout * d, elementsPerItem: 2 * h * w) { begin, end in
                for item in begin..<end {
                    let (c, z) = (item / d, item % d)
                    for r in 0..<h {
                        let even = s + ((c * d + z) * h + r) * w, odd = even + cout * d * h * w
                        let row = t + ((c * 2 * d + 2 * z + p.d) * 2 * h + 2 * r + p.h) * 2 * w
                        for i in 0..<w { row[2 * i] = even[i]; row[2 * i + 1] = odd[i] }
                    }
                }
            }
        } }
    }

    /// dyp (1, 2·Cout, d, h, w) <- dy (1, Cout, 2d, 2h, 2w) at the phase's parities (`interleave`'s inverse).
    static func gather(_ dy: Tensor, _ p: Phase, into dyp: Tensor) {
        let (cout, d, h, w) = (dy.shape[1], dyp.shape[2], dyp.shape[3], dyp.shape[4])
        dy.withUnsafeValues { sv in dyp.withUnsafeMutableValues { dv in
            let (s, t) = (sv.baseAddress!, dv.baseAddress!)
            Parallel.items(cout * d, elementsPerItem: 2 * h * w) { begin, end in
                for item in begin..<end {
                    let (c, z) = (item / d, item % d)
                    for r in 0..<h {
                        let even = t + ((c * d + z) * h + r) * w, odd = even + cout * d * h * w
                        let row = s + ((c * 2 * d + 2 * z + p.d) * 2 * h + 2 * r + p.h) * 2 * w
                        for i in 0..<w { even[i] = row[2 * i]; odd[i] = row[2 * i + 1] }
                    }
                }
            }
        } }
    }
}
