// Conv3D: forward, backward-data and backward-weights of one 3D convolution geometry on oneDNN.
import CDNNL
import Foundation

/// One 3D convolution geometry compiled for oneDNN: three primitives (forward_training,
/// backward-data, backward-weights with bias) in the layouts oneDNN prefers (format tag `any`,
/// usually channel-blocked), and the reorders between those layouts and the caller's plain
/// tensors, built once and reused on every call. The forward pass may run as the backward-data
/// primitive of the transposed convolution (see `ForwardStrategy`).
///
/// A training step per layer is `forward`, then `backward` (both gradients; dy is reordered once,
/// and with `xUnchangedSinceForward` x's copy from the forward pass is reused). `backwardData`
/// and `backwardWeights` alone exist for callers that need only one of them.
///
/// oneDNN runs on OpenMP threads (all cores unless OMP_NUM_THREADS says otherwise).
///
/// Caller tensors are plain row-major:
/// - x, dx: (N, Cin, D, H, W)
/// - w, dw: (Cout, Cin / groups, kD, kH, kW) (PyTorch layout; for groups > 1 the same memory as
///   (groups, Cout / groups, Cin / groups, kD, kH, kW))
/// - bias, dbias: (Cout)
/// - y, dy: (N, Cout, oD, oH, oW)
/// For a geometry with batch 1 and groups G (the per-example form, see
/// `Conv3DGeometry.foldedOverBatch()`), x may also be shaped (G, Cin / G, D, H, W), y and dy
/// (G, Cout / G, ...), w (G, Cout / G, Cin / G, k...) and bias (G, Cout / G): the same memory.
///
/// Outputs (y, dx, dw, dbias) are OVERWRITTEN, never accumulated into.
/// Calls are serialised by one process-wide lock: the reorder buffers are shared between calls, and
/// oneDNN's stream (one per process) must not execute from two threads at once. oneDNN itself
/// uses both cores inside each primitive.
/// Shape mismatches are programmer errors and trap.
public final class Conv3D {
    public let geometry: Conv3DGeometry
    /// oneDNN's implementation names for (forward, backward-data, backward-weights).
    public let implementations: (forward: String, backwardData: String, backwardWeights: String)

    private let context: DNNLContext
    private let forwardOp: Op
    private let backwardDataOp: Op
    private let backwardWeightsOp: Op
    private static let executionLock = NSLock()
    /// (Cout) zeros for forward without bias.
    private let zeroBias: Tensor
    /// (Cout) sink for backward-weights without dbias.
    private let scratchBias: Tensor
    /// Which caller storage each inner input buffer currently holds a reordered copy of.
    private var held: [ObjectIdentifier: UnsafeMutableRawPointer] = [:]

    /// How the forward pass is computed.
    public enum ForwardStrategy: Hashable, Sendable {
        /// `.transposedBackwardData` where it is known to be faster (stride 1 and 16k channels per
        /// group on both sides, and oneDNN has a jit kernel for it), else `.direct`.
        case automatic
        /// oneDNN's forward convolution (with the bias fused).
        case direct
        /// The backward-data primitive of the transposed convolution (kernel flipped, in/out
        /// channels swapped, padding k-1-p): the same sum, and oneDNN 2.6's backward-data kernel
        /// runs about 25 % faster than its forward kernel at 16 channels. Stride 1 only; the
        /// bias is added in a separate pass.
        case transposedBackwardData
    }

    /// The forward strategy in use (never `.automatic`).
    public let forwardStrategy: ForwardStrategy
    /// (Cin, Cout / groups, kD, kH, kW): the flipped, transposed kernel for `.transposedBackwardData`.
    private let flippedWeights: Tensor?
    /// For `.transposedBackwardData`: adds the bias to the primitive's output in oneDNN's layout,
    /// before it is reordered out (a oneDNN binary add over the cache-hot buffer, on all cores),
    /// instead of a separate pass over the plain output. Nil when oneDNN has no jit kernel for it.
    private let biasAdd: BiasAdd?

