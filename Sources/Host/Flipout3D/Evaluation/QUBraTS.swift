// The QU-BraTS uncertainty score of one binary region: Dice AUC and filtered-TP / filtered-TN ratio AUCs over uncertainty thresholds.
//
// As RagMeh11/QU-BraTS `BraTS_Seg_Uncertainty.py` (the BraTS 2019–2020 uncertainty challenge,
// Mehta et al. 2022): uncertainties u ∈ [0, 100] (100 = most uncertain); thresholds τ = 100,
// 100 − 100/n, …, 0 (n = 40 by default). At each τ the voxels with u > τ are filtered out:
//   Dice(τ)  = Dice of truth and prediction on the remaining voxels (1 when both are empty);
//   FTP(τ)   = (TP − TP remaining) / (TP + ε), TP = true positives inside the mask;
//   FTN(τ)   = (TN − TN remaining) / (TN + ε), TN = true negatives inside the mask;
// ε = float32 machine epsilon. Each curve's area over τ (trapezoid, sklearn's `auc`) / 100, and
//   score = (AUC_Dice + (1 − AUC_FTP) + (1 − AUC_FTN)) / 3   (higher is better).
// The script's mask is a brain mask; here it is the evaluation's region of interest.
import Foundation

public struct QUBraTSScore: Codable, Sendable {
    public var region: String
    public var diceAUC: Double
    public var ftpAUC: Double
    public var ftnAUC: Double
    public var score: Double
    /// Per threshold (100 → 0): Dice, FTP ratio, FTN ratio.
    public var dice: [Double]
    public var ftp: [Double]
    public var ftn: [Double]
}

public enum QUBraTS {
    /// Float32 machine epsilon (the script's EPS).
    static let epsilon = Double(Float.ulpOfOne)

    /// 100, 100 − 100/n, …, 0 (n + 1 thresholds).
    public static func thresholds(points n: Int = 40) -> [Double] {
        precondition(n >= 1, "QUBraTS.thresholds: points \(n)")
        return (0...n).map { Double($0) * (100 / Double(n)) }.reversed()
    }

    /// The score of one binary region; `uncertainty` in [0, 100], `mask` the voxels counted for FTP/FTN.
    public static func score(region: String, truth: [Bool], prediction: [Bool], uncertainty: [Float], mask: [Bool],
                             points: Int = 40) -> QUBraTSScore {
        let n = truth.count
        precondition(prediction.count == n && uncertainty.count == n && mask.count == n, "QUBraTS.score: sizes differ")
        let taus = thresholds(points: points)
        var dice: [Double] = [], ftp: [Double] = [], ftn: [Double] = []
        var tpAll = 0, tnAll = 0
        for v in 0..<n where mask[v] {
            if truth[v] && prediction[v] { tpAll += 1 }
            if !truth[v] && !prediction[v] { tnAll += 1 }
        }
        for tau in taus {
            var inter = 0, sum = 0, tpKept = 0, tnKept = 0
            for v in 0..<n where !(Double(uncertainty[v]) > tau) {
                let t = truth[v], p = prediction[v]
                if t && p { inter += 1 }
                sum += (t ? 1 : 0) + (p ? 1 : 0)
                if mask[v] {
                    if t && p { tpKept += 1 }
                    if !t && !p { tnKept += 1 }
                }
            }
            dice.append(inter == 0 && sum == 0 ? 1 : 2 * Double(inter) / Double(sum))
            ftp.append(Double(tpAll - tpKept) / (Double(tpAll) + epsilon))
            ftn.append(Double(tnAll - tnKept) / (Double(tnAll) + epsilon))
        }
        func area(_ y: [Double]) -> Double {
            var a = 0.0
            for i in 1..<taus.count { a += (taus[i - 1] - taus[i]) * (y[i - 1] + y[i]) / 2 }
            return a / 100
        }
        let d = area(dice), tp = area(ftp), tn = area(ftn)
        return QUBraTSScore(region: region, diceAUC: d, ftpAUC: tp, ftnAUC: tn, score: (d + (1 - tp) + (1 - tn)) / 3,
                            dice: dice, ftp: ftp, ftn: ftn)
    }

    /// The uncertainty of region "class c" in [0, 100]: 100 × the binary entropy (bits) of p_c when
    /// probabilities are given, else 100 × the predictive entropy / ln K.
    public static func regionUncertainty(probabilities p: Tensor?, entropy: Tensor?, class c: Int, classes k: Int) -> [Float]? {
        if let p {
            let n = p.count / p.shape[0]
            return (0..<n).map { v in Float(100 * Metrics.binaryEntropy(min(max(Double(p.data[c * n + v]), 0), 1)) / Foundation.log(2)) }
        }
        guard let h = entropy else { return nil }
        let top = Foundation.log(Double(k))
        return h.array.map { Float(min(max(100 * Double($0) / top, 0), 100)) }
    }
}
