// Scoring a folder of predictions (ours or another tool's) against a folder of label maps; summary.json, cases.csv, plots.
//
// Predictions: CASE.nii.gz (label map), optionally CASE_probabilities.nii.gz (4D, one volume per
// class: needed for NLL, Brier and ECE), CASE_entropy.nii.gz (else computed from the
// probabilities) and CASE_mi.nii.gz (mutual information; only Monte Carlo or ensemble tools have
// it). Labels: CASE.nii.gz in the given folder, or in its labelsTr when it is a dataset folder.
// A case is every prediction label map whose id has a label file. A label file without a
// prediction is an error by default (`MissingPredictions`), never silently dropped.
import Foundation

/// What `flipout evaluate` does with a labelled case that has no prediction.
public enum MissingPredictions: String, Codable, Sendable, CaseIterable {
    /// Refuse, naming the cases (the default).
    case error
    /// Score it as an empty prediction (all background): Dice 0 for every class its label holds.
    case empty
    /// Leave it out of the means; listed in summary.json.
    case skip
}

public struct PredictionFolder {
    public struct Pair: Sendable { public var id: String; public var prediction: String; public var label: String }
    public let pairs: [Pair]
    /// Prediction label maps without a label file (reported, not scored).
    public let unmatched: [String]
    /// Label files without a prediction, by id, and their paths (an error unless `MissingPredictions` says otherwise).
    public let missing: [String]
    let missingLabels: [String: String]
    public let classNames: [String]?
    /// dataset.json's "ignore" label beside the labels: voxels labelled with it are left out of
    /// every metric (Dice as nnU-Net leaves them out; also HD95, the ROI, calibration and the
    /// uncertainty figures: `CasePrediction.ignored`).
    public let ignoreLabel: Int?

    static let suffixes = ["_probabilities", "_entropy", "_mi", "_expected_entropy", "_probabilities_untempered"]

    public init(predictions: String, labels: String) throws {
        var labelDir = labels
        let tr = Paths.join(labels, "labelsTr")
        if FileManager.default.fileExists(atPath: Paths.join(labels, "dataset.json")) && FileManager.default.fileExists(atPath: tr) {
            labelDir = tr
        }
        let preds = try Self.niftiStems(predictions), labs = try Self.niftiStems(labelDir)
        let candidates = Self.predictionIDs(preds)
        pairs = candidates.compactMap { id in labs[id].map { Pair(id: id, prediction: preds[id]!, label: $0) } }
        unmatched = candidates.filter { labs[$0] == nil }
        let predicted = Set(candidates)
        missing = labs.keys.filter { !predicted.contains($0) }.sorted()
        missingLabels = labs.filter { !predicted.contains($0.key) }
        guard !pairs.isEmpty else {
            throw CaseInputError("no prediction in \(predictions) has a label map of the same name in \(labelDir) (predictions: \(candidates.prefix(5).joined(separator: ", "))\(candidates.count > 5 ? ", …" : ""); labels: \(labs.keys.sorted().prefix(5).joined(separator: ", ")))")
        }
        classNames = Self.classNames(near: labels)
        ignoreLabel = Self.ignoreLabel(near: labels)
    }

    /// The integer value of a label named "ignore" in a dataset.json in `folder` or its parent.
    static func ignoreLabel(near folder: String) -> Int? {
        for dir in [folder, Paths.parent(folder)] {
            guard let data = FileManager.default.contents(atPath: Paths.join(dir, "dataset.json")),
                  let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                  let labels = json["labels"] as? [String: Any] else { continue }
            if let v = labels[LabelScheme.ignoreName] as? Int { return v }
            if let k = labels.first(where: { $0.value as? String == LabelScheme.ignoreName })?.key { return Int(k) }
            return nil
        }
        return nil
    }

