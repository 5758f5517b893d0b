// Conv3DPlan: which implementation runs each direction of one convolution geometry on this CPU — a pure, printable choice.
import Foundation

/// Which engine runs convolutions: `auto` follows `Conv3DPlan.choose`'s measured rules; `onednn`
/// and `native` force one (`native` where its kernels apply; other geometries stay on oneDNN).
public enum ConvEngineChoice: String, CaseIterable, Sendable {
    case auto, onednn, native

    /// The process-wide choice new engines use: FLIPOUT_CONV_ENGINE, else `auto`; `flipout
    /// --conv-engine` sets it before any layer runs.
    nonisolated(unsafe) public static var current: ConvEngineChoice =
        ProcessInfo.processInfo.environment["FLIPOUT_CONV_ENGINE"].flatMap(ConvEngineChoice.init(rawValue:)) ?? .auto
}

/// The implementation, layout and strategy of each direction of one geometry.
///
/// A plan is a value: `choose` computes it from the geometry, the engine choice and the CPU level
/// alone (no measurement at run time, no question to oneDNN), `Conv3D(geometry, plan:)` builds
/// exactly it, tests pin one, and `flipout bench` prints it. Every plan is valid on every x86-64:
/// the layout and strategy only change which of oneDNN's kernels run, never what they compute.
public struct Conv3DPlan: Hashable, Sendable, CustomStringConvertible {
    /// Who computes one direction.
    public enum Implementation: Hashable, Sendable, CustomStringConvertible {
        /// oneDNN 2.6 primitives, on activations in the plan's `layout`.
        case onednn
        /// The direct C kernels at one instruction-set level, on plain NCDHW.
        case native(NativeLevel)
        public var description: String {
            switch self {
            case .onednn: return "oneDNN"
            case .native(let l): return "native \(l)"
            }
        }
        var isNative: Bool { if case .native = self { return true } else { return false } }
    }

    /// The layout of x, y, dx and dy inside oneDNN's primitives (the caller's tensors are always
    /// plain NCDHW: oneDNN reorders them in and out).
    public enum Layout: String, Hashable, Sendable, CaseIterable {
        /// Format tag `any`: oneDNN picks, usually channel-blocked (nCdhw16c with AVX-512,
        /// nCdhw8c with AVX2).
        case blocked
        /// NDHWC (acdeb). With 16 channels, the same bytes as nCdhw16c.
        case channelsLast = "channels-last"
        /// A grouped batch-1 geometry (the per-example form) run group by group, each group as its
        /// own ungrouped NDHWC convolution on its slice of the tensors (contiguous at batch 1).
        /// Ungrouped geometries: the same as `channelsLast`.
        case channelsLastPerGroup = "channels-last per group"

        /// Whether this layout applies to `g` (per group needs batch 1 and the direct forward).
        public func applies(to g: Conv3DGeometry, strategy: ForwardStrategy) -> Bool {
            self != .channelsLastPerGroup || g.groups == 1 || (g.batch == 1 && strategy == .direct)
        }
    }

    /// How oneDNN computes the forward pass.
    public enum ForwardStrategy: String, Hashable, Sendable, CaseIterable {
        /// oneDNN's forward convolution (with the bias fused).
        case direct
        /// The backward-data primitive of the transposed convolution (kernel flipped, in/out
        /// channels swapped, padding k-1-p): the same sum. Stride 1 and padding below the kernel
        /// only (`Conv3DGeometry.isTransposable`).
        case transposedBackwardData = "transposed-backward-data"
    }

    public var forward: Implementation
    public var backwardData: Implementation
    public var backwardWeights: Implementation
    /// For the directions on oneDNN.
    public var layout: Layout
    /// For a oneDNN forward.
    public var forwardStrategy: ForwardStrategy
    /// Why: the rules that chose this plan.
    public var reason: String

    public init(forward: Implementation, backwardData: Implementation, backwardWeights: Implementation,
                layout: Layout = .blocked, forwardStrategy: ForwardStrategy = .direct, reason: String = "pinned") {
        self.forward = forward
        self.backwardData = backwardData
        self.backwardWeights = backwardWeights
        self.layout = layout
        self.forwardStrategy = forwardStrategy
        self.reason = reason
    }

