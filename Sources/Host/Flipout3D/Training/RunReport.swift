// The end-of-run report: test and OOD metrics, learned prior values, written to results.json.
import Foundation

/// One layer's prior after --learn-prior: constrained values in slot order.
public struct LayerPrior: Codable, Sendable, Equatable {
    public struct Value: Codable, Sendable, Equatable { public var name: String; public var value: Float }
    public var layer: String
    public var family: String
    public var values: [Value]
    init(_ w: VariationalWeights) {
        layer = w.name; family = w.prior.family.id
        values = w.priorValues.map { Value(name: $0.0, value: $0.1) }
    }
}

public struct RunReport: Codable {
    public var posterior: String
    public var prior: String
    public var estimator: String
    /// "analytic" or "Monte Carlo (K=k)"; "-" for a deterministic model.
    public var kl: String
    public var bayesian: Bool
    public var test: SplitMetrics
    public var ood: SplitMetrics?
    public var oodAUROC: Double?
    public var learnedPrior: [String: Float]?
    /// With --learn-prior: every Flipout layer's learned prior values (`learnedPrior` is the first's).
    public var learnedPriors: [LayerPrior]?
    public var trainSeconds: Double
    public var samples: Int
    /// Real MRI only: Dice on the whole held-out hemisphere beside the threshold baseline.
    public var hemisphere: HemisphereReport?

    public var text: String {
        var s = String(format: "test: dice %.4f  nll %.4f  brier %.4f  ece %.4f  roi ece %.4f", test.dice, test.nll, test.brier, test.ece, test.roiECE ?? .nan)
        if let ood, let a = oodAUROC { s += String(format: "\nood:  dice %.4f  nll %.4f  AUROC(MI, ood vs test) %.4f", ood.dice, ood.nll, a) }
        if let h = hemisphere {
            s += String(format: "\nheld-out hemisphere: model dice %.4f  intensity-threshold baseline dice %.4f (threshold %.2f fitted on the training hemisphere)", h.modelDice, h.thresholdDice, h.threshold)
        }
        if let all = learnedPriors {
            for l in all { s += "\nlearned prior \(l.layer) (\(l.family)): " + l.values.map { "\($0.name)=\($0.value)" }.joined(separator: " ") }
        } else if let lp = learnedPrior {
            s += "\nlearned prior: " + lp.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        }
        s += String(format: "\ntrain time %.1f s (%@, %@ / %@, estimator %@)", trainSeconds, bayesian ? "Bayesian" : "deterministic", posterior, prior, estimator)
        return s
    }

    /// Evaluates the trained model on the test split (and the OOD split if the dataset has one)
    /// and writes results.json into the run folder.
    public static func evaluate(trainer: Trainer, trainSeconds: Double) throws -> RunReport {
        let m = trainer.model, t = trainer.training
        let samples = m.config.bayesian ? t.evaluationSamples : 1
        let test = try Evaluator.evaluate(m, trainer.dataset, .test, samples: samples, seed: t.seed, batchSize: t.batchSize)
        var ood: SplitMetrics?
        var auroc: Double?
        if trainer.dataset.count(.ood) > 0 {
            let o = try Evaluator.evaluate(m, trainer.dataset, .ood, samples: samples, seed: t.seed, batchSize: t.batchSize)
            ood = o
            auroc = m.config.bayesian ? Evaluator.oodAUROC(inDistribution: test, outOfDistribution: o) : nil
        }
        let first = m.flipoutLayers.first
        let report = RunReport(
            posterior: m.config.bayesian ? m.config.posterior : "-", prior: m.config.bayesian ? m.config.prior : "-",
            estimator: first?.estimator.rawValue ?? "deterministic",
            kl: first.map { $0.weights.klIsAnalytic ? "analytic" : "Monte Carlo (K=\(m.config.klSamples))" } ?? "-",
            bayesian: m.config.bayesian, test: test, ood: ood, oodAUROC: auroc,
            learnedPrior: m.config.learnPrior ? first.map { Dictionary(uniqueKeysWithValues: $0.weights.priorValues) } : nil,
            learnedPriors: m.config.learnPrior ? m.flipoutLayers.map { LayerPrior($0.weights) } : nil,
            trainSeconds: trainSeconds, samples: samples,
            hemisphere: try (trainer.dataset as? Colin27Dataset).map { try HemisphereEvaluation.run(model: m, colin: $0.colin, samples: samples, seed: t.seed) })
        let e = JSONEncoder(); e.outputFormatting = [.prettyPrinted, .sortedKeys]
        try FileIO.writeAtomically(Array(try e.encode(report)), to: Paths.join(trainer.runDirectory, "results.json"))
        return report
    }
}
