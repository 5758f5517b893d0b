// DNNLConv3D: forward, backward-data and backward-weights of one 3D convolution geometry on oneDNN.
import CDNNL
import Foundation

/// One 3D convolution geometry compiled for oneDNN: three primitives (forward_training,
/// backward-data, backward-weights with bias) on activations in the plan's layout (blocked:
/// format tag `any`, oneDNN's choice; or channels-last), and the reorders between those layouts
/// and the caller's plain tensors, built once and reused on every call. The forward pass runs as
/// the plan says: direct, or as the backward-data primitive of the transposed convolution
/// (`Conv3DPlan.ForwardStrategy`). Which layout and strategy is `Conv3DPlan.choose`'s decision;
/// this class builds what it is given.
///
/// Forward also fills the saved copy of x (`Conv3DSaved`) in `savedLayout`: backward-weights'
/// own layout, or plain when another implementation reads it. Tensors, shapes and the
/// serialisation of calls are `Conv3D`'s (this object has its own stream and reuses its buffers).
///
/// With `Layout.channelsLastPerGroup` the primitives are built for one group (`part`: ungrouped,
/// channels-last) and every pass runs them once per group on that group's slice of each tensor
/// (contiguous at batch 1), one group after another on the same inner buffers.
final class DNNLConv3D {
    let geometry: Conv3DGeometry
    /// The geometry the primitives run: `geometry`, or one of its groups (per-group layout).
    private let part: Conv3DGeometry
    /// How many times each pass runs `part`: the groups (per-group layout), else 1.
    private let parts: Int
    /// Floats of one part of x, y, the weights, the bias and the saved copy.
    private let partFloats: (x: Int, y: Int, w: Int, bias: Int, saved: Int)
    /// oneDNN's implementation names for (forward, backward-data, backward-weights).
    let implementations: (forward: String, backwardData: String, backwardWeights: String)

    private let context: DNNLContext
    private let forwardOp: Op
    private let backwardDataOp: Op
    private let backwardWeightsOp: Op
    /// (Cout) zeros for forward without bias.
    private let zeroBias: Tensor
    /// (Cout) sink for backward-weights without dbias.
    private let scratchBias: Tensor
    /// The layout of the saved copy of x: the one backward-weights reads (its src descriptor), or plain.
    private let savedLayout: MemoryDesc
    /// Floats of one saved copy (every part's).
    var savedFloats: Int { parts * partFloats.saved }
    /// Plain x into the saved layout (nil when that is plain).
    private let savedReorder: SavedReorder?
    /// How forward fills the saved copy (see `SaveStep`).
    private let saveStep: SaveStep
    /// The inner buffers, bound to a scratch lease per call.
    private let pool: BufferPool
    /// Where in a lease a forward without a copy puts x in the forward primitive's layout: the
    /// pooled x buffer of that layout (backward-data's dx), idle during forward; nil: after the pool.
    private let forwardXOffset: Int?

    typealias ForwardStrategy = Conv3DPlan.ForwardStrategy

    let forwardStrategy: ForwardStrategy
    /// (Cin, Cout / groups, kD, kH, kW): the flipped, transposed kernel for `.transposedBackwardData`.
    private let flippedWeights: Tensor?
    /// For `.transposedBackwardData`: adds the bias to the primitive's output in oneDNN's layout,
    /// before it is reordered out (a oneDNN binary add over the cache-hot buffer, on all cores),
    /// instead of a separate pass over the plain output. Nil when oneDNN has no jit kernel for it.
    private let biasAdd: BiasAdd?