    /// Builds the primitives for `geometry`; throws a `GeometryError` for an invalid geometry and
    /// an `EngineError` if oneDNN cannot run it (or `strategy` does not apply to it).
    public init(_ geometry: Conv3DGeometry, forward strategy: ForwardStrategy = .automatic) throws {
        try geometry.validate()
        self.geometry = geometry
        let g = geometry
        let ctx = try DNNLContext.shared()
        context = ctx
        zeroBias = Tensor(shape: g.biasShape)
        scratchBias = Tensor(shape: g.biasShape)

        // Plain (user) layouts. Weights: OIDHW, or GOIDHW with groups.
        let xDims = g.xShape, yDims = g.yShape
        let wDims = g.groups == 1 ? g.weightShape
            : [g.groups, g.outChannels / g.groups, g.inChannels / g.groups] + g.kernel
        let wTag = g.groups == 1 ? dnnl_oidhw : dnnl_goidhw
        let userX = try MemoryDesc(dims: xDims, tag: dnnl_ncdhw)
        let userY = try MemoryDesc(dims: yDims, tag: dnnl_ncdhw)
        let userW = try MemoryDesc(dims: wDims, tag: wTag)
        let userB = try MemoryDesc(dims: g.biasShape, tag: dnnl_x)
        let anyW = try MemoryDesc(dims: wDims, tag: dnnl_format_tag_any)
        let strides = g.stride.map { Int64($0) }
        let padL = g.paddingFront.map { Int64($0) }
        let padR = g.paddingBack.map { Int64($0) }
        let name = "\(g)"

        /// The three primitives with activations (x, y, dx, dy) in layout `tag`.
        func describe(_ tag: dnnl_format_tag_t) throws -> (MemoryDesc, MemoryDesc, DNNLPrimitiveDesc, DNNLPrimitiveDesc, DNNLPrimitiveDesc) {
            let anyX = try MemoryDesc(dims: xDims, tag: tag)
            let anyY = try MemoryDesc(dims: yDims, tag: tag)
            var fd = dnnl_convolution_desc_t()
            var (x0, w0, b0, y0) = (anyX.raw, anyW.raw, userB.raw, anyY.raw)
            try dnnlCheck(dnnl_convolution_forward_desc_init(&fd, dnnl_forward_training, dnnl_convolution_direct,
                                                             &x0, &w0, &b0, &y0, strides, padL, padR),
                          "describe the forward convolution \(name)")
            let fpd = try DNNLPrimitiveDesc(op: &fd, context: ctx, hint: nil, "create the forward convolution \(name)")

            var bdd = dnnl_convolution_desc_t()
            var (x1, w1, y1) = (anyX.raw, anyW.raw, anyY.raw)
            try dnnlCheck(dnnl_convolution_backward_data_desc_init(&bdd, dnnl_convolution_direct,
                                                                   &x1, &w1, &y1, strides, padL, padR),
                          "describe the backward-data convolution \(name)")
            let bdpd = try DNNLPrimitiveDesc(op: &bdd, context: ctx, hint: fpd, "create the backward-data convolution \(name)")

            var bwd = dnnl_convolution_desc_t()
            var (x2, w2, b2, y2) = (anyX.raw, anyW.raw, userB.raw, anyY.raw)
            try dnnlCheck(dnnl_convolution_backward_weights_desc_init(&bwd, dnnl_convolution_direct,
                                                                      &x2, &w2, &b2, &y2, strides, padL, padR),
                          "describe the backward-weights convolution \(name)")
            let bwpd = try DNNLPrimitiveDesc(op: &bwd, context: ctx, hint: fpd, "create the backward-weights convolution \(name)")
            return (anyX, anyY, fpd, bdpd, bwpd)
        }

        // Channels-last (NDHWC) activations for ungrouped 16 -> 16 channels: oneDNN 2.6 then runs
        // the forward as brgconv (bias fused, as fast as the transposed backward-data) and
        // backward-weights about 16 % faster than in the 16-channel-blocked layout, and the
        // reorders from and to NCDHW cost the same (with 16 channels the two layouts are the same
        // bytes). Measured for 16 channels only (with 32 the reorder into NDHWC is 3x slower; grouped
        // convolutions have no brgconv and run slower channels-last). Kept only when every
        // primitive gets a jit kernel.
        var described: (MemoryDesc, MemoryDesc, DNNLPrimitiveDesc, DNNLPrimitiveDesc, DNNLPrimitiveDesc)? = nil
        if g.groups == 1 && g.inChannels == 16 && g.outChannels == 16 && strategy != .transposedBackwardData,
           let cl = try? describe(dnnl_acdeb),
           [cl.2, cl.3, cl.4].allSatisfy({ $0.implementation.hasPrefix("jit") || $0.implementation.hasPrefix("brg") }) {
            described = cl
        }
        let channelsLast = described != nil
        let (anyX, anyY, fpd, bdpd, bwpd) = try described ?? describe(dnnl_format_tag_any)

        // The transposed convolution whose backward-data is this forward: src' y-shaped,
        // dst' x-shaped, weights' (Cin, Cout, k) (grouped (G, Cin/G, Cout/G, k)), pads k-1-p.
        var transposedPD: DNNLPrimitiveDesc?
        let canTranspose = g.stride.allSatisfy { $0 == 1 }
            && zip(g.paddingFront + g.paddingBack, g.kernel + g.kernel).allSatisfy { $0 <= $1 - 1 }
        let wtDims = g.groups == 1 ? [g.inChannels, g.outChannels] + g.kernel
            : [g.groups, g.inChannels / g.groups, g.outChannels / g.groups] + g.kernel
        if strategy == .transposedBackwardData && !canTranspose {
            throw GeometryError("forward strategy transposedBackwardData needs stride 1 and padding below the kernel size; use .automatic or .direct for \(g)")
        }
        let sixteens = (g.inChannels / g.groups) % 16 == 0 && (g.outChannels / g.groups) % 16 == 0
        if strategy == .transposedBackwardData || (strategy == .automatic && canTranspose && sixteens && !channelsLast) {
            let anyWT = try MemoryDesc(dims: wtDims, tag: dnnl_format_tag_any)
            let tPadL = zip(g.kernel, g.paddingFront).map { Int64($0 - 1 - $1) }
            let tPadR = zip(g.kernel, g.paddingBack).map { Int64($0 - 1 - $1) }
            var tfd = dnnl_convolution_desc_t()
            var (s3, w3, d3) = (anyY.raw, anyWT.raw, anyX.raw)
            try dnnlCheck(dnnl_convolution_forward_desc_init(&tfd, dnnl_forward_training, dnnl_convolution_direct,
                                                             &s3, &w3, nil, &d3, strides, tPadL, tPadR),
                          "describe the transposed convolution of \(name)")
            let tfpd = try DNNLPrimitiveDesc(op: &tfd, context: ctx, hint: nil, "create the transposed convolution of \(name)")
            var tbd = dnnl_convolution_desc_t()
            var (s4, w4, d4) = (anyY.raw, anyWT.raw, anyX.raw)
            try dnnlCheck(dnnl_convolution_backward_data_desc_init(&tbd, dnnl_convolution_direct,
                                                                   &s4, &w4, &d4, strides, tPadL, tPadR),
                          "describe the transposed backward-data convolution of \(name)")
            let pd = try DNNLPrimitiveDesc(op: &tbd, context: ctx, hint: tfpd,
                                           "create the transposed backward-data convolution of \(name)")
            if strategy == .transposedBackwardData || pd.implementation.hasPrefix("jit") { transposedPD = pd }
        }
        forwardStrategy = transposedPD == nil ? .direct : .transposedBackwardData
        flippedWeights = transposedPD == nil ? nil : Tensor(shape: wtDims)

        implementations = (transposedPD.map { "\($0.implementation) (backward-data of the transposed convolution)" }
                               ?? fpd.implementation,
                           bdpd.implementation, bwpd.implementation)

        // Inner (oneDNN-layout) buffers are shared per role across the three primitives when the
        // layouts agree: no primitive uses one role twice.
        let pool = BufferPool(context: ctx)
        if let tpd = transposedPD {
            let userWT = try MemoryDesc(dims: wtDims, tag: wTag)
            forwardOp = try Op(tpd, context: ctx, pool: pool, name: "forward (transposed backward-data) \(name)", slots: [
                (DNNL_ARG_DIFF_DST, dnnl_query_diff_dst_md, userX, .x, false),
                (DNNL_ARG_WEIGHTS, dnnl_query_weights_md, userWT, .w, false),
                (DNNL_ARG_DIFF_SRC, dnnl_query_diff_src_md, userY, .y, true),
            ])
        } else {
            forwardOp = try Op(fpd, context: ctx, pool: pool, name: "forward convolution \(name)", slots: [
                (DNNL_ARG_SRC, dnnl_query_src_md, userX, .x, false),
                (DNNL_ARG_WEIGHTS, dnnl_query_weights_md, userW, .w, false),
                (DNNL_ARG_BIAS, dnnl_query_weights_md, userB, .bias, false),
                (DNNL_ARG_DST, dnnl_query_dst_md, userY, .y, true),
            ])
        }
        if transposedPD != nil, let out = forwardOp.slots.first(where: { $0.isOutput }) {
            biasAdd = try BiasAdd(output: out.primitiveMemory, channels: g.outChannels, context: ctx, name: name)
        } else {
            biasAdd = nil
        }
        backwardDataOp = try Op(bdpd, context: ctx, pool: pool, name: "backward-data convolution \(name)", slots: [
            (DNNL_ARG_DIFF_DST, dnnl_query_diff_dst_md, userY, .y, false),
            (DNNL_ARG_WEIGHTS, dnnl_query_weights_md, userW, .w, false),
            (DNNL_ARG_DIFF_SRC, dnnl_query_diff_src_md, userX, .x, true),
        ])
        backwardWeightsOp = try Op(bwpd, context: ctx, pool: pool, name: "backward-weights convolution \(name)", slots: [
            (DNNL_ARG_SRC, dnnl_query_src_md, userX, .x, false),
            (DNNL_ARG_DIFF_DST, dnnl_query_diff_dst_md, userY, .y, false),
            (DNNL_ARG_DIFF_WEIGHTS, dnnl_query_diff_weights_md, userW, .w, true),
            (DNNL_ARG_DIFF_BIAS, dnnl_query_diff_weights_md, userB, .bias, true),
        ])
    }

