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
        Brier and ECE; CASE_probabilities_untempered.nii.gz (predict with a calibrated
        checkpoint) for NLL and ECE before temperature scaling; CASE_entropy.nii.gz (else computed from the probabilities);
        CASE_mi.nii.gz (mutual information). A label map without a prediction is an
        error naming the case, unless --missing empty (scored as an all-background
        prediction) or --missing skip (left out); both list it in summary.json.
        Per case and on average:
          Dice per class; HD95 in mm (voxel spacing; MONAI's definition); NLL; Brier
          (sum over classes); ECE (15 bins, top label) inside the ROI = true or predicted
          foreground dilated by --roi-margin mm; AUROC of voxel errors in the ROI ranked by
          predictive entropy and by MI; uncertainty-error overlap (best Dice of
          {entropy >= t} with the errors); the Dice retention curve (the most uncertain ROI
          voxels referred, i.e. counted correct) and its area; nDSC per class and its
          retention curve's R-AAC (Shifts, mswml/metrics.py; every voxel, entropy order);
          the QU-BraTS score per class region (Dice, filtered-TP and filtered-TN AUCs over
          41 thresholds of 100 x the region's binary entropy in bits; mask = the ROI).
        Over cases: failure detection (a case fails below --failure-dice): AUROC, the
          risk-coverage curve, AURC and E-AURC of the case scores mean entropy and mean MI
          in the predicted foreground, and 1 - the pairwise Dice between Monte Carlo
          samples (CASE.json of flipout predict).
        Writes summary.json, cases.csv, reliability.png, retention.png,
        uncertainty_vs_dice.png, ndsc_retention.png, qubrats.png and risk_coverage.png
        into --output (default: the predictions folder).
        --ood-predictions DIR adds case-level out-of-distribution detection: each case's
        mean mutual information and mean predictive entropy over its whole volume (from
        CASE_mi / CASE_entropy), and the AUROC with which each ranks the cases of DIR
        (out of distribution) above the scored cases of --predictions; no labels needed
        for DIR. In summary.json as "ood".

        With --checkpoint C: predicts the test cases (imagesTs) of the dataset folder C
        was trained on, as `flipout predict` does, into --output (default: C's folder
        /evaluation/test), and scores them against labelsTs as above; when the folder
        has imagesOod/ (`datasets export-synthetic --ood-cases N`), those are predicted
        too (evaluation/ood) and the case-level OOD AUROC is reported.

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
    @Option(help: ArgumentHelp("A labelled case without a prediction: error (default; names the cases), empty (scored as an all-background prediction), or skip (left out); empty and skip list them in summary.json.", valueName: "policy"))
    var missing: MissingPredictions = .error
    @Option(name: .customLong("failure-dice"), help: "Case-level failure detection: a case whose mean Dice is below this failed.") var failureDice = 0.5
    @Option(name: .customLong("roi-margin"), help: "Margin in mm around the true and predicted foreground for ECE, AUROC and retention.") var roiMargin = 5.0
    @Option(help: "Checkpoint written by flipout train: predict and score its dataset folder's test cases (imagesTs/labelsTs) instead.") var checkpoint: String?
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
        guard failureDice > 0 && failureDice <= 1 else { throw ValidationError("--failure-dice must be in (0, 1], e.g. 0.5.") }
        try OptionRanges.check(self)
    }

    func run() throws {
        try reportingInputErrors {
            if checkpoint != nil { try evaluateCheckpoint() } else {
                try evaluateFolder(predictions: predictions!, labels: labels!, ood: oodPredictions, output: output ?? predictions!)
            }
        }
    }

    func evaluateFolder(predictions: String, labels: String, ood oodPredictions: String?, output: String) throws {
        let folder: PredictionFolder
        do { folder = try PredictionFolder(predictions: predictions, labels: labels) } catch let e as CaseInputError { throw InputError(e.description) }
        if let scheme = try RegionEvaluation.scheme(near: labels) {
            return try evaluateRegions(folder, scheme: scheme, predictions: predictions, labels: labels, output: output)
        }
        // The OOD folder is read first, so a bad one fails before the long scoring.
        let ood = try oodPredictions.map { dir in
            let outside: [CaseUncertainty]
            do { outside = try OODDetection.read(folder: dir) } catch let e as CaseInputError { throw InputError(e.description) }
            let both = Set(outside.map(\.id)).intersection(folder.pairs.map(\.id))
            guard both.isEmpty else {
                throw InputError("--ood-predictions \(dir) and --predictions \(predictions) share case(s) \(both.sorted().prefix(5).joined(separator: ", ")); a case is either in or out of distribution: give the OOD cases' own prediction folder.")
            }
            let inside: [CaseUncertainty]
            do { inside = try OODDetection.read(folder: predictions, ids: folder.pairs.map(\.id)) } catch let e as CaseInputError { throw InputError(e.description) }
            return OODDetection(inDistribution: inside, outOfDistribution: outside)
        }
        if !folder.missing.isEmpty {
            let list = folder.missing.prefix(10).joined(separator: ", ") + (folder.missing.count > 10 ? ", …" : "")
            switch missing {
            case .error:
                throw InputError("\(folder.missing.count) labelled case(s) in \(labels) have no prediction in \(predictions): \(list). Predict them, or pass --missing empty to score them as empty predictions, or --missing skip to leave them out (either lists them in summary.json).")
            case .empty: note("evaluate: \(folder.missing.count) labelled case(s) without a prediction scored as empty predictions: \(list)")
            case .skip: note("evaluate: \(folder.missing.count) labelled case(s) without a prediction left out: \(list)")
            }
        }
        if !folder.unmatched.isEmpty { note("evaluate: \(folder.unmatched.count) prediction(s) without a label map skipped: \(folder.unmatched.prefix(5).joined(separator: ", "))") }
        var settings = EvaluationSettings()
        settings.roiMargin = roiMargin
        settings.failureDice = failureDice
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
        if missing == .empty {
            for id in folder.missing {
                let (c, kc): (CasePrediction, Int)
                do { (c, kc) = try folder.loadMissing(id, classes: k) } catch let e as CaseInputError { throw InputError(e.description) }
                k = kc
                scores.append(CaseEvaluation.score(c, classes: kc, settings: settings))
            }
            scores.sort { $0.id < $1.id }
        }
        let names = (0..<k!).map { i in folder.classNames.flatMap { i < $0.count ? $0[i] : nil } ?? (i == 0 ? "background" : "class \(i)") }
        var summary = EvaluationSummary(scores, classNames: names, settings: settings)
        summary.ood = ood
        summary.missing = folder.missing
        summary.missingPolicy = missing
        let files = try EvaluationFiles.write(scores: scores, summary: summary, to: output)
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
        if !folder.missing.isEmpty {
            print("\(folder.missing.count) labelled case(s) without a prediction \(missing == .empty ? "scored as empty" : "left out"): \(folder.missing.joined(separator: ", "))")
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
        if summary.nllUntempered.cases > 0 {
            print("  temperature scaling: NLL \(f(summary.nllUntempered.mean)) before, \(f(summary.nll.mean)) after; ECE(ROI) \(f(summary.eceROIUntempered.mean)) before, \(f(summary.eceROI.mean)) after (pooled \(f(summary.pooledECEROIUntempered)) -> \(f(summary.pooledECEROI)))")
        }
        print("  nDSC \(f(summary.meanNDSC.mean))  nDSC R-AAC \(f(summary.ndscRAAC.mean)) (Shifts; lower is better)  QU-BraTS score \(f(summary.quBraTSScore.mean)) (higher is better)")
        if let fd = summary.failureDetection {
            let parts = fd.scores.map { "\($0.score): AUROC \(f($0.auroc)), AURC \(f($0.aurc)), E-AURC \(f($0.eaurc))" }
            print("  failure detection (\(fd.failures) of \(fd.cases) cases below Dice \(fd.diceThreshold)): " + parts.joined(separator: "; "))
        }
        print("  pooled ECE over all ROI voxels \(f(summary.pooledECEROI)) (ROI = foreground of label or prediction dilated by \(roiMargin) mm)")
        for p in files { print("wrote \(p)") }
    }

    /// A region-based dataset (dataset.json regions beside the labels): Dice and HD95 per region of
    /// the label maps, as nnU-Net evaluates regions; summary.json holds every case and the means.
    func evaluateRegions(_ folder: PredictionFolder, scheme: LabelScheme, predictions: String, labels: String, output: String) throws {
        let regions = scheme.regions ?? []
        if !folder.missing.isEmpty && missing == .error {
            throw InputError("\(folder.missing.count) labelled case(s) in \(labels) have no prediction in \(predictions): \(folder.missing.prefix(10).joined(separator: ", ")). Predict them, or pass --missing empty or --missing skip.")
        }
        var pairs: [(id: String, prediction: String?, label: String)] = folder.pairs.map { ($0.id, $0.prediction, $0.label) }
        if missing == .empty { pairs += folder.missing.map { ($0, nil, folder.labelPath(missing: $0)!) } }
        pairs.sort { $0.id < $1.id }
        let line = ProgressLine(total: pairs.count, label: "evaluate regions")
        var scores: [RegionCaseScore] = []
        for (i, p) in pairs.enumerated() {
            do { scores.append(try RegionEvaluation.score(id: p.id, prediction: p.prediction, label: p.label, scheme: scheme)) } catch let e as CaseInputError {
                throw InputError(e.description)
            } catch let e as NIfTIError { throw InputError(e.description) }
            line.update(done: i + 1, p.id)
        }
        let summary = RegionSummary(scheme: scheme, cases: scores, missing: folder.missing, missingPolicy: missing)
        let e = JSONEncoder(); e.outputFormatting = [.prettyPrinted, .sortedKeys]
        try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        let path = Paths.join(output, "summary.json")
        try FileIO.writeAtomically(Array(try e.encode(summary)) + [0x0a], to: path)
        if json {
            e.outputFormatting = [.sortedKeys]
            print(String(decoding: try e.encode(summary), as: UTF8.self))
            return
        }
        func f(_ v: Double?, _ fmt: String = "%.4f") -> String { v.map { String(format: fmt, $0) } ?? "-" }
        print("region-based: " + zip(regions, scheme.regionsClassOrder ?? []).map { "\($0.name) \($0.values) (writes \($1))" }.joined(separator: ", ")
              + (scheme.ignoreLabel.map { "; ignore label \($0) left out" } ?? ""))
        print("case                      " + regions.map { $0.name.padding(toLength: 18, withPad: " ", startingAt: 0) }.joined(separator: " ") + "  (Dice / HD95 mm)")
        for s in scores {
            let id = s.id.count > 24 ? String(s.id.prefix(23)) + "…" : s.id.padding(toLength: 24, withPad: " ", startingAt: 0)
            print("\(id)  " + regions.indices.map { "\(f(s.dice[$0])) / \(f(s.hd95[$0], "%6.2f"))".padding(toLength: 18, withPad: " ", startingAt: 0) }.joined(separator: " "))
        }
        for (r, region) in regions.enumerated() {
            print("  \(region.name): dice \(f(summary.meanDice[r]))  HD95 \(f(summary.meanHD95[r], "%.2f")) mm (\(scores.filter { $0.dice[r] != nil }.count) of \(scores.count) cases hold it)")
        }
        if !folder.missing.isEmpty { print("\(folder.missing.count) labelled case(s) without a prediction \(missing == .empty ? "scored as empty" : "left out"): \(folder.missing.joined(separator: ", "))") }
        print("wrote \(path)")
    }

    /// Predicts and scores the test cases (and OOD cases, if any) of the dataset folder the checkpoint was trained on.
    func evaluateCheckpoint() throws {
        let registry = try plugins.registry()
        let path = checkpoint!
        let trained = try TrainedModel.load(path, registry: registry, allowPluginChange: allowPluginChange, log: note)
        // The dataset folder the run recorded (an absolute path).
        let patch: PatchTrainingConfig
        do {
            patch = try JSONDecoder().decode(PatchTrainingConfig.self, from: Data((try Checkpoint.read(path).metadata[UNetCheckpointKey.patchTraining] ?? "").utf8))
        } catch { throw CheckpointError(path: path, reason: "its \(UNetCheckpointKey.patchTraining) metadata cannot be decoded: \(error)") }
        let data = try DatasetFolder(patch.data)
        guard data.test.contains(where: { $0.labelPath != nil }) else {
            throw InputError("\(patch.data), the dataset folder \(path) was trained on, has no labelled test cases (imagesTs/ with labelsTs/); predict other cases with flipout predict and score them with flipout evaluate --predictions DIR --labels DIR.")
        }
        let out = output ?? (Paths.join(Paths.parent(path), "evaluation"))
        let test = Paths.join(out, "test")
        try predict(data.test.filter { $0.labelPath != nil }.map { CaseInput(id: $0.id, channels: $0.imagePaths) }, trained: trained, into: test)
        let oodImages = Paths.join(data.root, "imagesOod")
        var ood: String?
        if FileManager.default.fileExists(atPath: oodImages) {
            let found: [CaseInput]
            do { found = try CaseInputs.discover(oodImages).cases } catch let e as CaseInputError { throw InputError(e.description) }
            ood = Paths.join(out, "ood")
            try predict(found, trained: trained, into: ood!)
        }
        try evaluateFolder(predictions: test, labels: Paths.join(data.root, "labelsTs"), ood: ood, output: out)
    }

    /// `flipout predict`'s defaults: windows of the training patch size overlapping by half, the plan's preprocessing.
    func predict(_ cases: [CaseInput], trained: TrainedModel, into folder: String) throws {
        let predictor = ModelPredictor(trained, samples: samples, seed: seed)
        var settings = PredictionSettings(window: SlidingWindowOptions(window: trained.patchSize, overlap: 0.5, batch: 2, mirror: false),
                                          classNames: trained.plan.labelValueNames)
        settings.regionsClassOrder = trained.plan.regionsClassOrder
        settings.window.sigmoidOutputs = trained.plan.regions != nil
        settings.preprocessing = .plan(trained.plan)
        settings.members = [checkpoint!]
        settings.note = { note($0) }
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let line = ProgressLine(total: cases.count, label: "predict \(Paths.lastComponent(folder))")
        for (i, c) in cases.enumerated() {
            do {
                _ = try CasePredictor.run(c, channels: predictor.channels, classes: predictor.classes, draws: predictor.draws, settings: settings,
                                          folder: folder, predictor: predictor)
            } catch let e as CaseInputError { throw InputError(e.description) }
            line.update(done: i + 1, c.id)
        }
    }
}
extension MissingPredictions: ExpressibleByArgument {}
