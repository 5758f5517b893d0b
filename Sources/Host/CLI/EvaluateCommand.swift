// `flipout evaluate`: score a folder of predictions against label maps, or a checkpoint on its dataset's test split.
import ArgumentParser
import Foundation
import Flipout3D

struct EvaluateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "evaluate",
        abstract: "Score a prediction folder against labels (Dice, HD95, calibration, uncertainty), or a checkpoint on its test split.",
        discussion: """
        With --predictions DIR --labels DIR, every prediction CASE.nii.gz whose CASE has a
        label map is scored (any tool's output; labels may be a dataset folder's labelsTr).
        Optional beside it: CASE_probabilities.nii.gz (4D, one volume per class) for NLL,
        Brier and ECE; CASE_entropy.nii.gz (else computed from the probabilities);
        CASE_mi.nii.gz (mutual information). Per case and on average:
          Dice per class; HD95 in mm (voxel spacing; MONAI's definition); NLL; Brier
          (sum over classes); ECE (15 bins, top label) inside the ROI = true or predicted
          foreground dilated by --roi-margin mm; AUROC of voxel errors in the ROI ranked by
          predictive entropy and by MI; uncertainty-error overlap (best Dice of
          {entropy >= t} with the errors); the Dice retention curve (the most uncertain ROI
          voxels referred, i.e. counted correct) and its area.
        Writes summary.json, cases.csv, reliability.png, retention.png and
        uncertainty_vs_dice.png into --output (default: the predictions folder).
        --ood-predictions DIR adds case-level out-of-distribution detection: each case's
        mean mutual information and mean predictive entropy over its whole volume (from
        CASE_mi / CASE_entropy), and the AUROC with which each ranks the cases of DIR
        (out of distribution) above the scored cases of --predictions; no labels needed
        for DIR. In summary.json as "ood".

        With --checkpoint: Dice, NLL, Brier and ECE of the predictive mean on the
        checkpoint's test split, and the OOD AUROC of per-volume mutual information.

        Examples:
          flipout evaluate --predictions preds --labels Dataset001/labelsTr
          flipout evaluate --predictions preds --labels syn/labelsTs --ood-predictions preds-ood
          flipout evaluate --checkpoint runs/default/checkpoint.safetensors --samples 16
        """)

    @OptionGroup var plugins: PluginOptions
    @Option(help: "Folder of predictions (flipout predict's output or another tool's).") var predictions: String?
    @Option(help: "Folder of label maps CASE.nii.gz (or a dataset folder: its labelsTr).") var labels: String?
    @Option(help: "Where summary.json, cases.csv and the plots go (default: --predictions).") var output: String?
    @Option(help: "Number of classes K, background included (default: from the probabilities, dataset.json or the labels).") var classes: Int?
    @Option(name: .customLong("ood-predictions"), help: ArgumentHelp("Folder of predictions of out-of-distribution cases (flipout predict's output): report the case-level OOD AUROC by mean MI and mean entropy.", valueName: "dir")) var oodPredictions: String?
    @Option(name: .customLong("roi-margin"), help: "Margin in mm around the true and predicted foreground for ECE, AUROC and retention.") var roiMargin = 5.0
    @Option(help: "Checkpoint written by flipout train: evaluate on its dataset's test split instead.") var checkpoint: String?
    @Option(help: "Monte Carlo samples T per volume (with --checkpoint).") var samples = 8
    @Option(help: "Seed of the prediction draws (with --checkpoint).") var seed: UInt64 = 1
    @Flag(help: "Print one JSON object instead of text.") var json = false
    @Flag(name: .customLong("allow-plugin-change"), help: "Use the checkpoint even if a plugin's SHA-256 changed.") var allowPluginChange = false

    func validate() throws {
        try Bounds.check(samples, Bounds.samples, option: "--samples")
        let folder = predictions != nil || labels != nil
        guard folder != (checkpoint != nil) else {
            throw ValidationError("give either --predictions DIR --labels DIR, or --checkpoint PATH.")
        }
        if folder { guard predictions != nil && labels != nil else { throw ValidationError("--predictions and --labels go together.") } }
        if oodPredictions != nil && predictions == nil { throw ValidationError("--ood-predictions compares with the cases of --predictions DIR --labels DIR; add them.") }
        if let classes { guard classes >= 2 else { throw ValidationError("--classes must be at least 2 (background and one class).") } }
        guard roiMargin >= 0 && roiMargin.isFinite else { throw ValidationError("--roi-margin must be a distance in mm >= 0.") }
        try OptionRanges.check(self)
    }

    func run() throws {
        try reportingInputErrors {
            if checkpoint != nil { try evaluateCheckpoint() } else { try evaluateFolder() }
        }
    }

    func evaluateFolder() throws {
        let folder: PredictionFolder
        do { folder = try PredictionFolder(predictions: predictions!, labels: labels!) } catch let e as CaseInputError { throw InputError(e.description) }
        // The OOD folder is read first, so a bad one fails before the long scoring.
        let ood = try oodPredictions.map { dir in
            let outside: [CaseUncertainty]
            do { outside = try OODDetection.read(folder: dir) } catch let e as CaseInputError { throw InputError(e.description) }
            let both = Set(outside.map(\.id)).intersection(folder.pairs.map(\.id))
            guard both.isEmpty else {
                throw InputError("--ood-predictions \(dir) and --predictions \(predictions!) share case(s) \(both.sorted().prefix(5).joined(separator: ", ")); a case is either in or out of distribution: give the OOD cases' own prediction folder.")
            }
            let inside: [CaseUncertainty]
            do { inside = try OODDetection.read(folder: predictions!, ids: folder.pairs.map(\.id)) } catch let e as CaseInputError { throw InputError(e.description) }
            return OODDetection(inDistribution: inside, outOfDistribution: outside)
        }
        if !folder.unmatched.isEmpty { note("evaluate: \(folder.unmatched.count) prediction(s) without a label map skipped: \(folder.unmatched.prefix(5).joined(separator: ", "))") }
        var settings = EvaluationSettings()
        settings.roiMargin = roiMargin
        var scores: [CaseScore] = []
        var k = classes
        let line = ProgressLine(total: folder.pairs.count, label: "evaluate")
        for (i, pair) in folder.pairs.enumerated() {
            let (c, kc): (CasePrediction, Int)
            do { (c, kc) = try folder.load(pair, classes: k) } catch let e as CaseInputError { throw InputError(e.description) }
            k = kc
            scores.append(CaseEvaluation.score(c, classes: kc, settings: settings))
            line.update(done: i + 1, pair.id)
        }
        let names = (0..<k!).map { i in folder.classNames.flatMap { i < $0.count ? $0[i] : nil } ?? (i == 0 ? "background" : "class \(i)") }
        var summary = EvaluationSummary(scores, classNames: names, settings: settings)
        summary.ood = ood
        let files = try EvaluationFiles.write(scores: scores, summary: summary, to: output ?? predictions!)
        if json {
            let e = JSONEncoder(); e.outputFormatting = [.sortedKeys]
            e.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
            print(String(decoding: try e.encode(summary), as: UTF8.self))
            return
        }
        func f(_ v: Double?, _ fmt: String = "%.4f") -> String { v.map { String(format: fmt, $0) } ?? "-" }
        print("case                      dice    HD95mm  NLL     Brier   ECE(ROI) AUROC(H) AUROC(MI) UEO    retention")
        for s in scores {
            let id = s.id.count > 24 ? String(s.id.prefix(23)) + "…" : s.id.padding(toLength: 24, withPad: " ", startingAt: 0)
            let hd = s.hd95.compactMap { $0 }
            print("\(id)  \(f(s.meanDice))  \(f(hd.isEmpty ? nil : hd.reduce(0, +) / Double(hd.count), "%6.2f"))  \(f(s.nll))  \(f(s.brier))  \(f(s.eceROI))   \(f(s.aurocEntropy))   \(f(s.aurocMI))    \(f(s.uncertaintyErrorOverlap))  \(f(s.retentionArea))")
        }
        print(String(format: "mean (%d cases)            %@  %@  %@  %@  %@   %@   %@    %@  %@", scores.count, f(summary.meanDice.mean), f(summary.meanHD95.mean, "%6.2f"),
                     f(summary.nll.mean), f(summary.brier.mean), f(summary.eceROI.mean), f(summary.aurocEntropy.mean), f(summary.aurocMI.mean),
                     f(summary.uncertaintyErrorOverlap.mean), f(summary.retentionArea.mean)))
        for (i, name) in names.enumerated().dropFirst() {
            print("  \(name): dice \(f(summary.dicePerClass[i - 1].mean))  HD95 \(f(summary.hd95PerClass[i - 1].mean, "%.2f")) mm (\(summary.hd95PerClass[i - 1].cases) of \(scores.count) cases defined)")
        }
        if let ood {
            print(String(format: "  OOD detection: AUROC %.4f by mean MI, %.4f by mean entropy (%d out-of-distribution cases against %d)",
                         ood.aurocMutualInformation, ood.aurocEntropy, ood.outOfDistributionCases, ood.inDistributionCases))
        }
        print("  pooled ECE over all ROI voxels \(f(summary.pooledECEROI)) (ROI = foreground of label or prediction dilated by \(roiMargin) mm)")
        for p in files { print("wrote \(p)") }
    }

    func evaluateCheckpoint() throws {
        let registry = try plugins.registry()
        let trained = try TrainedModel.load(checkpoint!, registry: registry, allowPluginChange: allowPluginChange, log: note)
        let model: SegmentationNet
        do { model = try trained.binaryModel() } catch { throw InputError("\(error) Score a U-Net with flipout predict --input DIR, then flipout evaluate --predictions DIR --labels DIR.") }
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