    // MARK: - Engine-level cache

    nonisolated(unsafe) private static var cache: [Conv3DGeometry: Conv3D] = [:]
    private static let cacheLock = NSLock()

    /// The shared `Conv3D` for `geometry`, built on first use: layers with one geometry reuse
    /// one set of primitives and buffers.
    public static func cached(_ geometry: Conv3DGeometry) throws -> Conv3D {
        cacheLock.lock()
        defer { cacheLock.unlock() }
        if let conv = cache[geometry] { return conv }
        let conv = try Conv3D(geometry)
        cache[geometry] = conv
        return conv
    }

    /// Drops every cached `Conv3D` (objects still referenced elsewhere stay alive).
    public static func clearCache() {
        cacheLock.lock()
        cache.removeAll()
        cacheLock.unlock()
    }

    // MARK: - Passes

    /// y = conv(x, w) + bias. x (N, Cin, D, H, W), w (Cout, Cin/groups, kD, kH, kW), bias (Cout)
    /// or nil for none; y (N, Cout, oD, oH, oW) is overwritten.
    public func forward(x: Tensor, w: Tensor, bias: Tensor?, y: Tensor) throws {
        checkX(x, "Conv3D.forward x")
        checkW(w, "Conv3D.forward w")
        if let bias { checkBias(bias, "Conv3D.forward bias") }
        checkY(y, "Conv3D.forward y")
        guard let flipped = flippedWeights else {
            try run(forwardOp, [x, w, bias ?? zeroBias, y])
            return
        }
        Conv3D.executionLock.lock()
        defer { Conv3D.executionLock.unlock() }
        flipTranspose(w, into: flipped)
        if let bias, let biasAdd {
            biasAdd.load(bias)
            try forwardOp.run(pointers([x, flipped, y]), context: context, held: &held, unchanged: [],
                              after: [(biasAdd.primitive, biasAdd.args)])
        } else {
            try forwardOp.run(pointers([x, flipped, y]), context: context, held: &held, unchanged: [])
            if let bias { addBias(bias, to: y) }
        }
        withExtendedLifetime((x, w, bias, y)) {}
    }

