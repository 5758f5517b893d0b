// EngineBench: timings of the oneDNN Conv3D engine on the benchmark workloads (medians, ms, GFLOP/s).
import Foundation

/// One geometry's timings: per-primitive medians and the median of whole steps
/// (forward, then `Conv3D.backward`: backward-weights reading forward's saved copy of x, and
/// backward-data sharing dy's reorder).
public struct EngineStepTiming: Sendable, CustomStringConvertible {
    public let geometry: Conv3DGeometry
    public let forwardMs: Double
    public let backwardDataMs: Double
    public let backwardWeightsMs: Double
    /// Median of whole steps (forward + `Conv3D.backward`), measured separately (not the sum of the medians).
    public let stepMs: Double
    /// oneDNN's implementation names for (forward, backward-data, backward-weights).
    public let implementations: [String]
    /// The layouts oneDNN chose for each primitive's arguments.
    public let layouts: String
    /// How the forward pass was computed.
    public let forwardStrategy: Conv3D.ForwardStrategy
    /// The engine's plan.
    public let plan: Conv3DPlan

    /// Step GFLOP: three convolutions' worth (forward, backward-data, backward-weights).
    public var stepGFLOP: Double { 3 * geometry.flops / 1e9 }
    public var stepGFLOPS: Double { stepGFLOP / (stepMs / 1e3) }

    public var description: String {
        func f(_ v: Double) -> String { String(Int((v * 100).rounded())).leftPadded(3).inserting(".", fromEnd: 2) }
        let gf = geometry.flops / 1e6  // MFLOP per primitive; per ms is GFLOP/s
        return """
            \(geometry), plan \(plan), forward strategy \(forwardStrategy)
              step \(f(stepMs)) ms, \(f(stepGFLOPS)) GFLOP/s (\(f(stepGFLOP)) GFLOP)
              forward \(f(forwardMs)) ms (\(f(gf / forwardMs)) GFLOP/s) [\(implementations[0])]
              backward-data \(f(backwardDataMs)) ms (\(f(gf / backwardDataMs)) GFLOP/s) [\(implementations[1])]
              backward-weights \(f(backwardWeightsMs)) ms (\(f(gf / backwardWeightsMs)) GFLOP/s) [\(implementations[2])]
              layouts: \(layouts)
            """
    }
}

private extension String {
    func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
    func inserting(_ s: String, fromEnd k: Int) -> String {
        var t = self
        t.insert(contentsOf: s, at: t.index(t.endIndex, offsetBy: -k))
        return t
    }
}

public enum EngineBench {
    /// W4: deterministic Conv3D, N=4, 16->16, 32^3, k=3, stride 1, same padding.
    public static let w4 = Conv3DGeometry(batch: 4, inChannels: 16, outChannels: 16, size: 32, k: 3)

    /// Median milliseconds of forward, backward-data and backward-weights (each timed alone,
    /// with bias), after `warmup` untimed runs; includes the reorders at the edges.
    public static func timeRaw(geometry: Conv3DGeometry, plan: Conv3DPlan? = nil, repeats: Int = 30, warmup: Int = 5) throws
        -> (forwardMs: Double, backwardDataMs: Double, backwardWeightsMs: Double) {
        try timeRaw(try Workspace(geometry, plan: plan), repeats: repeats, warmup: warmup)
    }

    private static func timeRaw(_ t: Workspace, repeats: Int, warmup: Int) throws
        -> (forwardMs: Double, backwardDataMs: Double, backwardWeightsMs: Double) {
        let fwd = try median(repeats: repeats, warmup: warmup) { try t.forward() }
        let bd = try median(repeats: repeats, warmup: warmup) { try t.backwardData() }
        let bw = try median(repeats: repeats, warmup: warmup) { try t.backwardWeights() }
        return (fwd, bd, bw)
    }

    /// Per-primitive medians plus the median of whole steps (forward + backward-data +
    /// backward-weights), with oneDNN's implementation names.
    /// `plan` nil: `Conv3DPlan.choose` (what layers get).
    public static func timeStep(geometry: Conv3DGeometry, plan: Conv3DPlan? = nil, repeats: Int = 30, warmup: Int = 5) throws -> EngineStepTiming {
        let t = try Workspace(geometry, plan: plan)
        let raw = try timeRaw(t, repeats: repeats, warmup: warmup)
        let step = try median(repeats: repeats, warmup: warmup) {
            try t.forward(); try t.backward()
        }
        let impl = t.conv.implementations
        return EngineStepTiming(geometry: geometry, forwardMs: raw.forwardMs, backwardDataMs: raw.backwardDataMs,
                                backwardWeightsMs: raw.backwardWeightsMs, stepMs: step,
                                implementations: [impl.forward, impl.backwardData, impl.backwardWeights],
                                layouts: t.conv.layoutSummary, forwardStrategy: t.conv.forwardStrategy, plan: t.conv.plan)
    }