    /// Every direction on oneDNN.
    public static func onednn(_ strategy: ForwardStrategy = .direct, layout: Layout = .blocked, reason: String = "pinned") -> Conv3DPlan {
        Conv3DPlan(forward: .onednn, backwardData: .onednn, backwardWeights: .onednn, layout: layout,
                   forwardStrategy: strategy, reason: reason)
    }

    /// Every direction on the native kernels at `level`.
    public static func native(_ level: NativeLevel, reason: String = "pinned") -> Conv3DPlan {
        Conv3DPlan(forward: .native(level), backwardData: .native(level), backwardWeights: .native(level), reason: reason)
    }

    // MARK: - Rules (each threshold with the measurement it came from)

    /// Native kernels are chosen for groups of at most this many input and output channels.
    /// Measured: `flipout bench --workloads W2,W3 --conv-engine native` against `--conv-engine
    /// onednn` (report-issue8.md): native wins on 1->8, 8->8 and 8->1 in every direction, where
    /// oneDNN 2.6.3 runs 4-60 GFLOP/s (../shared/notes/performance.md, "Debian oneDNN 2.6.3 per
    /// primitive"). At 16 channels per group, re-measured with the current kernels (ring-padded,
    /// report-perf8.md): `FLIPOUT_BENCH_CLOCK=cpu OMP_NUM_THREADS=1 flipout bench --workloads W4
    /// --conv-engine native|onednn`, alternating, 2 runs each: step 34.0 / 35.2 ms native against
    /// 31.1 / 31.5 ms oneDNN (native forward and backward-data are faster, its backward-weights
    /// 14.4 against 9.5 ms is not), and W1 with 2 threads 33.2 / 35.4 against 32.4 / 31.4 ms:
    /// 16-channel layers stay on oneDNN.
    public static let nativeMaxChannels = 8

    /// The widest layers (channels per group, each side) the native rules below take.
    ///
    /// Ungrouped 9-16-channel layers with rows of 2-3 vectors (W4: 16->16 at 32^3) run on oneDNN
    /// in every direction, channels-last (`channelsLastChannels`), not native forward and
    /// backward-data with oneDNN backward-weights. That mixed plan won on one core in process CPU
    /// time (`FLIPOUT_BENCH_CLOCK=cpu OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive flipout bench
    /// --workloads W1,W4 --estimators flipout --repeats 10 --warmup 2`: W4 step 28.3-28.5 ms
    /// against 30.0-30.2 all-oneDNN), and loses with the 2 threads a step runs on
    /// (`flipout bench --workloads W4 --compare-plans --repeats 20`, 2 threads, passive OpenMP,
    /// idle, Zen 4, four runs: 26.7-27.2 ms mixed against 25.1-26.0 all-oneDNN channels-last,
    /// whose forward and backward-data read and write NDHWC at 230 GFLOP/s).
    public static let nativeWideMaxChannels = 16

    /// Layers with at most this many output channels per group (and any input count the kernels
    /// take, up to 64) run natively in every direction, grouped or not, on every level. Measured
    /// per layer on the U-Net (`FLIPOUT_BENCH_CLOCK=cpu OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
    /// flipout bench --workloads U1 --compare-plans --repeats 7 --warmup 2`, AVX-512, process CPU
    /// time per step of one layer): U1's up0 and dec0 (16->8 per group at 32^3) take 15.4 / 15.5 ms
    /// native against 33.5 / 33.7 ms on oneDNN in the per-example (grouped) form, whose
    /// backward-weights falls back to oneDNN 2.6's gemm (22 ms against 5.5); ungrouped (the
    /// deterministic step) 18.0 / 15.1 ms native against 21.5 / 19.9 mixed.
    public static let nativeMaxOutputChannels = 8

    /// Layers whose channels per group are all at most `nativeWideMaxChannels` run natively in every
    /// direction when their output rows are at least this many vectors long (64 floats with
    /// AVX-512): the kernels' tiles are two vectors wide, so long rows fill them. Measured as
    /// above on U2 (64^3, `--workloads U2 --compare-plans --repeats 3 --warmup 1`): enc0a 2->16
    /// per group, per-example form, 38.5 ms native against 157 on oneDNN (gemm backward-weights);
    /// enc0b 16->16 per group 221 against 266 (transposed forward) and 239 (direct); ungrouped
    /// 38.1 against 41.7 mixed and 222 against 220 (a tie). With 16-wide rows (U1's enc1b, 16^3)
    /// native loses: 6.4 against 3.1 ms grouped, 6.1 against 3.4 ungrouped.
    public static let nativeWideRowVectors = 4

