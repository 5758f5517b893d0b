// `flipout bench`: the W1-W4 workloads, each beside the raw convolution kernels timed in the same process.
import ArgumentParser
import Foundation
import Flipout3D

extension ConvEngineChoice: ExpressibleByArgument {}

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Time the benchmark workloads W1-W4 (median ms, GFLOP/s, ratio to the raw kernels).",
        discussion: """
        W1: one Flipout layer, N=4, 16->16, 32^3, k=3, forward + backward + KL.
        W2: as W1 with N=8, 1->8.   W3: Flipout 1->8->8->1 network, N=8, one Adam step,
        beside the same network with deterministic convolutions.   W4: deterministic Conv3D, W1's shapes.
        U1-U3: the training step of the U-Net `train --data` builds (2 channels, 3 classes, batch 2,
        instance norm, Dice-CE, Adam), Flipout on every convolution and deterministic, each with a
        breakdown of the step by phase: U1 width 8, 3 levels, 32^3; U2 width 16, 4 levels, 64^3;
        U3 width 32, 5 levels, 128^3 (nnU-Net's scale). GFLOP/s of U1-U3 count one convolution per
        layer and pass. Example: flipout bench --workloads U1,U2 --repeats 10 --warmup 2
        P1: predict's sliding-window Monte Carlo inference of U1's network over one 2-channel
        160x192x160 case, 32^3 windows at overlap 0.5, 8 samples, no mirroring (flipout bench
        --workloads P1 --repeats 3 --warmup 1); P1-grouped runs each window's 8 samples in one
        call through the grouped per-sample convolution instead of one call per sample.
        GFLOP/s count two-convolution Flipout as the peers do (../shared/notes/performance.md).
        Under each workload: every convolution's plan (which engine runs each direction, and why)
        and its per-direction time and GFLOP/s, timed alone.
        Example: flipout bench --workloads W3 --estimators flipout --conv-engine onednn
        --compare-plans times each oneDNN layer under every layout and forward strategy
        (flipout bench --workloads W1,W4 --estimators flipout --compare-plans).
        Machines are shared and noisy: compare ratios from one run. scripts/bench runs this
        beside TFP's script.

        --variance measures instead the variance of the NLL gradient w.r.t. each layer's posterior
        parameters under flipout, reparam and per-example at one checkpoint:
          flipout bench --variance --checkpoint runs/default/checkpoint.safetensors --batches 1,4,8,16
        """)

    @OptionGroup var plugins: PluginOptions
    @Option(help: "Comma-separated workloads: W1-W4, U1-U3, P1.") var workloads = "W1,W2,W3,W4"
    @Option(help: "Comma-separated estimators for W1, W2 and W3.") var estimators = "flipout,reparam,per-example"
    @Option(help: "Timed repetitions (median reported).") var repeats = 30
    @Option(help: "Untimed warm-up repetitions.") var warmup = 5
    @Option(help: "W3 only: input edge (voxels per side), to see how the cost per voxel scales.") var size = 32
    @Option(help: "W3 only: batch size.") var batch = 8
    @Option(help: "Convolution engine: auto (the plan's measured rules), onednn, or native (the direct kernels where they apply).")
    var convEngine: ConvEngineChoice = .auto
    @Flag(help: "Also time every oneDNN layout and forward strategy for each oneDNN layer (the measurements behind the plan's rules).")
    var comparePlans = false
    @Flag(help: "One JSON object per line.") var json = false
    @OptionGroup var varianceOptions: VarianceOptions

    func validate() throws {
        try Bounds.check(repeats, 1...10_000, option: "--repeats")
        try Bounds.check(warmup, 0...10_000, option: "--warmup")
    }

    func run() throws {
        try reportingInputErrors {
            ConvEngineChoice.current = convEngine
            let registry = try plugins.registry()
            if varianceOptions.variance { return try varianceOptions.run(registry: registry, json: json) }
            let ests = try estimators.split(separator: ",").map { s -> Estimator in
                guard let e = Estimator(rawValue: String(s)), e != .auto else { throw InputError("unknown estimator \(s); use flipout, reparam, per-example.") }
                return e
            }
            for w in workloads.split(separator: ",").map(String.init) {
                var results: [BenchResult] = []
                switch w {
                case "W1": for e in ests { results.append(try Workloads.layer("W1", n: 4, cin: 16, cout: 16, estimator: e, registry: registry, repeats: repeats, warmup: warmup)) }
                case "W2": for e in ests { results.append(try Workloads.layer("W2", n: 8, cin: 1, cout: 8, estimator: e, registry: registry, repeats: repeats, warmup: warmup)) }
                case "W3":
                    guard size >= 4, batch >= 1 else { throw InputError("--size must be at least 4 and --batch at least 1.") }
                    for e in ests {
                        results.append(try Workloads.network(bayesian: true, estimator: e, registry: registry, repeats: repeats, warmup: warmup,
                                                             size: size, batch: batch))
                    }
                    results.append(try Workloads.network(bayesian: false, estimator: .reparam, registry: registry, repeats: repeats, warmup: warmup,
                                                         size: size, batch: batch))
                case "W4": results.append(try Workloads.w4(repeats: repeats, warmup: warmup))
                case let p where PredictionWorkload.all.contains { $0.name == p }:
                    try runPrediction(PredictionWorkload.all.first { $0.name == p }!, registry: registry)
                    continue
                case let u where UNetWorkload.all.contains { $0.name == u }:
                    try runUNet(UNetWorkload.all.first { $0.name == u }!, registry: registry)
                    continue
                default: throw InputError("unknown workload \(w); use W1, W2, W3, W4, U1, U2, U3, P1.")
                }
                for r in results {
                    if json {
                        let e = JSONEncoder(); e.outputFormatting = [.sortedKeys]
                        print(String(decoding: try e.encode(r), as: UTF8.self))
                    } else {
                        print(r.workload.padding(toLength: 17, withPad: " ", startingAt: 0) + r.estimator.padding(toLength: 12, withPad: " ", startingAt: 0)
                              + String(format: "%8.2f ms  %7.1f GFLOP/s  raw kernels %7.2f ms  ratio %.2f  %.2f ns/voxel  peak RSS %.0f MiB",
                                       r.medianMs, r.gflops, r.rawMs, r.ratioToRaw, r.nsPerVoxel, r.peakRSSMiB))
                        for l in r.layers {
                            let g = l.gflops
                            print("    \(l.geometry)\n      plan: \(l.plan)\n"
                                  + String(format: "      forward %7.2f ms %6.1f GFLOP/s | backward-data %7.2f ms %6.1f GFLOP/s | backward-weights %7.2f ms %6.1f GFLOP/s",
                                           l.forwardMs, g.forward, l.backwardDataMs, g.backwardData, l.backwardWeightsMs, g.backwardWeights))
                        }
                    }
                    fflush(stdout)
                    if comparePlans { try printComparisons(r) }
                }
            }
        }
    }

    /// U1-U3: the `train --data` step, Flipout and deterministic, each with its breakdown.
    private func runUNet(_ w: UNetWorkload, registry: PluginRegistry) throws {
        if comparePlans { return try printUNetLayers(w) }
        for bayesian in [true, false] {
            let r = try Workloads.unetStep(w, bayesian: bayesian, registry: registry, repeats: repeats, warmup: warmup)
            if json {
                let e = JSONEncoder(); e.outputFormatting = [.sortedKeys]
                print(String(decoding: try e.encode(r), as: UTF8.self))
            } else {
                print(r.workload.padding(toLength: 17, withPad: " ", startingAt: 0)
                      + String(format: "%9.2f ms  %7.1f GFLOP/s (one-convolution counting, %.1f GFLOP)  peak RSS %.0f MiB",
                               r.medianMs, r.gflops, r.stepGFLOP, r.peakRSSMiB))
                for p in r.breakdown where p.ms > 0 {
                    print("    " + p.phase.padding(toLength: 52, withPad: " ", startingAt: 0) + String(format: "%9.2f ms  %5.1f %%", p.ms, 100 * p.share))
                }
            }
            fflush(stdout)
        }
    }

    /// --compare-plans with a U workload: every convolution of the U-Net timed alone under each candidate plan.
    private func printUNetLayers(_ w: UNetWorkload) throws {
        try Workloads.unetLayers(w, repeats: repeats, warmup: warmup) { c in
            let t = c.timing
            let head = c.layer.padding(toLength: 6, withPad: " ", startingAt: 0) + (c.bayesian ? " flipout " : " det     ") + (c.chosen ? "* " : "  ")
            print(head + String(format: "step %7.2f ms | fwd %7.2f | bwd-data %7.2f | bwd-weights %7.2f  ", t.stepMs, t.forwardMs, t.backwardDataMs, t.backwardWeightsMs)
                  + "\(t.geometry) | \(t.plan) | \(t.implementations.joined(separator: ", "))")
            fflush(stdout)
        }
    }

    private func printComparisons(_ r: BenchResult) throws {
        for c in try Workloads.comparePlans(r, repeats: repeats, warmup: warmup) {
            if json {
                let e = JSONEncoder(); e.outputFormatting = [.sortedKeys]
                print(String(decoding: try e.encode(c), as: UTF8.self))
            } else {
                let l = c.timing
                print("    compare \(l.geometry)\(c.chosen ? " (chosen)" : "")\n      plan: \(l.plan)\n"
                      + String(format: "      step %7.2f ms | forward %7.2f ms | backward-data %7.2f ms | backward-weights %7.2f ms",
                               c.stepMs, l.forwardMs, l.backwardDataMs, l.backwardWeightsMs))
            }
            fflush(stdout)
        }
    }
}
