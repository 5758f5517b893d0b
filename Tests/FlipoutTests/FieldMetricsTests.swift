// QU-BraTS, nDSC retention and case-level failure detection against a Python port of the reference scripts (test oracle), on cases including an empty prediction.
import Foundation
import Testing
import Flipout3D
import TestSupport

@Suite struct FieldMetricsTests {
    struct Case { var truth: [Bool]; var prediction: [Bool]; var uncertainty: [Float]; var mask: [Bool] }

    /// Four cases of 6x7x8: a good one, a poor one, an empty prediction, an empty truth. Uncertainty
    /// is quantised to 0.5 so ties occur, and is higher near errors in the first cases.
    static func cases() -> [Case] {
        let n = 6 * 7 * 8
        return (0..<4).map { i in
            let a = TestNoise.uniforms(n, seed: UInt64(40 + i)), b = TestNoise.uniforms(n, seed: UInt64(50 + i))
            let truth = (0..<n).map { i == 3 ? false : a[$0] < 0.3 }
            let prediction = (0..<n).map { v -> Bool in
                switch i {
                case 0: return b[v] < 0.1 ? !truth[v] : truth[v]
                case 1: return b[v] < 0.4 ? !truth[v] : truth[v]
                case 2: return false
                default: return b[v] < 0.05
                }
            }
            let noise = TestNoise.uniforms(n, seed: UInt64(60 + i))
            let u = (0..<n).map { v -> Float in
                let base = Double(noise[v]) * 60 + (truth[v] != prediction[v] ? 40 : 0)
                return Float((min(base, 100) * 2).rounded() / 2)
            }
            let mask = (0..<n).map { v in v % 7 != 0 }
            return Case(truth: truth, prediction: prediction, uncertainty: u, mask: mask)
        }
    }