    /// Builds the primitives for `geometry` with activations in `layout`; throws a `GeometryError`
    /// for an invalid geometry or a `strategy` that does not apply to it, and an `EngineError` if
    /// oneDNN cannot run it. `savePlain`: the saved copy of x is plain NCDHW (another
    /// implementation reads it).
    init(_ geometry: Conv3DGeometry, layout: Conv3DPlan.Layout, forward strategy: ForwardStrategy, savePlain: Bool = false) throws {
        try geometry.validate()
        guard layout.applies(to: geometry, strategy: strategy) else {
            throw GeometryError("layout \(layout.rawValue) needs batch 1 (the per-example form) and the direct forward; \(geometry) with \(strategy.rawValue)")
        }
        self.geometry = geometry
        let perGroup = layout == .channelsLastPerGroup && geometry.groups > 1
        parts = perGroup ? geometry.groups : 1
        var g = geometry
        if perGroup { g.groups = 1; g.inChannels /= parts; g.outChannels /= parts }
        part = g
        let ctx = try DNNLContext.withOwnStream()
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

        let (anyX, anyY, fpd, bdpd, bwpd) = try describe(layout == .blocked ? dnnl_format_tag_any : dnnl_acdeb)

        // The transposed convolution whose backward-data is this forward: src' y-shaped,
        // dst' x-shaped, weights' (Cin, Cout, k) (grouped (G, Cin/G, Cout/G, k)), pads k-1-p.
        var transposedPD: DNNLPrimitiveDesc?
        let wtDims = g.groups == 1 ? [g.inChannels, g.outChannels] + g.kernel
            : [g.groups, g.inChannels / g.groups, g.outChannels / g.groups] + g.kernel
        if strategy == .transposedBackwardData {
            guard g.isTransposable else {
                throw GeometryError("forward strategy transposedBackwardData needs stride 1 and padding below the kernel size; use .direct for \(g)")
            }
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
            transposedPD = try DNNLPrimitiveDesc(op: &tbd, context: ctx, hint: tfpd,
                                                 "create the transposed backward-data convolution of \(name)")
        }
        forwardStrategy = strategy
        flippedWeights = transposedPD == nil ? nil : Tensor(shape: wtDims)

        implementations = (transposedPD.map { "\($0.implementation) (backward-data of the transposed convolution)" }
                               ?? fpd.implementation,
                           bdpd.implementation, bwpd.implementation)

        // Inner (oneDNN-layout) buffers are shared per role across the three primitives when the
        // layouts agree: no primitive uses one role twice.
        let pool = BufferPool(context: ctx)
        // x is saved in backward-weights' layout. When the forward primitive reads x in that same
        // layout, its inner x buffer IS the saved copy (a memory object of its own, pointed at a
        // fresh buffer on each call); otherwise forward fills the copy separately.
        let saved = savePlain ? userX : bwpd.md(dnnl_query_src_md)
        savedLayout = saved
        partFloats = (g.xShape.reduce(1, *), g.yShape.reduce(1, *), g.weightShape.reduce(1, *), g.outChannels, saved.byteSize / 4)
        let forwardX = transposedPD?.md(dnnl_query_diff_dst_md) ?? fpd.md(dnnl_query_src_md)
        if saved == userX {
            savedReorder = nil
        } else {
            let from = try DNNLMemory(userX, context: ctx, allocate: false)
            let to = try DNNLMemory(saved, context: ctx, allocate: false)
            let pd = try DNNLPrimitiveDesc(reorderFrom: userX, to: saved, context: ctx)
            savedReorder = SavedReorder(primitive: try DNNLPrimitive(pd, "reorder x into its saved copy \(name)"), from: from, to: to)
        }
        if forwardX == saved {
            saveStep = saved == userX ? .copyPlain : .forwardReorder
        } else {
            saveStep = .separate
        }
        let dedicatedX = saveStep == .forwardReorder
        if let tpd = transposedPD {
            let userWT = try MemoryDesc(dims: wtDims, tag: wTag)
            forwardOp = try Op(tpd, context: ctx, pool: pool, name: "forward (transposed backward-data) \(name)", slots: [
                (DNNL_ARG_DIFF_DST, dnnl_query_diff_dst_md, userX, .x, false),
                (DNNL_ARG_WEIGHTS, dnnl_query_weights_md, userWT, .w, false),
                (DNNL_ARG_DIFF_SRC, dnnl_query_diff_src_md, userY, .y, true),
            ], dedicated: dedicatedX ? [0] : [])
        } else {
            forwardOp = try Op(fpd, context: ctx, pool: pool, name: "forward convolution \(name)", slots: [
                (DNNL_ARG_SRC, dnnl_query_src_md, userX, .x, false),
                (DNNL_ARG_WEIGHTS, dnnl_query_weights_md, userW, .w, false),
                (DNNL_ARG_BIAS, dnnl_query_weights_md, userB, .bias, false),
                (DNNL_ARG_DST, dnnl_query_dst_md, userY, .y, true),
            ], dedicated: dedicatedX ? [0] : [])
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
            // Bound to the saved copy, already in this primitive's layout: no reorder.
            (DNNL_ARG_SRC, dnnl_query_src_md, saved, .x, false),
            (DNNL_ARG_DIFF_DST, dnnl_query_diff_dst_md, userY, .y, false),
            (DNNL_ARG_DIFF_WEIGHTS, dnnl_query_diff_weights_md, userW, .w, true),
            (DNNL_ARG_DIFF_BIAS, dnnl_query_diff_weights_md, userB, .bias, true),
        ])
        // dy goes into one inner buffer read by both backward primitives when their layouts agree.
        let bwDy = backwardWeightsOp.slots[1].inner, bdDy = backwardDataOp.slots[0].inner
        dyShared = bwDy != nil && bwDy === bdDy
        self.pool = pool
        forwardXOffset = dedicatedX ? pool.offset(of: forwardOp.slots[0].inner!.desc, role: .x) : nil
    }

    /// Runs `body` with the inner buffers bound to a `ScratchArena` lease; `extra` more bytes
    /// follow them at `pool.bytes` (for a forward's dedicated x buffer when no copy is kept).
    private func withInnerBuffers<R>(extra: Int = 0, _ body: (UnsafeMutableRawPointer?) throws -> R) throws -> R {
        let total = pool.bytes + extra
        guard total > 0 else { return try body(nil) }
        return try ScratchArena.shared.withLease(bytes: total) { base in
            try pool.bind(base)
            return try body(base)
        }
    }

    /// Whether backward-data reads dy from the buffer backward-weights reordered it into.
    private let dyShared: Bool

    // MARK: - Passes

    /// y = conv(x, w) + bias (bias nil: none), overwriting y; fills and returns the saved copy of x
    /// (with `saving` false, keeps none and returns nil: the caller recomputes or re-saves it).
    func forward(x: Tensor, w: Tensor, bias: Tensor?, y: Tensor, saving: Bool = true) throws -> Tensor? {
        let copy = saving ? Tensor(uninitializedShape: [savedFloats]) : nil
        let dedicated = !saving && saveStep == .forwardReorder
        let extra = dedicated && forwardXOffset == nil ? partFloats.saved * 4 : 0
        try withInnerBuffers(extra: extra) { scratch in
            for p in 0..<parts {
                try forwardBound(part: p, x: x, w: w, bias: bias, y: y, copy: copy,
                                 dedicatedX: dedicated ? scratch! + (forwardXOffset ?? pool.bytes) : nil)
            }
        }
        withExtendedLifetime((x, w, bias, y)) {}
        return copy
    }

    /// Part `p` of `t`, whose parts hold `floats` each (the whole tensor when there is one part).
    private func at(_ t: Tensor, _ p: Int, _ floats: Int) -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer(t.data + p * floats)
    }

    /// `forward` of part `p` with the inner buffers bound; x's dedicated inner buffer is the copy, else `dedicatedX`.
    private func forwardBound(part p: Int, x: Tensor, w: Tensor, bias: Tensor?, y: Tensor, copy: Tensor?,
                              dedicatedX: UnsafeMutableRawPointer?) throws {
        // The forward primitive's x: the caller's tensor, or the saved copy when it is in its layout.
        var xPointer = at(x, p, partFloats.x)
        let copyPointer = copy.map { at($0, p, partFloats.saved) }
        var inner: [Int: UnsafeMutableRawPointer] = [:]
        switch saveStep {
        case .forwardReorder: inner[0] = copyPointer ?? dedicatedX!
        case .copyPlain:
            if let copyPointer {
                copyPointer.copyMemory(from: xPointer, byteCount: partFloats.x * 4)
                xPointer = copyPointer
            }
        case .separate: if let copy { try save(part: p, x, into: copy) }
        }
        let wPointer = at(w, p, partFloats.w), yPointer = at(y, p, partFloats.y)
        let biasPointer = bias.map { at($0, p, partFloats.bias) }
        if let flipped = flippedWeights {
            flipTranspose(wPointer, into: flipped)
            let wT = at(flipped, 0, 0)
            if let biasPointer, let biasAdd {
                biasAdd.load(biasPointer)
                try forwardOp.run([xPointer, wT, yPointer], inner: inner, context: context,
                                  after: [(biasAdd.primitive, biasAdd.args)])
            } else {
                try forwardOp.run([xPointer, wT, yPointer], inner: inner, context: context)
                if let biasPointer { addBias(biasPointer, to: yPointer) }
            }
        } else {
            try forwardOp.run([xPointer, wPointer, biasPointer ?? at(zeroBias, 0, 0), yPointer], inner: inner, context: context)
        }
    }

    /// Plain x (N, Cin, D, H, W) into `copy` in the saved layout (when another implementation ran forward).
    func save(_ x: Tensor, into copy: Tensor) throws {
        for p in 0..<parts { try save(part: p, x, into: copy) }
        withExtendedLifetime((x, copy)) {}
    }

    /// Part `p` of plain x into its part of `copy` (the caller keeps both alive).
    private func save(part p: Int, _ x: Tensor, into copy: Tensor) throws {
        let from = at(x, p, partFloats.x), to = at(copy, p, partFloats.saved)
        guard let r = savedReorder else {
            to.copyMemory(from: from, byteCount: partFloats.x * 4)
            return
        }
        try r.from.setHandle(from)
        try r.to.setHandle(to)
        try r.primitive.execute([dnnl_exec_arg_t(arg: DNNL_ARG_FROM, memory: r.from.handle),
                                 dnnl_exec_arg_t(arg: DNNL_ARG_TO, memory: r.to.handle)],
                                context: context, "reorder x into its saved copy")
        try context.wait()
    }

    /// wT[g, ci, co, a, b, c] = w[g, co, ci, kD-1-a, kH-1-b, kW-1-c]:
    /// w (G, Cout/G, Cin/G, k...) -> wT (G, Cin/G, Cout/G, k...), for the geometry the primitives run.
    private func flipTranspose(_ w: UnsafeMutableRawPointer, into wT: Tensor) {
        let g = part
        let (G, co, ci, kv) = (g.groups, g.outChannels / g.groups, g.inChannels / g.groups, g.kernelVolume)
        let src = w.assumingMemoryBound(to: Float.self), dst = wT.data
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

    /// y[n, c, ...] += bias[c] on the plain (N, Cout, oD, oH, oW) output of the geometry the primitives run.
    private func addBias(_ biasPointer: UnsafeMutableRawPointer, to yPointer: UnsafeMutableRawPointer) {
        let g = part
        let plane = g.outputVoxels
        let bias = biasPointer.assumingMemoryBound(to: Float.self)
        var p = yPointer.assumingMemoryBound(to: Float.self)
        for _ in 0..<g.batch {
            for c in 0..<g.outChannels {
                let b = bias[c]
                for i in 0..<plane { p[i] += b }
                p += plane
            }
        }
    }

    /// dx (N, Cin, D, H, W), overwritten, from dy (N, Cout, oD, oH, oW) and w.
    func backwardData(dy: Tensor, w: Tensor, dx: Tensor) throws {
        try withInnerBuffers { _ in
            try StepProfile.measure(.convBackwardData) {
                for p in 0..<parts {
                    try backwardDataOp.run([at(dy, p, partFloats.y), at(w, p, partFloats.w), at(dx, p, partFloats.x)], context: context)
                }
            }
        }
        withExtendedLifetime((dy, w, dx)) {}
    }

    /// dw, dbias (nil: none) from the saved copy of x and dy; with dx (and w), backward-data too,
    /// reading dy from the buffer backward-weights reordered it into when the layouts agree.
    func backward(_ copy: Tensor, dy: Tensor, w: Tensor?, dx: Tensor?, dw: Tensor, dbias: Tensor?) throws {
        precondition(copy.count == savedFloats, "DNNLConv3D.backward: saved copy of \(copy.count) floats, expected \(savedFloats)")
        try withInnerBuffers { _ in
            for p in 0..<parts { try backwardBound(part: p, copy, dy: dy, w: w, dx: dx, dw: dw, dbias: dbias) }
        }
        withExtendedLifetime((copy, dy, w, dx, dw, dbias)) {}
    }

    /// Part `p` of `backward` (the caller keeps the tensors alive).
    private func backwardBound(part p: Int, _ copy: Tensor, dy: Tensor, w: Tensor?, dx: Tensor?, dw: Tensor, dbias: Tensor?) throws {
        let dyPointer = at(dy, p, partFloats.y)
        try StepProfile.measure(.convBackwardWeights) {
            try backwardWeightsOp.run([at(copy, p, partFloats.saved), dyPointer, at(dw, p, partFloats.w),
                                       dbias.map { at($0, p, partFloats.bias) } ?? at(scratchBias, 0, 0)], context: context)
        }
        if let dx, let w {
            try StepProfile.measure(.convBackwardData) {
                try backwardDataOp.run([dyPointer, at(w, p, partFloats.w), at(dx, p, partFloats.x)], context: context,
                                       skipReorder: dyShared ? [0] : [])
            }
        }
    }

    /// The layouts oneDNN chose, for logs and the benchmark: "src aBcde16b, weights ..., dst ...".
    var layoutSummary: String {
        func names(_ op: Op) -> String {
            op.slots.map { slot in
                let reorder = slot.reorder.map { " (reorder \($0.desc.implementation))" } ?? ""
                return "\(slot.argName) \(slot.primitiveMemory.desc.layoutName)\(reorder)"
            }.joined(separator: ", ")
        }
        let save: String
        switch saveStep {
        case .forwardReorder: save = "forward's reorder"
        case .copyPlain: save = "copy"
        case .separate: save = savedReorder == nil ? "separate copy" : "separate reorder"
        }
        return "forward [\(names(forwardOp))]; backward-data [\(names(backwardDataOp))]; backward-weights [\(names(backwardWeightsOp))]; saved x \(savedLayout.layoutName) (\(save))"
    }
}