    /// The truth with the ignore label's voxels set to background, and those voxels (nil without an
    /// ignore label): `CaseEvaluation` leaves them out of every metric. All ignored is an error.
    func withoutIgnored(_ truth: [Int32], id: String) throws -> ([Int32], [Bool]?) {
        guard let ignore = ignoreLabel.map(Int32.init) else { return (truth, nil) }
        var t = truth, mask = [Bool](repeating: false, count: truth.count)
        for i in t.indices where t[i] == ignore { t[i] = 0; mask[i] = true }
        guard mask.contains(false) else {
            throw CaseInputError("\(id): every voxel of its label map is the ignore label \(ignore); there is nothing to score")
        }
        return (t, mask)
    }

    /// The label file of a labelled case without a prediction (one of `missing`).
    public func labelPath(missing id: String) -> String? { missingLabels[id] }

    /// The NIfTI files of `dir` by stem (name without .nii.gz / .nii).
    static func niftiStems(_ dir: String) throws -> [String: String] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
            throw CaseInputError("\(dir): no such folder")
        }
        var out: [String: String] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: dir).sorted() {
            let stem = name.hasSuffix(".nii.gz") ? String(name.dropLast(7)) : name.hasSuffix(".nii") ? String(name.dropLast(4)) : nil
            if let stem, !stem.hasPrefix("."), out[stem] == nil { out[stem] = Paths.join(dir, name) }
        }
        return out
    }

    /// The stems that are prediction label maps: not our side outputs, nor input channel files
    /// (CASE_0000) that predict copies beside them.
    static func predictionIDs(_ files: [String: String]) -> [String] {
        files.keys.filter { k in !suffixes.contains { k.hasSuffix($0) } && CaseInputs.split(k + ".nii.gz")?.1 == nil }.sorted()
    }

    /// Class names from a dataset.json in `folder` or its parent: nnU-Net v2 {"name": index} or MSD {"index": "name"}.
    static func classNames(near folder: String) -> [String]? {
        for dir in [folder, Paths.parent(folder)] {
            let path = Paths.join(dir, "dataset.json")
            guard let data = FileManager.default.contents(atPath: path),
                  let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                  let labels = json["labels"] as? [String: Any] else { continue }
            var byIndex: [Int: String] = [:]
            for (k, v) in labels {
                if k == LabelScheme.ignoreName || v as? String == LabelScheme.ignoreName { continue }
                if let i = v as? Int { byIndex[i] = byIndex[i] ?? k } else if let i = Int(k), let name = v as? String { byIndex[i] = byIndex[i] ?? name }
            }
            guard let top = byIndex.keys.max(), top >= 1 else { continue }
            return (0...top).map { byIndex[$0] ?? "class \($0)" }
        }
        return nil
    }

    /// A labelled case without a prediction, as an empty prediction (every voxel background, no
    /// probabilities or uncertainty): what `--missing empty` scores.
    public func loadMissing(_ id: String, classes: Int?) throws -> (CasePrediction, Int) {
        guard let path = missingLabels[id] else { preconditionFailure("PredictionFolder.loadMissing: \(id) is not a missing case") }
        let truthVolume = try NIfTI.read(path)
        let (truth, ignored) = try withoutIgnored(try truthVolume.data.array.map { v -> Int32 in
            guard v.isFinite, v >= 0, v < 65536 else { throw CaseInputError("\(path): value \(v) is not a class index") }
            return Int32(v.rounded())
        }, id: id)
        let top = Int(truth.max() ?? 0)
        let k = classes ?? classNames?.count ?? max(top + 1, 2)
        guard top < k else { throw CaseInputError("\(id): class index \(top) found, but there are \(k) classes; pass --classes \(top + 1)") }
        var c = CasePrediction(id: id, shape: truthVolume.header.shape, spacing: CasePredictor.voxelSpacing(truthVolume.header), truth: truth,
                               prediction: [Int32](repeating: 0, count: truth.count))
        c.ignored = ignored
        return (c, k)
    }

    /// Reads one pair into what scoring needs; `classes` nil takes K from the probabilities or the label values.
    public func load(_ p: Pair, classes: Int?) throws -> (CasePrediction, Int) {
        let truthVolume = try NIfTI.read(p.label), predVolume = try NIfTI.read(p.prediction)
        guard CasePredictor.sameGrid(truthVolume.header, predVolume.header) else {
            throw CaseInputError(CasePredictor.gridMismatch(p.prediction, predVolume.header, p.label, truthVolume.header) + "; predictions are scored on the label's grid")
        }
        func classIndices(_ t: Tensor, _ path: String) throws -> [Int32] {
            try t.array.map { v in
                guard v.isFinite, v >= 0, v < 65536 else { throw CaseInputError("\(path): value \(v) is not a class index") }
                return Int32(v.rounded())
            }
        }
        let (truth, ignored) = try withoutIgnored(try classIndices(truthVolume.data, p.label), id: p.id)
        let pred = try classIndices(predVolume.data, p.prediction)
        let shape = truthVolume.header.shape
        let base = (p.prediction.hasSuffix(".nii.gz") ? String(p.prediction.dropLast(7)) : String(p.prediction.dropLast(4)))
        func optional(_ suffix: String, fourD: Bool = false) throws -> Tensor? {
            for ext in [".nii.gz", ".nii"] where FileIO.exists(base + suffix + ext) {
                return fourD ? try NIfTI.read4D(base + suffix + ext).data : try NIfTI.read(base + suffix + ext).data
            }
            return nil
        }
        let probabilities = try optional("_probabilities", fourD: true)
        let top = Int(max(truth.max() ?? 0, pred.max() ?? 0))
        let k = classes ?? probabilities?.shape[0] ?? classNames?.count ?? max(top + 1, 2)
        guard top < k else {
            throw CaseInputError("\(p.id): class index \(top) found, but there are \(k) classes; pass --classes \(top + 1)")
        }
        if let probabilities, probabilities.shape != [k] + shape {
            throw CaseInputError("\(base)_probabilities: shape \(probabilities.shape), expected \(k) volumes of \(shape)")
        }
        let untempered = try optional("_probabilities_untempered", fourD: true)
        if let untempered, untempered.shape != [k] + shape {
            throw CaseInputError("\(base)_probabilities_untempered: shape \(untempered.shape), expected \(k) volumes of \(shape)")
        }
        let entropy = try optional("_entropy"), mi = try optional("_mi")
        for (name, t) in [("_entropy", entropy), ("_mi", mi)] where t != nil && t!.shape != shape {
            throw CaseInputError("\(base)\(name): shape \(t!.shape), expected \(shape)")
        }
        var c = CasePrediction(id: p.id, shape: shape, spacing: CasePredictor.voxelSpacing(truthVolume.header), truth: truth, prediction: pred,
                               probabilities: probabilities, entropy: entropy, mutualInformation: mi)
        c.untemperedProbabilities = untempered
        c.ignored = ignored
        // flipout predict's CASE.json: the pooled pairwise Dice between samples (a case score).
        if let data = FileManager.default.contents(atPath: base + ".json"),
           let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let d = json["meanSampleDice"] as? Double {
            c.sampleDice = d
        }
        return (c, k)
    }
}

