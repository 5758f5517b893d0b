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
        let start = Self.now()
        defer {
            let elapsed = Self.now() - start
            nanoseconds[phase, default: 0] += elapsed - min(elapsed, nestedNanoseconds)
            nestedNanoseconds = outerNested + elapsed
        }
        return try body()
    }

    /// With FLIPOUT_BENCH_CLOCK=cpu, the calling thread's CPU time (all of a step's work at
    /// OMP_NUM_THREADS=1, where every pass runs on the calling thread; insensitive to other load);
    /// else wall time.
    static let useThreadCPUClock = ProcessInfo.processInfo.environment["FLIPOUT_BENCH_CLOCK"] == "cpu"
    static func now() -> UInt64 {
        guard useThreadCPUClock else { return DispatchTime.now().uptimeNanoseconds }
        var t = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
        return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
    }

    public func milliseconds(_ phase: Phase) -> Double { Double(nanoseconds[phase] ?? 0) / 1e6 }
    public var totalMilliseconds: Double { Phase.allCases.reduce(0) { $0 + milliseconds($1) } }
}
