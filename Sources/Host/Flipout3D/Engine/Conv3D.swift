// Conv3D: one convolution geometry, each direction run by the implementation its plan names.
import Foundation

/// Forward, backward-data and backward-weights of one 3D convolution geometry, built from a
/// `Conv3DPlan` (oneDNN or the native kernels, per direction).
///
/// A training step per layer is `forward`, which returns a `Conv3DSaved` (the engine's own copy of
/// x, in the layout backward-weights reads), then `backward(saved, ...)` (both gradients; with
/// oneDNN dy is reordered once). `backwardData` and `backwardWeights` alone exist for callers that
/// need only one of them. The caller may change or free x after forward: backward reads only the
/// saved copy.
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
/// Each object serialises only its own calls (its buffers are reused between calls) and has its
/// own oneDNN stream; layers own their engines (`Conv3DEngines`), so two layers never wait for
/// each other. oneDNN and the native kernels use every core (OMP_NUM_THREADS) inside each call.
/// Shape mismatches, and a saved value from another engine, are programmer errors and trap.
public final class Conv3D {
    public let geometry: Conv3DGeometry
    public let plan: Conv3DPlan
    /// Built when some direction runs on oneDNN.
    private let dnnl: DNNLConv3D?
    /// Built when some direction runs natively.
    private let native: NativeConv3D?
    /// Built for a geometry that upsamples its input (then it runs every direction).
    private let upsampling: UpsamplingConv3D?
    private let lock = NSLock()

    public typealias ForwardStrategy = Conv3DPlan.ForwardStrategy

    /// Builds `plan` (default: `Conv3DPlan.choose(geometry)`) for `geometry`; throws a
    /// `GeometryError` for an invalid geometry or a plan that does not apply to it, and an
    /// `EngineError` if oneDNN cannot run it.
    public init(_ geometry: Conv3DGeometry, plan: Conv3DPlan? = nil) throws {
        try geometry.validate()
        let plan = plan ?? Conv3DPlan.choose(geometry)
        self.geometry = geometry
        self.plan = plan
        let directions = [plan.forward, plan.backwardData, plan.backwardWeights]
        if geometry.upsample != 1 {
            guard !directions.contains(where: \.isNative) else {
                throw GeometryError("the native kernels do not run an upsampling convolution; \(geometry) has a plan \(plan)")
            }
            upsampling = try UpsamplingConv3D(geometry, layout: plan.layout)
            native = nil
            dnnl = nil
            return
        }
        upsampling = nil
        let levels = directions.compactMap { d -> NativeLevel? in if case .native(let l) = d { return l } else { return nil } }
        if let level = levels.first {
            let forwardOK = !(plan.forward.isNative || plan.backwardWeights.isNative) || NativeConv3D.supportsForward(geometry)
            guard forwardOK && (!plan.backwardData.isNative || NativeConv3D.supportsBackwardData(geometry)) else {
                throw GeometryError("the native kernels need, in every direction, stride 1, k_w 1 or 3, at most 64 channels per group on each side and padding below the kernel; \(geometry) has a plan \(plan)")
            }
            guard levels.allSatisfy({ $0 == level }), level <= NativeLevel.supported else {
                throw GeometryError("plan \(plan): one native level per engine, at most \(NativeLevel.supported) on this CPU")
            }
            native = NativeConv3D(geometry, level: level, backwardData: plan.backwardData.isNative)
        } else {
            native = nil
        }
        dnnl = directions.contains(.onednn)
            ? try DNNLConv3D(geometry, layout: plan.layout, forward: plan.forwardStrategy, savePlain: plan.backwardWeights.isNative) : nil
    }

    /// A oneDNN engine (blocked layout) with a given forward strategy (tests compare strategies).
    public convenience init(_ geometry: Conv3DGeometry, forward strategy: ForwardStrategy) throws {
        try self.init(geometry, plan: .onednn(strategy))
    }

    /// The forward strategy in use: the plan's for a oneDNN forward, `.direct` for the native kernels.
    public var forwardStrategy: ForwardStrategy { plan.forward == .onednn ? dnnl?.forwardStrategy ?? .direct : .direct }

    /// Implementation names per direction, e.g. "jit:avx512_core" or "native avx2".
    public var implementations: (forward: String, backwardData: String, backwardWeights: String) {
        if let upsampling {
            // Forward is G's backward-data, backward-data G's forward (G: `UpsamplingConv3D.inner`).
            let i = upsampling.inner.implementations
            return ("\(i.backwardData) (upsampling, transposed)", "\(i.forward) (upsampling)", "\(i.backwardWeights) (upsampling)")
        }
        func name(_ i: Conv3DPlan.Implementation, _ onednn: (String, String, String) -> String) -> String {
            i == .onednn ? onednn(dnnl!.implementations.forward, dnnl!.implementations.backwardData,
                                  dnnl!.implementations.backwardWeights) : "\(i)"
        }
        return (name(plan.forward) { f, _, _ in f }, name(plan.backwardData) { _, d, _ in d },
                name(plan.backwardWeights) { _, _, w in w })
    }