/// The files `flipout evaluate` writes: summary.json, cases.csv, and three plots.
public enum EvaluationFiles {
    public static func write(scores: [CaseScore], summary: EvaluationSummary, to folder: String) throws -> [String] {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        func path(_ name: String) -> String { Paths.join(folder, name) }
        struct Document: Encodable { var summary: EvaluationSummary; var cases: [CaseScore] }
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        e.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        try FileIO.writeAtomically(Array(try e.encode(Document(summary: summary, cases: scores))), to: path("summary.json"))
        try FileIO.writeAtomically(Array(csv(scores, classNames: summary.classes).utf8), to: path("cases.csv"))
        try plots(scores: scores, summary: summary, folder: folder)
        return ["summary.json", "cases.csv", "reliability.png", "retention.png", "uncertainty_vs_dice.png",
                "ndsc_retention.png", "qubrats.png", "risk_coverage.png"].map(path)
    }

    static func csv(_ scores: [CaseScore], classNames: [String]) -> String {
        let fg = classNames.dropFirst()
        var s = (["case"] + fg.map { "dice_\($0)" } + ["mean_dice"] + fg.map { "hd95_\($0)" }
                 + ["nll", "brier", "ece_roi", "auroc_entropy", "auroc_mi", "uncertainty_error_overlap", "overlap_threshold",
                    "retention_area", "mean_entropy_foreground", "mean_mi_foreground", "roi_voxels", "error_voxels"]
                 + fg.map { "ndsc_\($0)" } + ["mean_ndsc", "ndsc_raac"] + fg.map { "qubrats_\($0)" } + ["qubrats_score", "sample_dice",
                    "nll_untempered", "ece_roi_untempered"]).joined(separator: ",") + "\n"
        func f(_ v: Double?) -> String { v.map { String(format: "%.6g", $0) } ?? "" }
        for c in scores {
            let row = [c.id] + c.dice.map(f) + [f(c.meanDice)] + c.hd95.map(f)
                + [f(c.nll), f(c.brier), f(c.eceROI), f(c.aurocEntropy), f(c.aurocMI), f(c.uncertaintyErrorOverlap), f(c.overlapThreshold),
                   f(c.retentionArea), f(c.meanEntropyForeground), f(c.meanMIForeground), String(c.roiVoxels), String(c.errorVoxels)]
                + c.ndsc.map(f) + [f(c.meanNDSC), f(c.ndscRAAC)] + fg.indices.map { i in f(c.quBraTS.map { $0[i - fg.startIndex].score }) }
                + [f(c.quBraTSScore), f(c.sampleDice), f(c.nllUntempered), f(c.eceROIUntempered)]
            s += row.joined(separator: ",") + "\n"
        }
        return s
    }