    /// wT[g, ci, co, a, b, c] = w[g, co, ci, kD-1-a, kH-1-b, kW-1-c]:
    /// w (G, Cout/G, Cin/G, k...) -> wT (G, Cin/G, Cout/G, k...).
    private func flipTranspose(_ w: Tensor, into wT: Tensor) {
        let g = geometry
        let (G, co, ci, kv) = (g.groups, g.outChannels / g.groups, g.inChannels / g.groups, g.kernelVolume)
        let src = w.data, dst = wT.data
        for grp in 0..<G {
            for o in 0..<co {
                for i in 0..<ci {
                    let from = src + ((grp * co + o) * ci + i) * kv
                    let to = dst + ((grp * ci + i) * co + o) * kv
                    for t in 0..<kv { to[t] = from[kv - 1 - t] }
                }
            }
        }
    }

    /// y[n, c, ...] += bias[c] on the plain (N, Cout, oD, oH, oW) output.
    private func addBias(_ bias: Tensor, to y: Tensor) {
        let g = geometry
        let plane = g.outputVoxels
        var p = y.data
        for _ in 0..<g.batch {
            for c in 0..<g.outChannels {
                let b = bias.data[c]
                for i in 0..<plane { p[i] += b }
                p += plane
            }
        }
    }

    /// dx = dL/dx given dy = dL/dy. dy (N, Cout, oD, oH, oW), w (Cout, Cin/groups, k...);
    /// dx (N, Cin, D, H, W) is overwritten.
    public func backwardData(dy: Tensor, w: Tensor, dx: Tensor) throws {
        checkY(dy, "Conv3D.backwardData dy")
        checkW(w, "Conv3D.backwardData w")
        checkX(dx, "Conv3D.backwardData dx")
        try run(backwardDataOp, [dy, w, dx])
    }