    /// The layouts oneDNN chose (empty for an all-native plan).
    public var layoutSummary: String { upsampling?.inner.layoutSummary ?? dnnl?.layoutSummary ?? "plain NCDHW (native)" }

    // MARK: - Passes

    /// What a forward pass keeps of x for backward-weights.
    public enum InputSaving: Sendable {
        /// The engine's own copy of x, in backward-weights' layout (the default).
        case copy
        /// Nothing: the caller keeps x (or what x is computed from) and hands it back to
        /// `recomputeForward` or `saving(x:)` before backward. A copy of the bias is kept instead.
        case none
        /// x itself where backward-weights reads plain x (the native kernels): the caller hands x
        /// over and changes it no more until backward has run (a network's input made for this
        /// call alone). Elsewhere the same as `copy`.
        case adopt
    }

    /// How forwards inside this scope keep x (`Conv3D.$inputSaving.withValue(.none) { ... }`):
    /// a network's memory plan decides it around a layer's forward, which calls `forward` itself.
    @TaskLocal public static var inputSaving: InputSaving = .copy

    /// y = conv(x, w) + bias. x (N, Cin, D, H, W), w (Cout, Cin/groups, kD, kH, kW), bias (Cout)
    /// or nil for none; y (N, Cout, oD, oH, oW) is overwritten. Returns the engine's copy of x
    /// for `backward` / `backwardWeights` (x itself may change afterwards), or under
    /// `inputSaving == .none` a value without it.
    public func forward(x: Tensor, w: Tensor, bias: Tensor?, y: Tensor) throws -> Conv3DSaved {
        checkX(x, "Conv3D.forward x")
        checkW(w, "Conv3D.forward w")
        if let bias { checkBias(bias, "Conv3D.forward bias") }
        checkY(y, "Conv3D.forward y")
        let saving = Self.inputSaving != .none, adopt = Self.inputSaving == .adopt && adoptsInput
        lock.lock()
        defer { lock.unlock() }
        let copy = try StepProfile.measure(.convForward) { try forwardLocked(x: x, w: w, bias: bias, y: y, saving: saving && !adopt) }
        return Conv3DSaved(engine: self, copy: adopt ? x : copy, bias: saving ? nil : bias?.copy())
    }

    /// Runs the forward pass a value without a copy came from once more, on the same x (or a
    /// bit-identical recomputation of it) and the same w, into y: the same bits as that forward,
    /// and this time with the copy for backward.
    /// `adopting`: x is kept as it is where backward-weights reads plain x (`InputSaving.adopt`).
    public func recomputeForward(_ saved: Conv3DSaved, x: Tensor, w: Tensor, y: Tensor, adopting: Bool = false) throws -> Conv3DSaved {
        precondition(saved.engine === self && saved.copy == nil, "Conv3D.recomputeForward: needs a value without a copy from this engine")
        return try Conv3D.$inputSaving.withValue(adopting ? .adopt : .copy) { try forward(x: x, w: w, bias: saved.bias, y: y) }
    }

    /// The value `forward` would have returned with a copy, from x alone (no convolution): for a
    /// layer whose output is not needed again, only its input. `adopting`: as in `recomputeForward`.
    public func saving(x: Tensor, adopting: Bool = false) throws -> Conv3DSaved {
        checkX(x, "Conv3D.saving x")
        if adopting && adoptsInput { return Conv3DSaved(engine: self, copy: x, bias: nil) }
        lock.lock()
        defer { lock.unlock() }
        return Conv3DSaved(engine: self, copy: try copyOf(x), bias: nil)
    }

    /// Whether an adopted x is kept itself (`InputSaving.adopt`): backward-weights reads plain x.
    private var adoptsInput: Bool { plan.backwardWeights.isNative || upsampling != nil }

    private func forwardLocked(x: Tensor, w: Tensor, bias: Tensor?, y: Tensor, saving: Bool) throws -> Tensor? {
        if let upsampling {
            try upsampling.forward(x: x, w: w, bias: bias, y: y)
            return saving ? try copyOf(x) : nil
        }
        if let native, plan.forward.isNative {
            native.forward(x: x, w: w, bias: bias, y: y)
            return saving ? try copyOf(x) : nil
        }
        return try dnnl!.forward(x: x, w: w, bias: bias, y: y, saving: saving)
    }

    /// x in backward-weights' layout (oneDNN's, or plain for the native kernels). Call under the lock.
    private func copyOf(_ x: Tensor) throws -> Tensor {
        if let dnnl, plan.backwardWeights == .onednn {
            let copy = Tensor(uninitializedShape: [dnnl.savedFloats])
            try dnnl.save(x, into: copy)
            return copy
        }
        let copy = Tensor(uninitializedShape: x.shape)   // shaped as x: the upsampling engine hands it to a Conv3D
        let (from, to) = (UnsafePointer(x.data), copy.data)
        Parallel.ranges(x.count) { begin, end in (to + begin).update(from: from + begin, count: end - begin) }
        withExtendedLifetime(x) {}
        return copy
    }

