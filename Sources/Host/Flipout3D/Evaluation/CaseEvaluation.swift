// One case scored: every metric of a prediction against its label map, and the aggregate over cases.
import Foundation

/// What a prediction of one case offers for scoring, on the label map's grid (D, H, W).
public struct CasePrediction {
    public var id: String
    public var shape: [Int]
    /// Voxel size in mm along (D, H, W).
    public var spacing: [Double]
    public var truth: [Int32]
    public var prediction: [Int32]
    /// (K, D, H, W) predictive probabilities, if the tool wrote them.
    public var probabilities: Tensor?
    /// (D, H, W) predictive entropy H[E p]; computed from `probabilities` when absent.
    public var entropy: Tensor?
    /// (D, H, W) mutual information (needs Monte Carlo samples: only Bayesian or ensemble tools have it).
    public var mutualInformation: Tensor?
    /// The pooled pairwise Dice between Monte Carlo samples (CASE.json's meanSampleDice), if known.
    public var sampleDice: Double?
    /// (K, D, H, W) the predictive mean before temperature scaling (flipout predict with a calibrated checkpoint).
    public var untemperedProbabilities: Tensor?
    /// (D, H, W) voxels left out of every metric: those of the dataset's ignore label, whose true
    /// class is unknown (nnU-Net's `ignore`). nil: every voxel counts.
    public var ignored: [Bool]?

    public init(id: String, shape: [Int], spacing: [Double], truth: [Int32], prediction: [Int32],
                probabilities: Tensor? = nil, entropy: Tensor? = nil, mutualInformation: Tensor? = nil) {
        self.id = id; self.shape = shape; self.spacing = spacing; self.truth = truth; self.prediction = prediction
        self.probabilities = probabilities; self.entropy = entropy; self.mutualInformation = mutualInformation
    }
}

/// How scoring is done; defaults as in the help text.
public struct EvaluationSettings: Codable, Sendable {
    /// ROI margin around the union of true and predicted foreground, mm.
    public var roiMargin: Double = 5
    public var calibrationBins = 15
    public var retentionPoints = 21
    /// QU-BraTS thresholds: 100, 100 − 100/n, …, 0 (the script's default n = 40).
    public var quBraTSPoints = 40
    /// Retained fractions of the nDSC retention curve (Shifts: 200).
    public var ndscPoints = 200
    /// A case with mean foreground Dice below this is a failure (case-level failure detection).
    public var failureDice = 0.5
    public init() {}
}

/// Every metric of one case. Optional values are undefined for the case (see each).
public struct CaseScore: Codable, Sendable {
    public var id: String
    /// Dice per foreground class 1..<K (index 0 = class 1).
    public var dice: [Double]
    public var meanDice: Double
    /// HD95 in mm per foreground class; nil when exactly one of the two masks is empty.
    public var hd95: [Double?]
    public var nll: Double?
    public var brier: Double?
    /// ECE (top-label, equal-width bins) inside the ROI; nil without probabilities or with an empty ROI.
    public var eceROI: Double?
    /// AUROC of voxel errors (inside the ROI) ranked by predictive entropy / by mutual information.
    public var aurocEntropy: Double?
    public var aurocMI: Double?
    /// Best Dice between {entropy ≥ τ} and the error mask, and its τ (nats).
    public var uncertaintyErrorOverlap: Double?
    public var overlapThreshold: Double?
    /// Dice retention curve (entropy order) and its area.
    public var retentionCurve: [Double]?
    public var retentionArea: Double?
    /// Mean predictive entropy / mutual information over the predicted foreground (nats).
    public var meanEntropyForeground: Double?
    public var meanMIForeground: Double?
    public var roiVoxels: Int
    public var errorVoxels: Int
    public var calibration: CalibrationBins?
    /// QU-BraTS per foreground class (one-vs-rest region; mask = the ROI) and the mean score.
    public var quBraTS: [QUBraTSScore]?
    public var quBraTSScore: Double?
    /// nDSC per foreground class and its mean; the nDSC retention curve (predictive entropy
    /// order, mean over classes) and its R-AAC (lower is better).
    public var ndsc: [Double] = []
    public var meanNDSC: Double = 0
    public var ndscRetentionCurve: [Double]?
    public var ndscRAAC: Double?
    /// The pooled pairwise Dice between Monte Carlo samples (from CASE.json), if known.
    public var sampleDice: Double?
    /// NLL and ROI ECE before temperature scaling (when the untempered probabilities are given).
    public var nllUntempered: Double?
    public var eceROIUntempered: Double?
    public var calibrationUntempered: CalibrationBins?
}

