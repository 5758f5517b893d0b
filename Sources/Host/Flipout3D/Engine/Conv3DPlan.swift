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
/// alone (no measurement at run time), `Conv3D(geometry, plan:)` builds exactly it, tests pin
/// one, and `flipout bench` prints it.
public struct Conv3DPlan: Hashable, Sendable, CustomStringConvertible {
    /// Who computes one direction.
    public enum Implementation: Hashable, Sendable, CustomStringConvertible {
        /// oneDNN 2.6 primitives, in the layouts oneDNN picks (format tag `any`; channels-last for 16->16).
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

    /// How oneDNN computes the forward pass.
    public enum ForwardStrategy: Hashable, Sendable {
        /// `.transposedBackwardData` where it is known to be faster (stride 1 and 16k channels per
        /// group on both sides, and oneDNN has a jit kernel for it), else `.direct`.
        case automatic
        /// oneDNN's forward convolution (with the bias fused).
        case direct
        /// The backward-data primitive of the transposed convolution (kernel flipped, in/out
        /// channels swapped, padding k-1-p): the same sum, and oneDNN 2.6's backward-data kernel
        /// runs about 25 % faster than its forward kernel at 16 channels. Stride 1 only.
        case transposedBackwardData
    }

    public var forward: Implementation
    public var backwardData: Implementation
    public var backwardWeights: Implementation
    /// For a oneDNN forward.
    public var forwardStrategy: ForwardStrategy
    /// Why: the rule that chose this plan.
    public var reason: String

    public init(forward: Implementation, backwardData: Implementation, backwardWeights: Implementation,
                forwardStrategy: ForwardStrategy = .automatic, reason: String = "pinned") {
        self.forward = forward
        self.backwardData = backwardData
        self.backwardWeights = backwardWeights
        self.forwardStrategy = forwardStrategy
        self.reason = reason
    }

    /// Every direction on oneDNN.
    public static func onednn(_ strategy: ForwardStrategy = .automatic, reason: String = "pinned") -> Conv3DPlan {
        Conv3DPlan(forward: .onednn, backwardData: .onednn, backwardWeights: .onednn, forwardStrategy: strategy, reason: reason)
    }

    /// Every direction on the native kernels at `level`.
    public static func native(_ level: NativeLevel, reason: String = "pinned") -> Conv3DPlan {
        Conv3DPlan(forward: .native(level), backwardData: .native(level), backwardWeights: .native(level), reason: reason)
    }

    /// Native kernels are chosen for groups of at most this many input and output channels.
    /// Measured with `scripts/bench` (`flipout bench --workloads W2,W3 --conv-engine native` against
    /// `--conv-engine onednn`, report-issue8.md): native wins on 1->8, 8->8 and 8->1 in every
    /// direction, where oneDNN 2.6.3 runs 4-60 GFLOP/s (../shared/notes/performance.md, "Debian
    /// oneDNN 2.6.3 per primitive"); at 16 channels oneDNN's jit kernels run 175-232 GFLOP/s, above
    /// what these kernels reach, so 16-channel layers stay on oneDNN.
    public static let nativeMaxChannels = 8

    /// Whether the native kernels run `g` in every direction.
    public static func nativeSupports(_ g: Conv3DGeometry) -> Bool { NativeConv3D.supports(g) }

    /// The plan for `g`: pure in (geometry, engine choice, CPU level).
    public static func choose(_ g: Conv3DGeometry, engine: ConvEngineChoice = .current,
                              level: NativeLevel = .best) -> Conv3DPlan {
        let supported = NativeConv3D.supports(g)
        switch engine {
        case .onednn:
            return .onednn(reason: "--conv-engine onednn")
        case .native:
            return supported ? .native(level, reason: "--conv-engine native")
                : .onednn(reason: "--conv-engine native, but the native kernels need stride 1, k_w 1 or 3, <= 16 channels per group and padding below the kernel")
        case .auto:
            let narrow = max(g.inChannels, g.outChannels) / g.groups <= nativeMaxChannels
            if supported && narrow {
                return .native(level, reason: "auto: <= \(nativeMaxChannels) channels per group, stride 1")
            }
            return .onednn(reason: supported ? "auto: more than \(nativeMaxChannels) channels per group" : "auto: native kernels do not apply")
        }
    }

    public var description: String {
        let strategy = forward == .onednn && forwardStrategy != .automatic ? " (\(forwardStrategy))" : ""
        return "forward \(forward)\(strategy), backward-data \(backwardData), backward-weights \(backwardWeights) [\(reason)]"
    }
}
