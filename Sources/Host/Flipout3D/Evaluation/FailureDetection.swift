// Case-level failure detection: does a case's uncertainty flag the cases whose segmentation failed? AUROC, risk–coverage, AURC, E-AURC.
//
// Following the segmentation failure-detection benchmarks (Jungo et al. 2020; Zenk et al. 2024,
// after Geifman et al. 2019 and Jaeger et al. 2023 for AURC):
// - a failure is a case whose mean foreground Dice is below a threshold (default 0.5);
//   AUROC = how well the case score ranks failures above the others;
// - risk = 1 − Dice; cases sorted by score (most certain first, ties in case order); the
//   risk–coverage curve is the mean risk of the k most certain cases at coverage k/n, and
//   AURC = the mean of that curve over k = 1..n; E-AURC = AURC − the AURC of the ideal ranking
//   (by risk itself), so 0 is perfect.
// Case scores need no label: mean predictive entropy and mean MI over the predicted foreground,
// and 1 − the pooled pairwise Dice between samples (CASE.json). A case with no predicted
// foreground has no mean: it ranks as most uncertain (+∞), as a reviewer would look at it first.
import Foundation

public struct FailureDetection: Codable, Sendable {
    public struct ByScore: Codable, Sendable {
        public var score: String
        /// nil when the cases are all failures or none is.
        public var auroc: Double?
        public var aurc: Double
        public var eaurc: Double
        /// Mean risk (1 − Dice) of the k most certain cases, k = 1..n.
        public var riskCoverage: [Double]
    }
    public var diceThreshold: Double
    public var cases: Int
    public var failures: Int
    public var scores: [ByScore]

    /// `dice` per case; `scores` name -> per-case score (higher = more uncertain; nil = +∞).
    public init(dice: [Double], scores: [(String, [Double?])], threshold: Double) {
        diceThreshold = threshold
        cases = dice.count
        let failed = dice.map { $0 < threshold }
        failures = failed.filter { $0 }.count
        let risk = dice.map { 1 - $0 }
        self.scores = scores.map { name, raw in
            precondition(raw.count == dice.count, "FailureDetection: \(name) has \(raw.count) scores for \(dice.count) cases")
            let s = raw.map { $0 ?? .infinity }
            let auroc = UncertaintyMetrics.auroc(scores: s.map { Float($0) }, positives: failed)
            let curve = Self.riskCoverage(risk: risk, score: s)
            let ideal = Self.riskCoverage(risk: risk, score: risk)
            let aurc = Self.mean(curve)
            return ByScore(score: name, auroc: auroc, aurc: aurc, eaurc: aurc - Self.mean(ideal), riskCoverage: curve)
        }
    }

    /// Mean risk of the k lowest-score cases (ties in case order), k = 1..n.
    public static func riskCoverage(risk: [Double], score: [Double]) -> [Double] {
        let order = risk.indices.sorted { score[$0] != score[$1] ? score[$0] < score[$1] : $0 < $1 }
        var sum = 0.0
        return order.enumerated().map { k, i in sum += risk[i]; return sum / Double(k + 1) }
    }

    static func mean(_ v: [Double]) -> Double { v.isEmpty ? 0 : v.reduce(0, +) / Double(v.count) }
}