/// What a buffer holds, so inner buffers can be shared across primitives (one role per primitive).
private enum Role: Hashable { case x, w, bias, y }

/// The inner buffers in oneDNN layouts, shared per role when the layouts match, laid out one
/// after another in a scratch lease (`ScratchArena`): each call binds them to its lease, so an
/// engine holds no activation-sized memory between calls.
private final class BufferPool {
    let context: DNNLContext
    var buffers: [Role: [DNNLMemory]] = [:]
    /// Every buffer with its byte offset in a lease.
    private(set) var placed: [(memory: DNNLMemory, offset: Int)] = []
    /// Bytes of a lease that holds every buffer (each starting on a 4 KiB page).
    private(set) var bytes = 0
    init(context: DNNLContext) { self.context = context }

    func memory(_ desc: MemoryDesc, role: Role) throws -> DNNLMemory {
        if let m = buffers[role, default: []].first(where: { $0.desc == desc }) { return m }
        let m = try DNNLMemory(desc, context: context, allocate: false)
        buffers[role, default: []].append(m)
        placed.append((m, bytes))
        bytes += (desc.byteSize + 4095) / 4096 * 4096
        return m
    }

    /// The offset of the buffer for `desc` in `role`, if there is one.
    func offset(of desc: MemoryDesc, role: Role) -> Int? {
        guard let m = buffers[role]?.first(where: { $0.desc == desc }) else { return nil }
        return placed.first { $0.memory === m }?.offset
    }