public enum CaseEvaluation {
    public static func score(_ full: CasePrediction, classes k: Int, settings: EvaluationSettings = EvaluationSettings()) -> CaseScore {
        let n = full.truth.count
        precondition(full.prediction.count == n && full.shape.reduce(1, *) == n, "CaseEvaluation: \(full.id) sizes differ")
        precondition(full.ignored.map { $0.count == n } ?? true, "CaseEvaluation: \(full.id) ignore mask size differs")
        if let p = full.probabilities { precondition(p.shape == [k] + full.shape, "CaseEvaluation: \(full.id) probabilities \(p.shape), expected \([k] + full.shape)") }
        if let p = full.untemperedProbabilities { precondition(p.shape == [k] + full.shape, "CaseEvaluation: \(full.id) untempered probabilities \(p.shape)") }
        full.entropy?.checkShape(full.shape, "CaseEvaluation entropy of \(full.id)")
        full.mutualInformation?.checkShape(full.shape, "CaseEvaluation mutual information of \(full.id)")
        let ignored = full.ignored.flatMap { $0.contains(true) ? $0 : nil }
        // Surface distances and the ROI need the grid: ignored voxels take no part in either
        // (SurfaceDistance's rule; the ROI grows from the scored foreground and leaves them out).
        let hd = (1..<k).map { cls in
            SurfaceDistance.hd95(full.prediction.map { $0 == cls }, full.truth.map { $0 == cls }, shape: full.shape, spacing: full.spacing, excluded: ignored)
        }
        var roi: [Bool]
        if let ignored {
            let pred = full.prediction.indices.map { ignored[$0] ? 0 : full.prediction[$0] }, truth = full.truth.indices.map { ignored[$0] ? 0 : full.truth[$0] }
            roi = UncertaintyMetrics.regionOfInterest(prediction: pred, truth: truth, shape: full.shape, spacing: full.spacing, margin: settings.roiMargin)
        } else {
            roi = UncertaintyMetrics.regionOfInterest(prediction: full.prediction, truth: full.truth, shape: full.shape,
                                                      spacing: full.spacing, margin: settings.roiMargin)
        }
        // Every other metric is a sum over voxels: score the kept voxels alone, as a (V, 1, 1) case.
        let c: CasePrediction
        if let ignored {
            let kept = ignored.indices.filter { !ignored[$0] }
            c = full.keeping(kept)
            roi = kept.map { roi[$0] }
        } else {
            c = full
        }
        let counts = OverlapCounts(prediction: c.prediction, truth: c.truth, classes: k)
        let dice = (1..<k).map { counts.dice($0) }
        let errors = c.prediction.indices.map { c.prediction[$0] != c.truth[$0] }
        var s = CaseScore(id: c.id, dice: dice, meanDice: counts.meanForegroundDice, hd95: hd,
                          roiVoxels: roi.reduce(0) { $0 + ($1 ? 1 : 0) }, errorVoxels: errors.reduce(0) { $0 + ($1 ? 1 : 0) })
        var entropy = c.entropy
        if let p = c.probabilities {
            s.nll = ClassMetrics.nll(probabilities: p, truth: c.truth)
            s.brier = ClassMetrics.brier(probabilities: p, truth: c.truth)
            var bins = CalibrationBins(bins: settings.calibrationBins)
            bins.add(probabilities: p, truth: c.truth, include: roi)
            s.eceROI = bins.ece
            s.calibration = bins
            if entropy == nil { entropy = predictiveEntropy(p) }
        }
        if let p = c.untemperedProbabilities {
            s.nllUntempered = ClassMetrics.nll(probabilities: p, truth: c.truth)
            var bins = CalibrationBins(bins: settings.calibrationBins)
            bins.add(probabilities: p, truth: c.truth, include: roi)
            s.eceROIUntempered = bins.ece
            s.calibrationUntempered = bins
        }
        let inROI = roi.indices.filter { roi[$0] }
        let roiErrors = inROI.map { errors[$0] }
        if let h = entropy {
            s.aurocEntropy = UncertaintyMetrics.auroc(scores: inROI.map { h.data[$0] }, positives: roiErrors)
            let ueo = UncertaintyMetrics.uncertaintyErrorOverlap(uncertainty: h.array, errors: errors, maximum: Foundation.log(Double(k)))
            s.uncertaintyErrorOverlap = ueo.overlap; s.overlapThreshold = ueo.threshold
            let r = UncertaintyMetrics.retentionCurve(prediction: c.prediction, truth: c.truth, classes: k, uncertainty: h.array,
                                                      roi: roi, points: settings.retentionPoints)
            // Undefined (NaN) when the case has no foreground class in either map (ClassMetrics' Dice rule).
            if !r.area.isNaN { s.retentionCurve = r.curve; s.retentionArea = r.area }
            s.meanEntropyForeground = meanOverForeground(h, c.prediction)
        }
        // nDSC per class; its retention curve and QU-BraTS by uncertainty.
        let fg = (1..<k).map { cls in (truth: c.truth.map { $0 == cls }, prediction: c.prediction.map { $0 == cls }) }
        s.ndsc = fg.map { NormalisedDice.ndsc(truth: $0.truth, prediction: $0.prediction) }
        s.meanNDSC = s.ndsc.reduce(0, +) / Double(s.ndsc.count)
        if let h = entropy {
            let curves = fg.map { NormalisedDice.retention(truth: $0.truth, prediction: $0.prediction, uncertainty: h.array, points: settings.ndscPoints) }
            s.ndscRetentionCurve = curves[0].curve.indices.map { i in curves.reduce(0.0) { $0 + $1.curve[i] } / Double(curves.count) }
            s.ndscRAAC = curves.reduce(0.0) { $0 + $1.aac } / Double(curves.count)
        }
        var regions: [QUBraTSScore] = []
        for (i, m) in fg.enumerated() {
            guard let u = QUBraTS.regionUncertainty(probabilities: c.probabilities, entropy: entropy, class: i + 1, classes: k) else { break }
            regions.append(QUBraTS.score(region: "class \(i + 1)", truth: m.truth, prediction: m.prediction, uncertainty: u, mask: roi,
                                         points: settings.quBraTSPoints))
        }
        if !regions.isEmpty { s.quBraTS = regions; s.quBraTSScore = regions.reduce(0.0) { $0 + $1.score } / Double(regions.count) }
        s.sampleDice = c.sampleDice
        if let mi = c.mutualInformation {
            s.aurocMI = UncertaintyMetrics.auroc(scores: inROI.map { mi.data[$0] }, positives: roiErrors)
            s.meanMIForeground = meanOverForeground(mi, c.prediction)
        }
        return s
    }