    /// Channels-last is chosen for ungrouped layers with exactly this many input and output
    /// channels, on AVX-512. Measured (`flipout bench --workloads W4 --compare-plans`, and
    /// report-issue8.md): oneDNN 2.6 then runs the forward as brgconv (bias fused, as fast as the
    /// transposed backward-data) and backward-weights about 16 % faster than blocked, and the
    /// reorders cost the same (16 channels: the same bytes). Re-measured on one core
    /// (`FLIPOUT_BENCH_CLOCK=cpu OMP_NUM_THREADS=1 flipout bench --workloads W1,W4 --estimators
    /// flipout --compare-plans`, twice, report-perf8.md): W4 step 29.4 / 28.8 ms channels-last
    /// against 30.7 / 30.7 blocked direct. With 32 channels the reorder into
    /// NDHWC is 3x slower; grouped layers get no brgconv and run slower channels-last; on AVX2
    /// (Zen 3) it was never measured, so oneDNN's own choice stays.
    public static let channelsLastChannels = 16

    /// Grouped batch-1 layers (the per-example form) with `channelsLastChannels` channels per group
    /// on both sides, stride 1, run each group as its own ungrouped channels-last convolution
    /// (`Layout.channelsLastPerGroup`) when their output rows are at least this many vectors long.
    /// oneDNN 2.6 runs the ungrouped NDHWC forward as brgconv and its backward-weights about 15 %
    /// faster than the grouped blocked one. Measured with oneDNN's primitives alone (a C program
    /// timing each direction, 2 threads, passive OpenMP, idle, Zen 4): 16->16 at 32^3 in 4 groups,
    /// blocked grouped 7.69 / 7.84 / 9.40 ms (forward / backward-data / backward-weights), 4 x
    /// ungrouped NDHWC 7.87 / 7.75 / 7.88 ms. Through the engine, reorders included (`flipout
    /// bench --workloads W1 --estimators flipout --compare-plans --repeats 20`, same conditions):
    /// W1's step 26.69 ms per group against 27.44 blocked with the transposed forward, 27.75
    /// blocked direct and 33.9 channels-last grouped; W1's Flipout step, alternating with the
    /// build before (three runs each), 26.3-26.5 ms against 27.2-28.2. At 32 channels per group
    /// (U2's enc1b, 2 groups at 32^3) the primitives alone tie (47.9 ms against 48.2), so 16 only.
    /// Rows: U1's enc1b per example (16^3, one vector) was not measured, so it keeps the blocked plan.
    public static let perGroupMinRowVectors = 2

    /// An upsampling convolution (`Conv3DGeometry.upsample`) runs channels-last on AVX-512 when it
    /// has fewer than this many output channels per group, else blocked. Its backward-weights is
    /// that of a stride-2 convolution whose input has those channels, and oneDNN 2.6 runs it with
    /// gemm in the 16-channel blocked layout. Measured with oneDNN's primitives alone (a C
    /// program, 2 threads, passive OpenMP, idle, Zen 4), the three directions of U1's up0
    /// (16->8 per group, 16^3 -> 32^3): per example (2 groups) 7.4 / 7.9 ms blocked (backward-weights
    /// 6.0-6.5, "x64:gemm:jit") against 2.6 / 2.3 channels-last (jit); ungrouped 4.0 / 4.0 against
    /// 2.3 / 2.3. With 16 or 32 output channels per group (U2's up0 and up1, U1's up1) blocked ties
    /// or wins: 58.8 / 58.9 against 62.8 / 66.5 ms, 26.3 / 26.1 against 27.4 / 26.5, 0.90 against 0.91.
    public static let upsamplingBlockedMinOutputChannels = 16

    /// The transposed backward-data forward is chosen, on AVX-512 and with the blocked layout,
    /// when the channels per group on both sides are a multiple of this. Measured
    /// (`flipout bench --workloads W1 --compare-plans`): oneDNN 2.6's backward-data kernel runs
    /// about 25 % faster than its forward kernel at 16 channels per group (W1's per-example
    /// form), with 2 threads. On one core (the command above, twice) W1's step is a tie: 29.4 /
    /// 29.1 ms transposed against 29.1 / 28.8 direct. Not measured on AVX2: direct there. Only
    /// for as many input as output channels: with fewer outputs than inputs (U2's up0 and dec0,
    /// 32->16 at 64^3, the per-layer measurement at `nativeMaxOutputChannels`) the transposed
    /// forward took 182 ms against 137-146 direct, and 31.8 against 29.9 at 128->64 (16^3).
    public static let transposedForwardChannelMultiple = 16