    /// dw = dL/dw and dbias = dL/dbias (sum of dy over batch and voxels) given x and dy.
    /// x (N, Cin, D, H, W), dy (N, Cout, oD, oH, oW); dw (Cout, Cin/groups, k...) and dbias
    /// (Cout) are overwritten; pass dbias nil when there is no bias.
    public func backwardWeights(x: Tensor, dy: Tensor, dw: Tensor, dbias: Tensor?) throws {
        checkX(x, "Conv3D.backwardWeights x")
        checkY(dy, "Conv3D.backwardWeights dy")
        checkW(dw, "Conv3D.backwardWeights dw")
        if let dbias { checkBias(dbias, "Conv3D.backwardWeights dbias") }
        try run(backwardWeightsOp, [x, dy, dw, dbias ?? scratchBias])
    }

    /// Both backward passes in one call: dw, dbias (backward-weights) and, unless dx is nil (a
    /// first layer needs no input gradient), dx (backward-data). Same shapes as the two methods;
    /// outputs are overwritten. Cheaper than calling them in turn: dy is reordered into oneDNN's
    /// layout once and read by both primitives.
    ///
    /// `xUnchangedSinceForward`: pass true only when `x` is the tensor given to this object's
    /// last `forward` and its values have not changed since. The engine then reuses the copy of x
    /// it made for the forward pass, if nothing has overwritten that copy meanwhile (it tracks
    /// that itself, so calls for other layers sharing this object are safe).
    public func backward(x: Tensor, dy: Tensor, w: Tensor, dx: Tensor?, dw: Tensor, dbias: Tensor?,
                         xUnchangedSinceForward: Bool = false) throws {
        checkX(x, "Conv3D.backward x")
        checkY(dy, "Conv3D.backward dy")
        checkW(w, "Conv3D.backward w")
        if let dx { checkX(dx, "Conv3D.backward dx") }
        checkW(dw, "Conv3D.backward dw")
        if let dbias { checkBias(dbias, "Conv3D.backward dbias") }
        Conv3D.executionLock.lock()
        defer { Conv3D.executionLock.unlock() }
        // Weights first: backward-data may write dx into the buffer that holds x.
        let xPointer = UnsafeMutableRawPointer(x.data), dyPointer = UnsafeMutableRawPointer(dy.data)
        try backwardWeightsOp.run(pointers([x, dy, dw, dbias ?? scratchBias]), context: context, held: &held,
                                  unchanged: xUnchangedSinceForward ? [xPointer] : [])
        if let dx {
            // dy already sits in the y-role buffer when both primitives want the same layout.
            try backwardDataOp.run(pointers([dy, w, dx]), context: context, held: &held, unchanged: [dyPointer])
        }
        withExtendedLifetime((x, dy, w, dx, dw, dbias)) {}
    }