    /// H[p] per voxel of (K, D, H, W) probabilities -> (D, H, W).
    public static func predictiveEntropy(_ p: Tensor) -> Tensor {
        let k = p.shape[0], n = p.count / k
        let h = Tensor(shape: Array(p.shape.dropFirst()))
        for v in 0..<n {
            var e = 0.0
            for c in 0..<k { e -= Entropy.term(Double(p.data[c * n + v])) }
            h.data[v] = Float(e)
        }
        return h
    }

    static func meanOverForeground(_ u: Tensor, _ prediction: [Int32]) -> Double? {
        var s = 0.0, m = 0
        for v in 0..<prediction.count where prediction[v] != 0 { s += Double(u.data[v]); m += 1 }
        return m == 0 ? nil : s / Double(m)
    }
}

extension CasePrediction {
    /// The voxels at flat indices `kept` alone, as a (V, 1, 1) case with no ignore mask (for the
    /// metrics that are sums over voxels; not for surface distances or the ROI).
    func keeping(_ kept: [Int]) -> CasePrediction {
        let m = kept.count
        precondition(m > 0, "CaseEvaluation: every voxel of \(id) is ignored")
        func volume(_ t: Tensor?) -> Tensor? {
            t.map { t in t.withUnsafeValues { b in Tensor(shape: [m, 1, 1], values: kept.map { b[$0] }) } }
        }
        func classes(_ t: Tensor?) -> Tensor? {
            t.map { t in
                let k = t.shape[0], n = t.count / k
                return t.withUnsafeValues { b in Tensor(shape: [k, m, 1, 1], values: (0..<k).flatMap { j in kept.map { b[j * n + $0] } }) }
            }
        }
        var c = CasePrediction(id: id, shape: [m, 1, 1], spacing: spacing, truth: kept.map { truth[$0] }, prediction: kept.map { prediction[$0] },
                               probabilities: classes(probabilities), entropy: volume(entropy), mutualInformation: volume(mutualInformation))
        c.sampleDice = sampleDice
        c.untemperedProbabilities = classes(untemperedProbabilities)
        return c
    }
}