    /// Below AVX-512 (Zen 3), layers the kernels take (at most 16 output and 64 input channels
    /// per group, stride 1) run their forward and backward-weights natively, and backward-data
    /// too where the kernels take its transpose: oneDNN 2.6 falls back to its gemm
    /// backward-weights there. Measured with both capped to AVX2 (`FLIPOUT_NATIVE_ISA=avx2
    /// ONEDNN_MAX_CPU_ISA=AVX2 FLIPOUT_BENCH_CLOCK=cpu OMP_NUM_THREADS=1 flipout bench --workloads U1
    /// --compare-plans --repeats 5 --warmup 1`): U1's up1 (32->16 per group at 16^3) 10.0 ms against
    /// 12.3 all-oneDNN (backward-weights 5.1 against 9.5), enc1b (16->16 at 16^3) 5.2 against 6.5,
    /// up0 and dec0 (16->8 at 32^3) 21 against 43.
    public static let nativeBackwardWeightsBelowAVX512 = true

    /// Strided layers (a U-Net's down-sampling convolutions) with at most this many input
    /// channels per group run backward-weights natively on AVX-512, forward and backward-data on oneDNN:
    /// oneDNN 2.6 has no jit backward-weights for them and falls back to gemm
    /// ("x64:gemm:jit"). Measured on AVX-512, process CPU time, 2 threads, every candidate in one
    /// run (`FLIPOUT_BENCH_CLOCK=cpu OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive flipout bench
    /// --workloads U1 --compare-plans --repeats 5 --warmup 1`): U1's enc1a (8->16 per group,
    /// stride 2, 32^3 in) per example: step 3.97 ms against 6.27 all-oneDNN (backward-weights
    /// 2.09 against 3.80); ungrouped a tie (4.56 against 4.49). The native strided forward
    /// loses there (1.93 against 0.83 ms: 16-wide output rows fill half a tile), and at 16 input
    /// channels per group (enc2a, 16->32 to 8^3) oneDNN has a jit backward-weights that wins
    /// (0.30 against 1.75 ms). Capped to AVX2 (`FLIPOUT_NATIVE_ISA=avx2 ONEDNN_MAX_CPU_ISA=AVX2`,
    /// same command) the native backward-weights of enc1a ties with oneDNN's gemm (4.71 against
    /// 4.61 ms per example, 3.87 against 3.80 ungrouped): oneDNN there.
    public static let stridedNativeBackwardWeightsMaxInputChannels = 8

    /// Whether the native kernels run `g` in every direction.
    public static func nativeSupports(_ g: Conv3DGeometry) -> Bool { NativeConv3D.supports(g) }

    /// Whether the native kernels run `g`'s backward-weights (and forward): the shape rules of
    /// `nativeSupports` for the convolution itself, not for its transpose.
    public static func nativeSupportsBackwardWeights(_ g: Conv3DGeometry) -> Bool { NativeConv3D.supportsForward(g) }

    /// oneDNN's layout and forward strategy for `g` on a CPU of `level`, and why.
    static func onednnChoice(_ g: Conv3DGeometry, level: NativeLevel) -> (Layout, ForwardStrategy, String) {
        guard level == .avx512 else { return (.blocked, .direct, "blocked, direct: oneDNN's defaults below AVX-512") }
        let c = channelsLastChannels
        if g.groups == 1 && g.inChannels == c && g.outChannels == c {
            return (.channelsLast, .direct, "channels-last: ungrouped \(c)->\(c) on AVX-512")
        }
        if g.groups > 1 && g.batch == 1 && g.inChannels / g.groups == c && g.outChannels / g.groups == c && g.isTransposable
            && g.outputSize[2] / level.floatsPerVector >= perGroupMinRowVectors {
            return (.channelsLastPerGroup, .direct, "channels-last per group: \(c)->\(c) per group, batch 1, rows of >= \(perGroupMinRowVectors) vectors, on AVX-512")
        }
        let m = transposedForwardChannelMultiple
        if g.isTransposable && g.inChannels == g.outChannels && (g.inChannels / g.groups) % m == 0 {
            return (.blocked, .transposedBackwardData, "forward as transposed backward-data: \(m)k channels per group, stride 1, on AVX-512")
        }
        return (.blocked, .direct, "blocked, direct")
    }

