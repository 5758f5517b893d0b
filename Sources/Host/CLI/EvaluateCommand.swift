// `flipout evaluate`: Dice, NLL, Brier, ECE on a split, and the OOD AUROC of mutual information.
import ArgumentParser
import Foundation
import Flipout3D

struct EvaluateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "evaluate",
        abstract: "Evaluate a checkpoint on its dataset's test split (and the OOD split, if any).",
        discussion: """
        Prints Dice, NLL, Brier and expected calibration error (15 bins) of the
        predictive mean over T Monte Carlo samples, and on the out-of-distribution
        split the AUROC of per-volume mean mutual information for telling it from
        the test split.

        Example:
          flipout evaluate --checkpoint runs/default/checkpoint.safetensors --samples 16
        """)

    @OptionGroup var plugins: PluginOptions
    @Option(help: "Checkpoint written by flipout train.") var checkpoint: String
    @Option(help: "Monte Carlo samples T per volume.") var samples = 8
    @Option(help: "Seed of the prediction draws.") var seed: UInt64 = 1
    @Flag(help: "Print one JSON object instead of text.") var json = false
    @Flag(name: .customLong("allow-plugin-change"), help: "Use the checkpoint even if a plugin's SHA-256 changed.") var allowPluginChange = false

    func validate() throws {
        try Bounds.check(samples, Bounds.samples, option: "--samples")
    }

    func run() throws {
        try reportingInputErrors {
            let registry = try plugins.registry()
            let trained = try TrainedModel.load(checkpoint, registry: registry, allowPluginChange: allowPluginChange, log: note)
            let model = try trained.binaryModel()
            let data = try trained.training.makeDataset()
            let t = model.config.bayesian ? samples : 1
            let test = try Evaluator.evaluate(model, data, .test, samples: t, seed: seed)
            var ood: SplitMetrics?
            if data.count(.ood) > 0 { ood = try Evaluator.evaluate(model, data, .ood, samples: t, seed: seed) }
            let auroc = ood.map { Evaluator.oodAUROC(inDistribution: test, outOfDistribution: $0) }
            if json {
                var o: [String: Any] = ["dice": test.dice, "nll": test.nll, "brier": test.brier, "ece": test.ece, "samples": t]
                if let auroc { o["ood_auroc_mi"] = auroc }
                print(String(decoding: try JSONSerialization.data(withJSONObject: o, options: [.sortedKeys]), as: UTF8.self))
            } else {
                print(String(format: "test (%d volumes, T=%d): dice %.4f  nll %.4f  brier %.4f  ece %.4f", data.count(.test), t, test.dice, test.nll, test.brier, test.ece))
                if let ood, let auroc {
                    print(String(format: "ood  (%d volumes): dice %.4f  nll %.4f  AUROC(mutual information) %.4f", data.count(.ood), ood.dice, ood.nll, auroc))
                }
            }
        }
    }
}