/// The shared entropy term, 0 ln 0 = 0.
public enum Entropy {
    /// p ln p for p in [0, 1] (clamped), 0 at 0.
    @inline(__always)
    public static func term(_ p: Double) -> Double {
        let q = min(max(p, 0), 1)
        return q > 0 ? q * Foundation.log(q) : 0
    }
}

/// Means over cases (ignoring undefined values, with how many were defined) and pooled calibration.
public struct EvaluationSummary: Codable, Sendable {
    public struct Mean: Codable, Sendable {
        public var mean: Double?
        public var cases: Int
        init(_ values: [Double?]) {
            let v = values.compactMap { $0 }.filter(\.isFinite)
            mean = v.isEmpty ? nil : v.reduce(0, +) / Double(v.count); cases = v.count
        }
    }
    public var cases: Int
    public var classes: [String]
    public var dicePerClass: [Mean]
    public var hd95PerClass: [Mean]
    public var meanDice: Mean
    public var meanHD95: Mean
    public var nll: Mean
    public var brier: Mean
    public var eceROI: Mean
    /// ECE over the ROI voxels of every case together.
    public var pooledECEROI: Double?
    public var aurocEntropy: Mean
    public var aurocMI: Mean
    public var uncertaintyErrorOverlap: Mean
    public var retentionArea: Mean
    /// The mean retention curve over cases that have one.
    public var retentionCurve: [Double]?
    /// The calibration bins of every case's ROI added up (the reliability diagram).
    public var pooledCalibration: CalibrationBins?
    public var settings: EvaluationSettings
    /// Case-level out-of-distribution detection (`flipout evaluate --ood-predictions`).
    public var ood: OODDetection?
    public var quBraTSScore: Mean
    /// Before temperature scaling (calibrated checkpoints): NLL, ROI ECE, pooled ROI ECE.
    public var nllUntempered: Mean
    public var eceROIUntempered: Mean
    public var pooledECEROIUntempered: Double?
    public var meanNDSC: Mean
    public var ndscRAAC: Mean
    /// The mean nDSC retention curve over cases that have one (at NormalisedDice.fractions).
    public var ndscRetentionCurve: [Double]?
    /// Per QU-BraTS region, the mean curves over cases (Dice, FTP, FTN per threshold 100 → 0).
    public var quBraTSCurves: [QUBraTSScore]?
    /// Does case uncertainty flag the failed cases? (mean Dice < settings.failureDice)
    public var failureDetection: FailureDetection?
    /// Labelled cases without a prediction, and what was done with them (`--missing`).
    public var missing: [String] = []
    public var missingPolicy: MissingPredictions = .error