    /// The plan for `g`: pure in (geometry, engine choice, CPU level).
    public static func choose(_ g: Conv3DGeometry, engine: ConvEngineChoice = .current,
                              level: NativeLevel = .best) -> Conv3DPlan {
        if g.upsample != 1 {
            let narrow = level == .avx512 && g.outChannels / g.groups < upsamplingBlockedMinOutputChannels
            return .onednn(layout: narrow ? .channelsLast : .blocked,
                           reason: "upsampling: the transposed stride-2 convolution on oneDNN (UpsamplingConv3D)"
                               + (narrow ? ", channels-last: < \(upsamplingBlockedMinOutputChannels) output channels per group on AVX-512" : ""))
        }
        let supported = NativeConv3D.supports(g)
        let (layout, strategy, why) = onednnChoice(g, level: level)
        func onednn(_ reason: String) -> Conv3DPlan { .onednn(strategy, layout: layout, reason: "\(reason); \(why)") }
        switch engine {
        case .onednn:
            return onednn("--conv-engine onednn")
        case .native:
            return supported ? .native(level, reason: "--conv-engine native")
                : onednn("--conv-engine native, but the native kernels need, in every direction, stride 1, k_w 1 or 3, <= 64 channels per group on each side and padding below the kernel")
        case .auto:
            let narrow = max(g.inChannels, g.outChannels) / g.groups <= nativeMaxChannels
            if supported && narrow {
                return .native(level, reason: "auto: <= \(nativeMaxChannels) channels per group, stride 1")
            }
            if supported && g.outChannels / g.groups <= nativeMaxOutputChannels && g.inChannels / g.groups <= nativeWideMaxChannels {
                return .native(level, reason: "auto: <= \(nativeMaxOutputChannels) output channels per group, stride 1")
            }
            let rowVectors = g.outputSize[2] / level.floatsPerVector
            let upTo16 = max(g.inChannels, g.outChannels) / g.groups <= nativeWideMaxChannels
            if supported && level == .avx512 && upTo16 && rowVectors >= nativeWideRowVectors {
                return .native(level, reason: "auto: <= \(nativeWideMaxChannels) channels per group, rows of >= \(nativeWideRowVectors) vectors, AVX-512")
            }
            let (cin, cout) = (g.inChannels / g.groups, g.outChannels / g.groups)
            if nativeBackwardWeightsBelowAVX512 && level == .avx2 && g.isTransposable && cout <= nativeWideMaxChannels
                && NativeConv3D.supportsForward(g) {
                let data = supported && cin <= nativeWideMaxChannels
                return Conv3DPlan(forward: .native(level), backwardData: data ? .native(level) : .onednn, backwardWeights: .native(level),
                                  layout: layout, forwardStrategy: strategy,
                                  reason: "auto: AVX2, <= 16 output channels per group: native forward and backward-weights, backward-data \(data ? "native" : "on oneDNN"); \(why)")
            }
            if !g.isTransposable && level == .avx512 && cin <= stridedNativeBackwardWeightsMaxInputChannels && NativeConv3D.supportsForward(g) {
                return Conv3DPlan(forward: .onednn, backwardData: .onednn, backwardWeights: .native(level), layout: layout, forwardStrategy: strategy,
                                  reason: "auto: strided, <= \(stridedNativeBackwardWeightsMaxInputChannels) input channels per group, AVX-512: native backward-weights (oneDNN's is gemm); \(why)")
            }
            return onednn(supported ? "auto: more than \(nativeMaxChannels) channels per group" : "auto: native kernels do not apply")
        }
    }

    /// Whether some direction runs on oneDNN.
    public var usesOneDNN: Bool { [forward, backwardData, backwardWeights].contains(.onednn) }

    public var description: String {
        let strategy = forward == .onednn && forwardStrategy != .direct ? " (\(forwardStrategy.rawValue))" : ""
        let layout = usesOneDNN ? "; oneDNN layout \(self.layout.rawValue)" : ""
        return "forward \(forward)\(strategy), backward-data \(backwardData), backward-weights \(backwardWeights)\(layout) [\(reason)]"
    }
}