    /// dx = dL/dx given dy = dL/dy. dy (N, Cout, oD, oH, oW), w (Cout, Cin/groups, k...);
    /// dx (N, Cin, D, H, W) is overwritten.
    public func backwardData(dy: Tensor, w: Tensor, dx: Tensor) throws {
        checkY(dy, "Conv3D.backwardData dy")
        checkW(w, "Conv3D.backwardData w")
        checkX(dx, "Conv3D.backwardData dx")
        lock.lock()
        defer { lock.unlock() }
        if let upsampling {
            try upsampling.backwardData(dy: dy, w: w, dx: dx)
        } else if let native, plan.backwardData.isNative {
            StepProfile.measure(.convBackwardData) { native.backwardData(dy: dy, w: w, dx: dx) }
        } else {
            try dnnl!.backwardData(dy: dy, w: w, dx: dx)
        }
    }

    /// dw = dL/dw and dbias = dL/dbias (sum of dy over batch and voxels) given forward's saved x
    /// and dy (N, Cout, oD, oH, oW); dw (Cout, Cin/groups, k...) and dbias (Cout) are
    /// overwritten; pass dbias nil when there is no bias.
    public func backwardWeights(_ saved: Conv3DSaved, dy: Tensor, dw: Tensor, dbias: Tensor?) throws {
        try backward(saved, dy: dy, w: nil, dx: nil, dw: dw, dbias: dbias)
    }

    /// Both backward passes in one call: dw, dbias (backward-weights, from forward's saved x)
    /// and, unless dx is nil (a first layer needs no input gradient), dx (backward-data, needs w).
    /// Same shapes as the two methods; outputs are overwritten.
    public func backward(_ saved: Conv3DSaved, dy: Tensor, w: Tensor?, dx: Tensor?, dw: Tensor, dbias: Tensor?) throws {
        precondition(saved.engine === self, "Conv3D.backward: the saved value comes from another engine than \(geometry)'s")
        guard let copy = saved.copy else { preconditionFailure("Conv3D.backward: the forward kept no copy of x (recomputeForward or saving(x:) first)") }
        checkY(dy, "Conv3D.backward dy")
        if let w { checkW(w, "Conv3D.backward w") }
        if let dx { checkX(dx, "Conv3D.backward dx") }
        precondition(dx == nil || w != nil, "Conv3D.backward: dx needs the weights w")
        checkW(dw, "Conv3D.backward dw")
        if let dbias { checkBias(dbias, "Conv3D.backward dbias") }
        lock.lock()
        defer { lock.unlock() }
        if let upsampling {
            try upsampling.backward(x: copy, dy: dy, w: w, dx: dx, dw: dw, dbias: dbias)
            return
        }
        switch (plan.backwardWeights, plan.backwardData) {
        case (.onednn, .onednn):
            try dnnl!.backward(copy, dy: dy, w: w, dx: dx, dw: dw, dbias: dbias)
        case (.onednn, _):
            try dnnl!.backward(copy, dy: dy, w: nil, dx: nil, dw: dw, dbias: dbias)
            if let dx, let w { StepProfile.measure(.convBackwardData) { native!.backwardData(dy: dy, w: w, dx: dx) } }
        case (.native, _):
            StepProfile.measure(.convBackwardWeights) { native!.backwardWeights(x: copy.data, dy: dy, dw: dw, dbias: dbias) }
            if let dx, let w {
                if plan.backwardData.isNative { StepProfile.measure(.convBackwardData) { native!.backwardData(dy: dy, w: w, dx: dx) } }
                else { try dnnl!.backwardData(dy: dy, w: w, dx: dx) }
            }
        }
        withExtendedLifetime(saved) {}
    }

    // MARK: - Shape checks (programmer errors trap, in release builds too)

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
}

/// What a `Conv3D` forward pass leaves for backward: the engine's own copy of x, in the layout its
/// backward-weights reads (a fresh buffer per forward, so neither later forwards nor changes to
/// the caller's x affect it). Opaque; hand it to the same engine's `backward`.
/// Under `Conv3D.inputSaving == .none` it holds no copy, only the bias the forward ran with:
/// `recomputeForward` or `saving(x:)` turns it into one that backward takes.
public struct Conv3DSaved {
    let engine: Conv3D
    /// x (N, Cin, D, H, W) in backward-weights' layout (oneDNN's, or plain for the native kernels;
    /// plain, it may be the caller's x itself: `InputSaving.adopt`).
    let copy: Tensor?
    /// Without a copy: the bias of that forward (nil: none, or a value with a copy).
    let bias: Tensor?
    /// Whether backward can run on this value.
    public var hasInput: Bool { copy != nil }
    /// Whether the value keeps `x` itself as its saved input (`Conv3D.InputSaving.adopt`), not a copy.
    public func keeps(_ x: Tensor) -> Bool { copy === x }
}
