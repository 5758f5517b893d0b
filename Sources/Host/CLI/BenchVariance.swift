// `flipout bench --variance`: gradient variance of flipout and per-example against reparam, per layer, from a checkpoint.
import ArgumentParser
import Foundation
import Flipout3D

struct VarianceOptions: ParsableArguments {
    @Flag(help: "Measure gradient variance (flipout, reparam, per-example) instead of timing; needs --checkpoint.")
    var variance = false
    @Option(help: "U-Net checkpoint of flipout train whose parameters the variance is measured at; its dataset folder supplies the patches (--variance).")
    var checkpoint: String?
    @Option(help: "Comma-separated batch sizes (--variance).")
    var batches = "1,4,8,16"
    @Option(help: "Noise draws per estimator and batch size (--variance).")
    var draws = 32
    @Option(name: .customLong("variance-batch"), help: "distinct (N patches of N training cases) or copies (N copies of one patch) (--variance).")
    var batchKind: GradientVariance.BatchKind = .distinct
    @Flag(name: .customLong("allow-plugin-change"), help: "Load the checkpoint even if a plugin's SHA-256 changed since training (--variance).")
    var allowPluginChange = false

    func validate() throws {
        guard variance else { return }
        guard checkpoint != nil else { throw ValidationError("--variance needs --checkpoint PATH (e.g. runs/default/checkpoint.safetensors from flipout train).") }
        guard draws >= 2 else { throw ValidationError("--draws must be at least 2.") }
        guard parsedBatches != nil else { throw ValidationError("--batches must be comma-separated positive integers, e.g. 1,4,8,16.") }
    }

    var parsedBatches: [Int]? {
        let v = batches.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !v.isEmpty, v.allSatisfy({ ($0 ?? 0) >= 1 }) else { return nil }
        return v.map { $0! }
    }

    /// Prints one table row per (layer, parameter, batch): reparam's variance and the two ratios.
    func run(registry: PluginRegistry, json: Bool) throws {
        // The run as its checkpoint stored it: the U-Net, and the training cases of its dataset folder prepared by its plan.
        let run = try PatchTrainer.resume(checkpoint: checkpoint!, registry: registry, allowPluginChange: allowPluginChange, log: note)
        note("gradient variance of \(checkpoint!) (epoch \(run.epochsDone)): patches \(run.patch.patchSize.map(String.init).joined(separator: "x")) of \(run.sampler.cases.count) training cases, \(draws) draws per estimator and batch")
        let rows: [GradientVarianceRow]
        do {
            rows = try GradientVariance.measure(trained: run.model, sampler: run.sampler, seed: run.training.seed, registry: registry,
                                                batches: parsedBatches!, draws: draws, kind: batchKind, progress: note)
        } catch let e as LayerError {
            guard case .invalidConfiguration = e else { throw e }
            throw InputError(e.description)
        }
        if json {
            let e = JSONEncoder(); e.outputFormatting = [.sortedKeys]
            for r in rows { print(String(decoding: try e.encode(r), as: UTF8.self)) }
            return
        }
        print("layer   parameter  N   Var(reparam)  flipout/reparam  per-example/reparam")
        for r in rows where r.estimator == Estimator.reparam.rawValue {
            func ratio(_ e: Estimator) -> String {
                rows.first { $0.estimator == e.rawValue && $0.layer == r.layer && $0.parameter == r.parameter && $0.batch == r.batch }
                    .flatMap { GradientVariance.ratio(rows, $0) }.map { String(format: "%.3f", $0) } ?? "-"
            }
            print(r.layer.padding(toLength: 8, withPad: " ", startingAt: 0) + r.parameter.padding(toLength: 11, withPad: " ", startingAt: 0)
                  + String(format: "%-3d %12.4e  ", r.batch, r.variance) + ratio(.flipout).padding(toLength: 17, withPad: " ", startingAt: 0) + ratio(.perExample))
        }
    }
}

extension GradientVariance.BatchKind: ExpressibleByArgument {}