    private func pointers(_ tensors: [Tensor]) -> [UnsafeMutableRawPointer] {
        tensors.map { UnsafeMutableRawPointer($0.data) }
    }

    private func run(_ op: Op, _ tensors: [Tensor]) throws {
        Conv3D.executionLock.lock()
        defer { Conv3D.executionLock.unlock() }
        try op.run(pointers(tensors), context: context, held: &held, unchanged: [])
        withExtendedLifetime(tensors) {}
    }

    // MARK: - Shape checks (programmer errors trap)

    private var folded: Bool { geometry.batch == 1 && geometry.groups > 1 }

    private func check(_ t: Tensor, _ expected: [Int], _ alternative: [Int]?, _ what: String) {
        if t.shape == expected || (alternative != nil && t.shape == alternative!) { return }
        let alt = alternative.map { " or \($0)" } ?? ""
        preconditionFailure("\(what): shape \(t.shape), expected \(expected)\(alt) for \(geometry)")
    }

    private func checkX(_ t: Tensor, _ what: String) {
        let g = geometry
        check(t, g.xShape, folded ? [g.groups, g.inChannels / g.groups] + g.inputSize : nil, what)
    }

    private func checkY(_ t: Tensor, _ what: String) {
        let g = geometry
        check(t, g.yShape, folded ? [g.groups, g.outChannels / g.groups] + g.outputSize : nil, what)
    }

    private func checkW(_ t: Tensor, _ what: String) {
        let g = geometry
        check(t, g.weightShape,
              g.groups > 1 ? [g.groups, g.outChannels / g.groups, g.inChannels / g.groups] + g.kernel : nil, what)
    }

    private func checkBias(_ t: Tensor, _ what: String) {
        let g = geometry
        check(t, g.biasShape, g.groups > 1 ? [g.groups, g.outChannels / g.groups] : nil, what)
    }

    /// The layouts oneDNN chose, for logs and the benchmark: "src aBcde16b, weights ..., dst ...".
    public var layoutSummary: String {
        func names(_ op: Op) -> String {
            op.slots.map { slot in
                let reorder = slot.reorder.map { " (reorder \($0.desc.implementation))" } ?? ""
                return "\(slot.argName) \(slot.primitiveMemory.desc.layoutName)\(reorder)"
            }.joined(separator: ", ")
        }
        return "forward [\(names(forwardOp))]; backward-data [\(names(backwardDataOp))]; backward-weights [\(names(backwardWeightsOp))]"
    }
}

/// What a buffer holds, so inner buffers can be shared across primitives (one role per primitive).
private enum Role: Hashable { case x, w, bias, y }

/// Library-allocated buffers in oneDNN layouts, shared per role when the layouts match.
private final class BufferPool {
    let context: DNNLContext
    var buffers: [Role: [DNNLMemory]] = [:]
    init(context: DNNLContext) { self.context = context }

    func memory(_ desc: MemoryDesc, role: Role) throws -> DNNLMemory {
        if let m = buffers[role, default: []].first(where: { $0.desc == desc }) { return m }
        let m = try DNNLMemory(desc, context: context, allocate: true)
        buffers[role, default: []].append(m)
        return m
    }
}

