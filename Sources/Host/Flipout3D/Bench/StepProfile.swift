// Where a training step's time goes: named phases, timed by probes that do nothing unless a profile is bound to the task.
import Foundation

/// A breakdown of wall time by phase. Bind one with `StepProfile.$current.withValue(p) { ... }`;
/// every `StepProfile.measure(phase) { ... }` inside that scope (on the calling thread) adds its
/// EXCLUSIVE time to `phase`: a probe nested in another is subtracted from the outer one, so the
/// phases add up to at most the wall time of the scope. Outside a bound scope a probe costs one
/// task-local read.
public final class StepProfile: @unchecked Sendable {
    public enum Phase: String, CaseIterable, Codable, Sendable {
        case convForward = "convolution forward"
        case convBackwardData = "convolution backward-data"
        case convBackwardWeights = "convolution backward-weights"
        case flipoutSampling = "Flipout sampling, signs and kernel assembly"
        case flipoutGradients = "Flipout kernel-gradient folding and posterior VJPs"
        case normalization = "instance norm (with the ReLU fused into it)"
        case activation = "ReLU and softmax"
        case upsampleConcat = "upsampling, concatenation and skips"
        case loss = "loss (Dice-CE)"
        case kl = "KL"
        case optimizer = "Adam and parameter refresh"
        case data = "data preparation"
    }

    @TaskLocal public static var current: StepProfile?

    /// Exclusive nanoseconds per phase.
    public private(set) var nanoseconds: [Phase: UInt64] = [:]
    /// Nanoseconds spent inside probes that are still open (for exclusive attribution).
    private var nestedNanoseconds: UInt64 = 0

    public init() {}

    @inline(__always)
    public static func measure<T>(_ phase: Phase, _ body: () throws -> T) rethrows -> T {
        guard let p = current else { return try body() }
        return try p.time(phase, body)
    }

    private func time<T>(_ phase: Phase, _ body: () throws -> T) rethrows -> T {
        let outerNested = nestedNanoseconds
        nestedNanoseconds = 0
        let start = DispatchTime.now().uptimeNanoseconds
        defer {
            let elapsed = DispatchTime.now().uptimeNanoseconds - start
            nanoseconds[phase, default: 0] += elapsed - min(elapsed, nestedNanoseconds)
            nestedNanoseconds = outerNested + elapsed
        }
        return try body()
    }

    public func milliseconds(_ phase: Phase) -> Double { Double(nanoseconds[phase] ?? 0) / 1e6 }
    public var totalMilliseconds: Double { Phase.allCases.reduce(0) { $0 + milliseconds($1) } }
}
