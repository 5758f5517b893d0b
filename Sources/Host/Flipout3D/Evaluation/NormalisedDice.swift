// Normalised Dice (nDSC) and its retention curve, as the Shifts MS-lesion benchmark (Shifts-Project/shifts `mswml/metrics.py`; Raina et al. 2023).
//
// nDSC rescales false positives so the score does not depend on how much of the volume the
// structure fills: with r = 0.001 (the reference lesion load) and N voxels,
//   k = (1 − r)·|T| / (r·(N − |T|))   (k = 1 when the truth is empty),
//   nDSC = 2 TP / (2 TP + k FP + FN)   (1 when truth and prediction are both empty).
// Retention: voxels sorted by uncertainty (ascending, ties in voxel order); keeping the fraction f
// most certain (⌊N f⌋ voxels) and replacing the others by the truth (referred to an expert),
// f = ln(1..200) / ln 200; R-AAC = 1 − area under nDSC(f) (trapezoid): lower is better.
// Shifts counts every voxel of the volume; so does this.
import Foundation

public enum NormalisedDice {
    public static let reference = 0.001

    static func ndsc(tp: Int, fp: Int, fn: Int, truth: Int, voxels: Int) -> Double {
        if 2 * tp + fp + fn == 0 && truth == 0 { return 1 }
        let k = truth == 0 ? 1 : (1 - reference) * Double(truth) / (reference * Double(voxels - truth))
        let den = Double(fp) * k + 2 * Double(tp) + Double(fn)
        return den == 0 ? 1 : 2 * Double(tp) / den
    }

    public static func ndsc(truth: [Bool], prediction: [Bool]) -> Double {
        precondition(truth.count == prediction.count, "NormalisedDice.ndsc: sizes differ")
        var tp = 0, fp = 0, fn = 0, t = 0
        for v in truth.indices {
            if truth[v] { t += 1 }
            if truth[v] && prediction[v] { tp += 1 } else if prediction[v] { fp += 1 } else if truth[v] { fn += 1 }
        }
        return ndsc(tp: tp, fp: fp, fn: fn, truth: t, voxels: truth.count)
    }

    /// Retained fractions ln(1..points)/ln(points).
    public static func fractions(points: Int = 200) -> [Double] {
        (1...points).map { Foundation.log(Double($0)) / Foundation.log(Double(points)) }
    }

    /// The nDSC retention curve at `fractions(points)` and its R-AAC.
    public static func retention(truth: [Bool], prediction: [Bool], uncertainty u: [Float], points: Int = 200)
        -> (curve: [Double], aac: Double) {
        let n = truth.count
        precondition(prediction.count == n && u.count == n && n > 0, "NormalisedDice.retention: sizes differ")
        let order = (0..<n).sorted { u[$0] != u[$1] ? u[$0] < u[$1] : $0 < $1 }
        // Prefix counts over the sorted voxels: kept voxels use the prediction, the rest the truth.
        var tpK = [Int](repeating: 0, count: n + 1), fpK = tpK, fnK = tpK, tRest = tpK
        for (i, v) in order.enumerated() {
            tpK[i + 1] = tpK[i] + (truth[v] && prediction[v] ? 1 : 0)
            fpK[i + 1] = fpK[i] + (!truth[v] && prediction[v] ? 1 : 0)
            fnK[i + 1] = fnK[i] + (truth[v] && !prediction[v] ? 1 : 0)
            tRest[i + 1] = tRest[i] + (truth[v] ? 1 : 0)
        }
        let totalTruth = tRest[n]
        let f = fractions(points: points)
        let curve = f.map { frac -> Double in
            let pos = min(Int(Double(n) * frac), n)
            // Referred voxels equal the truth: their foreground adds true positives.
            return ndsc(tp: tpK[pos] + (totalTruth - tRest[pos]), fp: fpK[pos], fn: fnK[pos], truth: totalTruth, voxels: n)
        }
        var area = 0.0
        for i in 1..<f.count { area += (f[i] - f[i - 1]) * (curve[i] + curve[i - 1]) / 2 }
        return (curve, 1 - area)
    }
}