    @Test func quBraTSNDSCAndFailureDetectionMatchTheReferenceScripts() throws {
        let dir = try Fixtures.temporaryDirectory("field-metrics")
        let cs = Self.cases()
        var specCases: [[String: String]] = []
        for (i, c) in cs.enumerated() {
            func path(_ s: String) -> String { dir.appendingPathComponent("\(i)_\(s)").path }
            try Data(c.truth.map { $0 ? 1 : 0 }).write(to: URL(fileURLWithPath: path("t.u8")))
            try Data(c.prediction.map { $0 ? 1 : 0 }).write(to: URL(fileURLWithPath: path("p.u8")))
            try Data(c.mask.map { $0 ? 1 : 0 }).write(to: URL(fileURLWithPath: path("m.u8")))
            try c.uncertainty.withUnsafeBufferPointer { Data(buffer: $0) }.write(to: URL(fileURLWithPath: path("u.f32")))
            specCases.append(["truth": path("t.u8"), "prediction": path("p.u8"), "mask": path("m.u8"), "uncertainty": path("u.f32")])
        }
        // Failure detection: 6 cases, one score with a tie and a missing value (+inf).
        let dice = [0.9, 0.3, 0.75, 0.1, 0.6, 0.45]
        let scores: [[Double?]] = [[0.1, 0.5, 0.2, nil, 0.2, 0.4], [0.3, 0.1, 0.2, 0.9, 0.5, 0.6]]
        let spec: [String: Any] = ["points": 40, "cases": specCases,
                                   "failure": ["dice": dice, "threshold": 0.5, "scores": scores.map { $0.map { $0 as Any? ?? NSNull() } }]]
        let specPath = dir.appendingPathComponent("spec.json")
        try JSONSerialization.data(withJSONObject: spec).write(to: specPath)
        let r = try Subprocess.run("/usr/bin/env", ["python3", Fixtures.source("uncertainty_metrics_reference.py"), specPath.path])
        #expect(r.status == 0, "\(r.stderr)")
        let ref = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        let refCases = ref["cases"] as! [[String: Any]]
        // The reference scripts compute in float32 (their casts are kept): agreement to 1e-6; failure detection to 1e-12.
        func close(_ a: [Double], _ b: Any?, _ what: String, tolerance: Double = 1e-6) {
            let b = b as! [Double]
            #expect(a.count == b.count, "\(what): \(a.count) vs \(b.count) points")
            let worst = zip(a, b).map { abs($0 - $1) }.max() ?? 0
            #expect(worst < tolerance, "\(what): differs by \(worst)")
        }
        for (i, c) in cs.enumerated() {
            let q = QUBraTS.score(region: "r", truth: c.truth, prediction: c.prediction, uncertainty: c.uncertainty, mask: c.mask)
            let o = refCases[i]
            close(q.dice, o["dice"], "case \(i) QU-BraTS Dice curve")
            close(q.ftp, o["ftp"], "case \(i) FTP curve")
            close(q.ftn, o["ftn"], "case \(i) FTN curve")
            close([q.diceAUC, q.ftpAUC, q.ftnAUC], [o["dice_auc"], o["ftp_auc"], o["ftn_auc"]].map { $0 as! Double }, "case \(i) AUCs")
            let nd = NormalisedDice.ndsc(truth: c.truth, prediction: c.prediction)
            let ret = NormalisedDice.retention(truth: c.truth, prediction: c.prediction, uncertainty: c.uncertainty)
            close([nd, ret.aac], [o["ndsc"], o["ndsc_aac"]].map { $0 as! Double }, "case \(i) nDSC, R-AAC", tolerance: 1e-6)
            close(ret.curve, o["ndsc_curve"], "case \(i) nDSC retention curve", tolerance: 1e-6)
            print("case \(i): QU-BraTS score \(q.score) (Dice AUC \(q.diceAUC), FTP \(q.ftpAUC), FTN \(q.ftnAUC)); nDSC \(nd), R-AAC \(ret.aac)")
        }
        // The empty prediction: Dice 0 before filtering, nDSC 0; the empty truth: nDSC 0 with k = 1.
        #expect(NormalisedDice.ndsc(truth: cs[2].truth, prediction: cs[2].prediction) == 0)

        let fd = FailureDetection(dice: dice, scores: [("a", scores[0]), ("b", scores[1])], threshold: 0.5)
        #expect(fd.failures == 3)
        for (s, o) in zip(fd.scores, ref["failure"] as! [[String: Any]]) {
            #expect(abs(try #require(s.auroc) - (o["auroc"] as! Double)) < 1e-12, "\(s.score) AUROC")
            close([s.aurc, s.eaurc], [o["aurc"], o["eaurc"]].map { $0 as! Double }, "\(s.score) AURC, E-AURC", tolerance: 1e-12)
            close(s.riskCoverage, o["curve"], "\(s.score) risk-coverage", tolerance: 1e-12)
        }
    }

    /// Pooled pairwise Dice between samples equals the mean over pairs of 2|A∩B| / Σ(|A|+|B|), computed directly.
    @Test func sampleDiceIsThePooledPairwiseDice() throws {
        let n = 5 * 4 * 3, k = 3, t = 4
        let sums = UncertaintySums(shape: [5, 4, 3], classes: k)
        var labels: [[Int]] = []
        for s in 0..<t {
            let r = TestNoise.uniforms(n * k, seed: UInt64(70 + s))
            let p = Tensor(shape: [k, 5, 4, 3])
            var l = [Int](repeating: 0, count: n)
            for v in 0..<n {
                let z = (0..<k).map { r[$0 * n + v] + ($0 == 1 ? 0.3 : 0) }
                let total = z.reduce(0, +)
                for c in 0..<k { p.data[c * n + v] = z[c] / total }
                l[v] = (0..<k).max { z[$0] < z[$1] }!
            }
            labels.append(l)
            sums.add(p)
        }
        let maps = sums.finish(windows: 1)
        for c in 1..<k {
            var inter = 0.0, size = 0.0
            for a in 0..<t { for b in (a + 1)..<t {
                inter += Double((0..<n).filter { labels[a][$0] == c && labels[b][$0] == c }.count)
                size += Double(labels[a].filter { $0 == c }.count + labels[b].filter { $0 == c }.count)
            } }
            let d = try #require(maps.sampleDice[c - 1])
            #expect(abs(d - 2 * inter / size) < 1e-12, "class \(c): \(d) vs \(2 * inter / size)")
        }
    }
}