/// One argument of one primitive: the caller's plain tensor, and when oneDNN wants another
/// layout, an inner buffer with the reorder between them (before the primitive for inputs, after
/// it for outputs).
private final class Slot {
    let arg: Int32
    let isOutput: Bool
    let user: DNNLMemory
    let inner: DNNLMemory?
    let reorder: DNNLPrimitive?
    let reorderArgs: [dnnl_exec_arg_t]
    var primitiveMemory: DNNLMemory { inner ?? user }
    var argName: String {
        switch arg {
        case DNNL_ARG_SRC: return "src"
        case DNNL_ARG_WEIGHTS: return "weights"
        case DNNL_ARG_BIAS: return "bias"
        case DNNL_ARG_DST: return "dst"
        case DNNL_ARG_DIFF_SRC: return "diff_src"
        case DNNL_ARG_DIFF_DST: return "diff_dst"
        case DNNL_ARG_DIFF_WEIGHTS: return "diff_weights"
        case DNNL_ARG_DIFF_BIAS: return "diff_bias"
        default: return "arg \(arg)"
        }
    }

    init(arg: Int32, isOutput: Bool, userDesc: MemoryDesc, innerDesc: MemoryDesc, role: Role,
         pool: BufferPool, context: DNNLContext) throws {
        self.arg = arg
        self.isOutput = isOutput
        user = try DNNLMemory(userDesc, context: context, allocate: false)
        if innerDesc == userDesc {
            inner = nil
            reorder = nil
            reorderArgs = []
        } else {
            let m = try pool.memory(innerDesc, role: role)
            let (from, to) = isOutput ? (m, user) : (user, m)
            let pd = try DNNLPrimitiveDesc(reorderFrom: from.desc, to: to.desc, context: context)
            inner = m
            reorder = try DNNLPrimitive(pd, "reorder \(from.desc.layoutName) -> \(to.desc.layoutName)")
            reorderArgs = [dnnl_exec_arg_t(arg: DNNL_ARG_FROM, memory: from.handle),
                           dnnl_exec_arg_t(arg: DNNL_ARG_TO, memory: to.handle)]
        }
    }
}

/// A primitive with its slots and prebuilt argument list.
private final class Op {
    let primitive: DNNLPrimitive
    let slots: [Slot]
    let args: [dnnl_exec_arg_t]
    let name: String

    init(_ pd: DNNLPrimitiveDesc, context: DNNLContext, pool: BufferPool, name: String,
         slots specs: [(arg: Int32, query: dnnl_query_t, user: MemoryDesc, role: Role, isOutput: Bool)]) throws {
        self.name = name
        primitive = try DNNLPrimitive(pd, name)
        var slots = [Slot]()
        for s in specs {
            // Bias memories are the weights query's index 1.
            let index: Int32 = s.role == .bias ? 1 : 0
            slots.append(try Slot(arg: s.arg, isOutput: s.isOutput, userDesc: s.user,
                                  innerDesc: pd.md(s.query, index: index), role: s.role, pool: pool, context: context))
        }
        self.slots = slots
        args = slots.map { dnnl_exec_arg_t(arg: $0.arg, memory: $0.primitiveMemory.handle) }
    }