    static func plots(scores: [CaseScore], summary: EvaluationSummary, folder: String) throws {
        func path(_ name: String) -> String { Paths.join(folder, name) }
        // Reliability diagram of the pooled ROI voxels.
        var r = PNGPlot(title: "Reliability (ROI)", xLabel: "confidence", yLabel: "accuracy", x: 0...1, y: 0...1)
        if let bins = summary.pooledCalibration {
            let k = bins.count.count
            for b in 0..<k where bins.count[b] > 0 {
                let lo = Double(b) / Double(k), hi = Double(b + 1) / Double(k)
                r.bar(from: lo + 0.004, to: hi - 0.004, top: Double(bins.correct[b]) / Double(bins.count[b]), color: PNGPlot.lightBlue)
                r.points([(bins.confidence[b] / Double(bins.count[b]), Double(bins.correct[b]) / Double(bins.count[b]))], color: PNGPlot.blue, radius: 2)
            }
            r.legend(summary.pooledECEROI.map { String(format: "ECE %.4f", $0) } ?? "ECE -", color: PNGPlot.lightBlue, row: 0)
        } else {
            r.legend("no probabilities given", color: PNGPlot.gray, row: 0)
        }
        r.line([(0, 0), (1, 1)], color: PNGPlot.gray, thickness: 1)
        try r.write(to: path("reliability.png"))

        // Dice retention curves: every case faint, the mean bold.
        let curves = scores.compactMap(\.retentionCurve)
        let lowest = curves.flatMap { $0 }.min() ?? 0
        var ret = PNGPlot(title: "Dice retention", xLabel: "fraction of ROI referred (most uncertain first)", yLabel: "dice",
                          x: 0...1, y: min(max(0, (lowest * 10).rounded(.down) / 10), 0.9)...1)
        for c in curves { ret.line(c.indices.map { (Double($0) / Double(c.count - 1), c[$0]) }, color: PNGPlot.lightBlue, thickness: 1) }
        if let m = summary.retentionCurve {
            ret.line(m.indices.map { (Double($0) / Double(m.count - 1), m[$0]) }, color: PNGPlot.blue, thickness: 3)
            ret.legend(String(format: "mean, area %.4f", summary.retentionArea.mean ?? .nan), color: PNGPlot.blue, row: 0)
        }
        try ret.write(to: path("retention.png"))

        // Per-case uncertainty against Dice (failure detection).
        let pts = scores.compactMap { s in s.meanEntropyForeground.map { ($0, s.meanDice) } }
        let xMax = max(pts.map(\.0).max() ?? 0, 1e-3) * 1.1
        var sc = PNGPlot(title: "Uncertainty vs Dice", xLabel: "mean predictive entropy in predicted foreground (nats)", yLabel: "dice",
                         x: 0...xMax, y: 0...1)
        sc.points(pts, color: PNGPlot.orange)
        try sc.write(to: path("uncertainty_vs_dice.png"))

        // nDSC retention (Shifts): every case faint, the mean bold.
        let fr = NormalisedDice.fractions(points: summary.settings.ndscPoints)
        let nCurves = scores.compactMap(\.ndscRetentionCurve)
        var nd = PNGPlot(title: "nDSC retention", xLabel: "fraction of voxels retained (most certain first)", yLabel: "nDSC", x: 0...1, y: 0...1)
        for c in nCurves { nd.line(zip(fr, c).map { ($0, $1) }, color: PNGPlot.lightBlue, thickness: 1) }
        if let m = summary.ndscRetentionCurve {
            nd.line(zip(fr, m).map { ($0, $1) }, color: PNGPlot.blue, thickness: 3)
            nd.legend(String(format: "mean, R-AAC %.4f", summary.ndscRAAC.mean ?? .nan), color: PNGPlot.blue, row: 0)
        } else {
            nd.legend("no uncertainty given", color: PNGPlot.gray, row: 0)
        }
        try nd.write(to: path("ndsc_retention.png"))

        // QU-BraTS: mean Dice, FTP and FTN ratios against 100 − threshold, first region's curves per class region.
        var q = PNGPlot(title: "QU-BraTS (mean over cases)", xLabel: "100 - uncertainty threshold", yLabel: "ratio", x: 0...100, y: 0...1)
        let taus = QUBraTS.thresholds(points: summary.settings.quBraTSPoints)
        if let regions = summary.quBraTSCurves {
            for (i, r) in regions.enumerated() {
                q.line(zip(taus, r.dice).map { (100 - $0, $1) }, color: PNGPlot.blue, thickness: i == 0 ? 3 : 1)
                q.line(zip(taus, r.ftp).map { (100 - $0, $1) }, color: PNGPlot.orange, thickness: i == 0 ? 3 : 1)
                q.line(zip(taus, r.ftn).map { (100 - $0, $1) }, color: PNGPlot.gray, thickness: i == 0 ? 3 : 1)
            }
            q.legend(String(format: "Dice (AUC %.3f)", regions[0].diceAUC), color: PNGPlot.blue, row: 0)
            q.legend(String(format: "filtered TP (AUC %.3f)", regions[0].ftpAUC), color: PNGPlot.orange, row: 1)
            q.legend(String(format: "filtered TN (AUC %.3f)", regions[0].ftnAUC), color: PNGPlot.gray, row: 2)
        } else {
            q.legend("no uncertainty given", color: PNGPlot.gray, row: 0)
        }
        try q.write(to: path("qubrats.png"))

        // Risk–coverage of case-level failure detection, one curve per case score, and the ideal one.
        var rc = PNGPlot(title: "Risk-coverage (cases)", xLabel: "coverage (most certain cases first)", yLabel: "risk = 1 - dice", x: 0...1, y: 0...1)
        if let f = summary.failureDetection {
            let colors = [PNGPlot.blue, PNGPlot.orange, PNGPlot.lightBlue]
            let risk = scores.map { 1 - $0.meanDice }
            let ideal = FailureDetection.riskCoverage(risk: risk, score: risk)
            rc.line(ideal.indices.map { (Double($0 + 1) / Double(ideal.count), ideal[$0]) }, color: PNGPlot.gray, thickness: 1)
            for (i, s) in f.scores.enumerated() {
                rc.line(s.riskCoverage.indices.map { (Double($0 + 1) / Double(s.riskCoverage.count), s.riskCoverage[$0]) }, color: colors[i % 3], thickness: 2)
                rc.legend(String(format: "%@: AURC %.3f", s.score, s.aurc), color: colors[i % 3], row: i)
            }
        } else {
            rc.legend("needs 2 cases and a case score", color: PNGPlot.gray, row: 0)
        }
        try rc.write(to: path("risk_coverage.png"))
    }
}