    /// W4 (forward + backward, 5.44 GFLOP per step): median step ms and GFLOP/s.
    public static func measureW4(repeats: Int = 30, warmup: Int = 5) throws -> EngineStepTiming {
        try timeStep(geometry: w4, repeats: repeats, warmup: warmup)
    }


    /// Deterministic tensors for one geometry.
    private final class Workspace {
        let conv: Conv3D
        let x, w, bias, y, dy, dx, dw, dbias: Tensor
        /// The last forward's saved copy of x.
        var saved: Conv3DSaved
        init(_ g: Conv3DGeometry, plan: Conv3DPlan?) throws {
            conv = try Conv3D(g, plan: plan)
            func filled(_ shape: [Int], _ seed: UInt32) -> Tensor {
                let t = Tensor(shape: shape)
                var s = seed &* 2654435761 | 1
                for i in 0..<t.count {
                    s ^= s << 13; s ^= s >> 17; s ^= s << 5
                    t.data[i] = Float(s >> 8) / Float(1 << 24) - 0.5
                }
                return t
            }
            x = filled(g.xShape, 1); w = filled(g.weightShape, 2); bias = filled(g.biasShape, 3)
            dy = filled(g.yShape, 4)
            y = Tensor(shape: g.yShape); dx = Tensor(shape: g.xShape)
            dw = Tensor(shape: g.weightShape); dbias = Tensor(shape: g.biasShape)
            saved = try conv.forward(x: x, w: w, bias: bias, y: y)
        }
        func forward() throws { saved = try conv.forward(x: x, w: w, bias: bias, y: y) }
        func backwardData() throws { try conv.backwardData(dy: dy, w: w, dx: dx) }
        func backwardWeights() throws { try conv.backwardWeights(saved, dy: dy, dw: dw, dbias: dbias) }
        /// As a layer runs it after its forward pass.
        func backward() throws { try conv.backward(saved, dy: dy, w: w, dx: dx, dw: dw, dbias: dbias) }
    }

    /// Milliseconds `body` takes: wall-clock time, or with FLIPOUT_BENCH_CLOCK=cpu the process's
    /// CPU time (all threads). On a shared, loaded machine, CPU time with OMP_NUM_THREADS=1
    /// counts the work done without the time spent descheduled: a steadier way to compare two
    /// builds (it counts OpenMP's spin-waiting too, hence one thread).
    static func measureMs(_ body: () throws -> Void) rethrows -> Double {
        if useCPUClock {
            let t0 = cpuMs()
            try body()
            return cpuMs() - t0
        }
        let d = try ContinuousClock().measure(body)
        return Double(d.components.seconds) * 1e3 + Double(d.components.attoseconds) * 1e-15
    }

    private static let useCPUClock = ProcessInfo.processInfo.environment["FLIPOUT_BENCH_CLOCK"] == "cpu"
    /// FLIPOUT_BENCH_STAT=min reports the fastest repetition instead of the median (the least
    /// disturbed one, when other processes share the cores).
    static let reportMinimum = ProcessInfo.processInfo.environment["FLIPOUT_BENCH_STAT"] == "min"

    private static func cpuMs() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t)
        return Double(t.tv_sec) * 1e3 + Double(t.tv_nsec) * 1e-6
    }

    /// Median (or, with FLIPOUT_BENCH_STAT=min, fastest) milliseconds of `body` after `warmup` runs.
    static func median(repeats: Int, warmup: Int, _ body: () throws -> Void) throws -> Double {
        for _ in 0..<warmup { try body() }
        var times = [Double]()
        for _ in 0..<max(repeats, 1) { times.append(try measureMs(body)) }
        times.sort()
        if reportMinimum { return times[0] }
        let n = times.count
        return n % 2 == 1 ? times[n / 2] : (times[n / 2 - 1] + times[n / 2]) / 2
    }
}