    /// Binds caller storage (one pointer per slot, in slot order), reorders inputs in, runs,
    /// reorders outputs out, and waits.
    /// `held` records which caller storage each inner buffer holds a copy of; an input whose
    /// storage is in `unchanged` (the caller vouches its values did not change since it was
    /// loaded) and whose inner buffer still holds it is not reordered again.
    /// Every input read afresh (not vouched for) and every output written may hold new values:
    /// older copies of that storage in other buffers are forgotten, so a later promise
    /// ("unchanged since the last forward") can only ever match a copy made by that forward,
    /// even when the forward read the storage in place or storage was freed and reused.
    /// `after` runs right after the primitive, before the outputs are reordered out.
    func run(_ pointers: [UnsafeMutableRawPointer], context: DNNLContext,
             held: inout [ObjectIdentifier: UnsafeMutableRawPointer], unchanged: [UnsafeMutableRawPointer],
             after: [(DNNLPrimitive, [dnnl_exec_arg_t])] = []) throws {
        precondition(pointers.count == slots.count, "Op.run: \(pointers.count) tensors for \(slots.count) slots")
        for (slot, p) in zip(slots, pointers) { try slot.user.setHandle(p) }
        func forget(_ p: UnsafeMutableRawPointer) {
            if held.values.contains(p) { held = held.filter { $0.value != p } }
        }
        for (slot, p) in zip(slots, pointers) where !slot.isOutput {
            if let inner = slot.inner, held[ObjectIdentifier(inner)] == p, unchanged.contains(p) { continue }
            forget(p)
            guard let r = slot.reorder, let inner = slot.inner else { continue }
            let id = ObjectIdentifier(inner)
            held[id] = nil
            try r.execute(slot.reorderArgs, context: context, "reorder into \(name)")
            held[id] = p
        }
        for (slot, p) in zip(slots, pointers) where slot.isOutput {
            forget(p)
            if let inner = slot.inner { held[ObjectIdentifier(inner)] = nil }
        }
        try primitive.execute(args, context: context, name)
        for (p, a) in after { try p.execute(a, context: context, "after \(name)") }
        for slot in slots where slot.isOutput {
            if let r = slot.reorder { try r.execute(slot.reorderArgs, context: context, "reorder out of \(name)") }
        }
        try context.wait()
    }
}

/// out[., c, ...] += bias[c] in place on a convolution output in oneDNN's layout (5D, channel dim
/// b): a oneDNN binary add with the bias broadcast over batch and voxels.
private final class BiasAdd {
    let primitive: DNNLPrimitive
    let args: [dnnl_exec_arg_t]
    /// (1, C, 1, 1, 1) in the output's channel blocking, zero-padded: element c at offset c.
    private let bias: DNNLMemory
    private let channels: Int

    /// Nil when the output's layout is not one of the plain or channel-blocked ones handled here,
    /// when oneDNN would run it with a reference (slow) kernel, or for one channel: oneDNN 2.6's
    /// jit binary adds nothing when src1 is a single element in a channel-blocked layout.
    init?(output: DNNLMemory, channels: Int, context: DNNLContext, name: String) throws {
        guard channels > 1 else { return nil }
        let tags: [String: dnnl_format_tag_t] = ["abcde": dnnl_abcde, "acdeb": dnnl_acdeb, "aBcde4b": dnnl_aBcde4b,
                                                 "aBcde8b": dnnl_aBcde8b, "aBcde16b": dnnl_aBcde16b]
        guard output.desc.raw.ndims == 5, let tag = tags[output.desc.layoutName] else { return nil }
        let biasDesc = try MemoryDesc(dims: [1, channels, 1, 1, 1], tag: tag)
        var bd = dnnl_binary_desc_t()
        var (s0, s1, d) = (output.desc.raw, biasDesc.raw, output.desc.raw)
        try dnnlCheck(dnnl_binary_desc_init(&bd, dnnl_binary_add, &s0, &s1, &d), "describe the bias add of \(name)")
        let pd = try DNNLPrimitiveDesc(op: &bd, context: context, hint: nil, "create the bias add of \(name)")
        guard pd.implementation.hasPrefix("jit") else { return nil }
        primitive = try DNNLPrimitive(pd, "bias add of \(name)")
        bias = try DNNLMemory(biasDesc, context: context, allocate: true)
        self.channels = channels
        let padded = biasDesc.byteSize / 4
        bias.data.initialize(repeating: 0, count: padded)
        args = [dnnl_exec_arg_t(arg: DNNL_ARG_SRC_0, memory: output.handle),
                dnnl_exec_arg_t(arg: DNNL_ARG_SRC_1, memory: bias.handle),
                dnnl_exec_arg_t(arg: DNNL_ARG_DST, memory: output.handle)]
    }

    /// Copies the caller's (C) bias in (call under the execution lock, before running).
    func load(_ values: Tensor) {
        precondition(values.count == channels, "BiasAdd: \(values.count) values for \(channels) channels")
        bias.data.update(from: values.data, count: channels)
    }
}