    public init(_ scores: [CaseScore], classNames: [String], settings: EvaluationSettings) {
        cases = scores.count
        classes = classNames
        let k = scores.first?.dice.count ?? 0
        dicePerClass = (0..<k).map { c in Mean(scores.map { $0.dice[c] }) }
        hd95PerClass = (0..<k).map { c in Mean(scores.map { $0.hd95[c] }) }
        meanDice = Mean(scores.map { $0.meanDice })
        meanHD95 = Mean(scores.map { s in
            let v = s.hd95.compactMap { $0 }
            return v.isEmpty ? nil : v.reduce(0, +) / Double(v.count)
        })
        nll = Mean(scores.map(\.nll)); brier = Mean(scores.map(\.brier)); eceROI = Mean(scores.map(\.eceROI))
        aurocEntropy = Mean(scores.map(\.aurocEntropy)); aurocMI = Mean(scores.map(\.aurocMI))
        uncertaintyErrorOverlap = Mean(scores.map(\.uncertaintyErrorOverlap)); retentionArea = Mean(scores.map(\.retentionArea))
        let curves = scores.compactMap(\.retentionCurve)
        retentionCurve = curves.isEmpty ? nil : curves[0].indices.map { i in curves.reduce(0.0) { $0 + $1[i] } / Double(curves.count) }
        var pooled: CalibrationBins?
        for s in scores { if let b = s.calibration { if pooled == nil { pooled = b } else { pooled!.merge(b) } } }
        pooledCalibration = pooled
        pooledECEROI = pooled?.ece
        self.settings = settings
        nllUntempered = Mean(scores.map(\.nllUntempered)); eceROIUntempered = Mean(scores.map(\.eceROIUntempered))
        var pooledU: CalibrationBins?
        for s in scores { if let b = s.calibrationUntempered { if pooledU == nil { pooledU = b } else { pooledU!.merge(b) } } }
        pooledECEROIUntempered = pooledU?.ece
        quBraTSScore = Mean(scores.map(\.quBraTSScore)); meanNDSC = Mean(scores.map(\.meanNDSC)); ndscRAAC = Mean(scores.map(\.ndscRAAC))
        let nc = scores.compactMap(\.ndscRetentionCurve)
        ndscRetentionCurve = nc.isEmpty ? nil : nc[0].indices.map { i in nc.reduce(0.0) { $0 + $1[i] } / Double(nc.count) }
        let qs = scores.compactMap(\.quBraTS)
        if let first = qs.first {
            func avg(_ f: (QUBraTSScore) -> Double, _ r: Int) -> Double { qs.reduce(0.0) { $0 + f($1[r]) } / Double(qs.count) }
            func avgCurve(_ f: (QUBraTSScore) -> [Double], _ r: Int) -> [Double] {
                f(first[r]).indices.map { i in qs.reduce(0.0) { $0 + f($1[r])[i] } / Double(qs.count) }
            }
            quBraTSCurves = first.indices.map { r in
                QUBraTSScore(region: first[r].region, diceAUC: avg(\.diceAUC, r), ftpAUC: avg(\.ftpAUC, r), ftnAUC: avg(\.ftnAUC, r),
                             score: avg(\.score, r), dice: avgCurve(\.dice, r), ftp: avgCurve(\.ftp, r), ftn: avgCurve(\.ftn, r))
            }
        }
        if scores.count >= 2 {
            var named: [(String, [Double?])] = []
            if scores.contains(where: { $0.meanEntropyForeground != nil }) || scores.allSatisfy({ $0.retentionArea != nil }) {
                named.append(("mean_entropy_foreground", scores.map(\.meanEntropyForeground)))
            }
            if scores.contains(where: { $0.meanMIForeground != nil }) { named.append(("mean_mi_foreground", scores.map(\.meanMIForeground))) }
            if scores.allSatisfy({ $0.sampleDice != nil }) { named.append(("sample_disagreement", scores.map { $0.sampleDice.map { 1 - $0 } })) }
            if !named.isEmpty {
                failureDetection = FailureDetection(dice: scores.map(\.meanDice), scores: named, threshold: settings.failureDice)
            }
        }
    }
}