    /// Points every buffer into `base` (a lease of at least `bytes`).
    func bind(_ base: UnsafeMutableRawPointer) throws {
        for p in placed { try p.memory.setHandle(base + p.offset) }
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

    /// `dedicated`: the inner buffer is not from the pool but a memory object of its own, pointed
    /// at caller-provided storage before each run (`Op.run`'s `inner`).
    init(arg: Int32, isOutput: Bool, userDesc: MemoryDesc, innerDesc: MemoryDesc, role: Role,
         pool: BufferPool, context: DNNLContext, dedicated: Bool) throws {
        self.arg = arg
        self.isOutput = isOutput
        user = try DNNLMemory(userDesc, context: context, allocate: false)
        if innerDesc == userDesc {
            inner = nil
            reorder = nil
            reorderArgs = []
        } else {
            let m = dedicated ? try DNNLMemory(innerDesc, context: context, allocate: false)
                : try pool.memory(innerDesc, role: role)
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
         slots specs: [(arg: Int32, query: dnnl_query_t, user: MemoryDesc, role: Role, isOutput: Bool)],
         dedicated: Set<Int> = []) throws {
        self.name = name
        primitive = try DNNLPrimitive(pd, name)
        var slots = [Slot]()
        for (i, s) in specs.enumerated() {
            // Bias memories are the weights query's index 1.
            let index: Int32 = s.role == .bias ? 1 : 0
            slots.append(try Slot(arg: s.arg, isOutput: s.isOutput, userDesc: s.user,
                                  innerDesc: pd.md(s.query, index: index), role: s.role, pool: pool, context: context,
                                  dedicated: dedicated.contains(i)))
        }
        self.slots = slots
        args = slots.map { dnnl_exec_arg_t(arg: $0.arg, memory: $0.primitiveMemory.handle) }
    }

    /// Binds caller storage (one pointer per slot, in slot order) and, for dedicated slots, the
    /// storage of their inner buffer (`inner`, by slot index); reorders inputs in (except the
    /// slots in `skipReorder`, whose inner buffer already holds this input), runs, reorders
    /// outputs out, and waits. `after` runs right after the primitive, before the outputs are
    /// reordered out.
    func run(_ pointers: [UnsafeMutableRawPointer], inner: [Int: UnsafeMutableRawPointer] = [:], context: DNNLContext,
             skipReorder: Set<Int> = [], after: [(DNNLPrimitive, [dnnl_exec_arg_t])] = []) throws {
        precondition(pointers.count == slots.count, "Op.run: \(pointers.count) tensors for \(slots.count) slots")
        for (slot, p) in zip(slots, pointers) { try slot.user.setHandle(p) }
        for (i, p) in inner { try slots[i].inner!.setHandle(p) }
        for (i, slot) in slots.enumerated() where !slot.isOutput && !skipReorder.contains(i) {
            if let r = slot.reorder { try r.execute(slot.reorderArgs, context: context, "reorder into \(name)") }
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

    /// Copies the caller's (C) bias in (call under the engine's lock, before running).
    func load(_ values: UnsafeMutableRawPointer) {
        bias.data.update(from: values.assumingMemoryBound(to: Float.self), count: channels)
    }
}

/// How forward fills the saved copy of x (in backward-weights' layout).
private enum SaveStep: Equatable {
    /// The forward primitive reorders x into that layout anyway: its inner x buffer is the copy.
    case forwardReorder
    /// Forward and backward-weights both read plain x: copy it, and forward reads the copy.
    case copyPlain
    /// The forward primitive reads x in another layout: fill the copy first (`save`).
    case separate
}

/// A reorder from the caller's plain x into the saved layout, on memories bound per call.
private final class SavedReorder {
    let primitive: DNNLPrimitive
    let from: DNNLMemory
    let to: DNNLMemory
    init(primitive: DNNLPrimitive, from: DNNLMemory, to: DNNLMemory) {
        self.primitive = primitive; self.from = from; self.to = to
    }
}
