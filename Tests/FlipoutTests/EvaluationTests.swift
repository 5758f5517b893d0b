// Evaluation metrics against independent computations: brute-force distances, scipy's EDT and MONAI's HD95
// recipe (python3), pairwise AUROC, and the special cases (empty masks, perfect and all-wrong predictions).
import Foundation
import Testing
import Flipout3D
import TestSupport

/// A (D, H, W) mask of a few random ellipsoidal blobs.
private func blobs(_ shape: [Int], seed: UInt64, count: Int = 3) -> [Bool] {
    var g = SplitMix64(seed: seed)
    var m = [Bool](repeating: false, count: shape.reduce(1, *))
    for _ in 0..<count {
        let c = shape.map { Double($0) * Double(g.uniform()) }
        let r = shape.map { 1 + Double($0) / 4 * Double(g.uniform()) }
        for z in 0..<shape[0] { for y in 0..<shape[1] { for x in 0..<shape[2] {
            let e = pow((Double(z) - c[0]) / r[0], 2) + pow((Double(y) - c[1]) / r[1], 2) + pow((Double(x) - c[2]) / r[2], 2)
            if e <= 1 { m[(z * shape[1] + y) * shape[2] + x] = true }
        } } }
    }
    return m
}

private let pythonHasScipy: Bool = {
    (try? Subprocess.run("/usr/bin/env", ["python3", "-c", "import scipy.ndimage, numpy"]))?.status == 0
}()

@Suite struct EvaluationTests {
    @Test func distanceTransformMatchesBruteForceOnAnisotropicGrid() {
        let shape = [6, 9, 11], spacing = [2.5, 1.0, 0.7]
        let f = blobs(shape, seed: 3, count: 2)
        let d = DistanceTransform.euclidean(features: f, shape: shape, spacing: spacing)
        let feats = f.indices.filter { f[$0] }
        func coords(_ i: Int) -> [Double] { [Double(i / (9 * 11)), Double(i / 11 % 9), Double(i % 11)] }
        for v in 0..<f.count {
            let a = coords(v)
            let brute = feats.map { j -> Double in
                let b = coords(j)
                return (0..<3).reduce(0.0) { $0 + pow((a[$1] - b[$1]) * spacing[$1], 2) }.squareRoot()
            }.min()!
            #expect(abs(d[v] - brute) < 1e-9, "voxel \(v): \(d[v]) vs brute force \(brute)")
        }
        let none = DistanceTransform.euclidean(features: [Bool](repeating: false, count: 8), shape: [2, 2, 2], spacing: [1, 1, 1])
        #expect(none.allSatisfy { $0 == .infinity })
    }

    @Test(.enabled(if: pythonHasScipy, "python3 with scipy and numpy (scripts/test installs them)"))
    func distanceTransformAndHD95MatchScipyAndMONAIRecipe() throws {
        let dir = try Fixtures.temporaryDirectory("flipout-hd95")
        for (seed, shape, spacing) in [(UInt64(1), [14, 17, 19], [1.0, 1.0, 1.0]), (2, [12, 20, 16], [3.0, 0.8, 1.2]), (5, [9, 9, 25], [0.5, 2.0, 1.0])] {
            let a = blobs(shape, seed: seed), b = blobs(shape, seed: seed + 100)
            let aPath = dir.appendingPathComponent("a.u8"), bPath = dir.appendingPathComponent("b.u8"), ePath = dir.appendingPathComponent("edt.f64")
            try Data(a.map { $0 ? 1 : 0 }).write(to: aPath)
            try Data(b.map { $0 ? 1 : 0 }).write(to: bPath)
            let spec: [String: Any] = ["shape": shape, "spacing": spacing, "a": aPath.path, "b": bPath.path, "edt_out": ePath.path]
            let specPath = dir.appendingPathComponent("spec.json")
            try JSONSerialization.data(withJSONObject: spec).write(to: specPath)
            let r = try Subprocess.run("/usr/bin/env", ["python3", Fixtures.source("surface_distance_reference.py"), specPath.path])
            #expect(r.status == 0, "\(r.stderr)")
            let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
            let scipyEDT = try Data(contentsOf: ePath).withUnsafeBytes { Array($0.bindMemory(to: Double.self)) }
            let ours = DistanceTransform.euclidean(features: a, shape: shape, spacing: spacing)
            #expect(scipyEDT.count == ours.count)
            let worst = zip(ours, scipyEDT).map { abs($0 - $1) }.max()!
            #expect(worst < 1e-9, "EDT differs from scipy by \(worst) (seed \(seed), spacing \(spacing))")
            let hd = try #require(SurfaceDistance.hd95(a, b, shape: shape, spacing: spacing))
            let ref = try #require(json["hd95"] as? Double)
            #expect(abs(hd - ref) < 1e-9, "HD95 \(hd) vs MONAI recipe \(ref)")
            #expect(hd > 0)
        }
    }

    @Test func hd95SpecialCases() {
        let shape = [5, 5, 5], s = [1.0, 1.0, 1.0]
        let empty = [Bool](repeating: false, count: 125)
        var one = empty; one[62] = true
        #expect(SurfaceDistance.hd95(empty, empty, shape: shape, spacing: s) == 0)
        #expect(SurfaceDistance.hd95(one, empty, shape: shape, spacing: s) == nil)
        #expect(SurfaceDistance.hd95(one, one, shape: shape, spacing: s) == 0)
        // Two single voxels 3 voxels apart along W at 0.5 mm, 2 apart along D at 2 mm: sqrt(1.5² + 4²).
        var p = empty, q = empty
        p[(0 * 5 + 2) * 5 + 1] = true; q[(2 * 5 + 2) * 5 + 4] = true // (0, 2, 1) and (2, 2, 4)
        let hd = SurfaceDistance.hd95(p, q, shape: shape, spacing: [2, 1, 0.5])!
        #expect(abs(hd - (1.5 * 1.5 + 4 * 4).squareRoot()) < 1e-12)
        #expect(SurfaceDistance.percentile([1, 2, 3, 4], 50) == 2.5)
    }

    @Test func aurocMatchesThePairwiseDefinition() throws {
        var g = SplitMix64(seed: 9)
        for n in [2, 7, 50, 400] {
            // Scores on a coarse grid so that ties happen; positives more likely at high scores.
            let scores = (0..<n).map { _ in Float(Int(g.uniform() * 10)) / 10 }
            let pos = scores.map { g.uniform() < 0.2 + $0 * 0.6 }
            var num = 0.0, pairs = 0.0
            for i in 0..<n where pos[i] { for j in 0..<n where !pos[j] {
                num += scores[i] > scores[j] ? 1 : scores[i] == scores[j] ? 0.5 : 0
                pairs += 1
            } }
            let fast = UncertaintyMetrics.auroc(scores: scores, positives: pos)
            if pairs == 0 { #expect(fast == nil) } else {
                #expect(abs(try #require(fast) - num / pairs) < 1e-12, "n = \(n)")
            }
        }
        #expect(UncertaintyMetrics.auroc(scores: [0.1, 0.9], positives: [false, true]) == 1)
        #expect(UncertaintyMetrics.auroc(scores: [0.9, 0.1], positives: [false, true]) == 0)
        #expect(UncertaintyMetrics.auroc(scores: [-0.0, 0.0], positives: [false, true]) == 0.5)
        #expect(UncertaintyMetrics.auroc(scores: [1, 2], positives: [true, true]) == nil)
    }

    @Test func diceNLLAndBrierMultiClass() {
        let truth: [Int32] = [0, 1, 1, 2, 2, 0]
        #expect(ClassMetrics.dice(prediction: truth, truth: truth, classes: 3) == [1, 1, 1])
        // Class 1 predicted {1, 3}, true {1, 2}: Dice 2·1/4; class 2 predicted {4}, true {3, 4}: 2/3.
        let pred: [Int32] = [0, 1, 0, 1, 2, 0]
        let d = ClassMetrics.dice(prediction: pred, truth: truth, classes: 3)
        #expect(abs(d[1] - 0.5) < 1e-12 && abs(d[2] - 2.0 / 3) < 1e-12)
        // A class absent from both is NaN (nnU-Net's rule; means leave it out), present in one only 0.
        #expect(ClassMetrics.dice(prediction: [0, 0], truth: [0, 0], classes: 2)[1].isNaN)
        #expect(ClassMetrics.meanIgnoringAbsent([0.5, .nan, 1]) == 0.75 && ClassMetrics.meanIgnoringAbsent([.nan]).isNaN)
        #expect(OverlapCounts(prediction: [0, 2], truth: [0, 2], classes: 3).meanForegroundDice == 1)
        #expect(ClassMetrics.dice(prediction: [1, 1], truth: [0, 0], classes: 2)[1] == 0)
        // Two voxels, K = 3: p = (0.7, 0.2, 0.1) with y = 0, p = (0.1, 0.3, 0.6) with y = 2.
        let p = Tensor(shape: [3, 1, 1, 2], values: [0.7, 0.1, 0.2, 0.3, 0.1, 0.6])
        #expect(abs(ClassMetrics.nll(probabilities: p, truth: [0, 2]) - (-(log(0.7) + log(0.6)) / 2)) < 1e-6)
        let b0 = 0.3 * 0.3 + 0.2 * 0.2 + 0.1 * 0.1, b1 = 0.1 * 0.1 + 0.3 * 0.3 + 0.4 * 0.4
        #expect(abs(ClassMetrics.brier(probabilities: p, truth: [0, 2]) - (b0 + b1) / 2) < 1e-6)
    }

    @Test func calibrationBinsAgreeWithBinaryECE() {
        let fg: [Float] = [0.9, 0.9, 0.9, 0.9, 0.2, 0.2, 0.55, 0.03]
        let y: [Int32] = [1, 1, 1, 0, 0, 1, 1, 0]
        let p = Tensor(shape: [2, 1, 1, 8], values: fg.map { 1 - $0 } + fg)
        var bins = CalibrationBins(bins: 15)
        bins.add(probabilities: p, truth: y, include: nil)
        let binary = Metrics.ece(probabilities: Tensor(shape: [8], values: fg), labels: Tensor(shape: [8], values: y.map(Float.init)))
        #expect(abs(bins.ece! - binary) < 1e-6)
        var none = CalibrationBins()
        none.add(probabilities: p, truth: y, include: [Bool](repeating: false, count: 8))
        #expect(none.ece == nil)
    }

    @Test func retentionCurveAndOverlapOfAnOracleUncertainty() {
        // 10 voxels, 4 errors; the uncertainty is 1 exactly on the errors.
        let truth: [Int32] = [1, 1, 1, 1, 0, 0, 0, 0, 1, 0]
        let pred: [Int32] = [1, 1, 0, 0, 1, 0, 0, 1, 1, 0]
        let u: [Float] = zip(pred, truth).map { $0 != $1 ? 1 : 0 }
        let roi = [Bool](repeating: true, count: 10)
        let r = UncertaintyMetrics.retentionCurve(prediction: pred, truth: truth, classes: 2, uncertainty: u, roi: roi, points: 11)
        // Before referral: TP 3, FP 2, FN 2 -> 6/10. After referring 4 of 10 voxels (f = 0.4) all is right.
        #expect(abs(r.curve[0] - 0.6) < 1e-12)
        #expect(r.curve[4...].allSatisfy { $0 == 1 })
        #expect(r.curve == r.curve.sorted())
        let ueo = UncertaintyMetrics.uncertaintyErrorOverlap(uncertainty: u, errors: u.map { $0 > 0 }, maximum: 1)
        #expect(ueo.overlap == 1)
        // A reversed uncertainty refers the right voxels last: smaller area.
        let bad = UncertaintyMetrics.retentionCurve(prediction: pred, truth: truth, classes: 2, uncertainty: u.map { 1 - $0 }, roi: roi, points: 11)
        #expect(bad.area < r.area)
        #expect(bad.curve.last == 1)
    }

    @Test func caseScoresOfPerfectAllWrongAndEmptyPredictions() throws {
        let shape = [6, 7, 8], n = 6 * 7 * 8
        let mask = blobs(shape, seed: 4)
        let truth = mask.map { Int32($0 ? 1 : 0) }
        func probs(_ labels: [Int32], confidence: Float) -> Tensor {
            let p = Tensor(shape: [2] + shape)
            for v in 0..<n { p.data[Int(labels[v]) * n + v] = confidence; p.data[(1 - Int(labels[v])) * n + v] = 1 - confidence }
            return p
        }
        let perfect = CaseEvaluation.score(CasePrediction(id: "p", shape: shape, spacing: [1, 1, 1], truth: truth, prediction: truth,
                                                          probabilities: probs(truth, confidence: 1)), classes: 2)
        #expect(perfect.dice == [1] && perfect.hd95 == [0] && perfect.errorVoxels == 0)
        #expect(perfect.eceROI == 0 && perfect.aurocEntropy == nil && abs(perfect.nll!) < 1e-6 && perfect.brier == 0)
        #expect(perfect.retentionArea == 1)

        let wrong = truth.map { 1 - $0 }
        let allWrong = CaseEvaluation.score(CasePrediction(id: "w", shape: shape, spacing: [1, 1, 1], truth: truth, prediction: wrong,
                                                           probabilities: probs(wrong, confidence: 0.9)), classes: 2)
        #expect(allWrong.dice == [0] && allWrong.errorVoxels == n && allWrong.roiVoxels == n)
        #expect(abs(allWrong.eceROI! - 0.9) < 1e-6) // confidence 0.9, accuracy 0
        #expect(abs(allWrong.brier! - 2 * 0.81) < 1e-5)
        #expect(allWrong.retentionCurve?.first == 0 && allWrong.retentionCurve?.last == 1)

        let zeros = [Int32](repeating: 0, count: n)
        let empty = CaseEvaluation.score(CasePrediction(id: "e", shape: shape, spacing: [1, 1, 1], truth: zeros, prediction: zeros), classes: 2)
        #expect(empty.dice.count == 1 && empty.dice[0].isNaN && empty.meanDice.isNaN && empty.hd95 == [0] && empty.roiVoxels == 0 && empty.eceROI == nil)
        let withEmpty = EvaluationSummary([perfect, empty], classNames: ["background", "blob"], settings: EvaluationSettings())
        #expect(withEmpty.dicePerClass[0].mean == 1 && withEmpty.dicePerClass[0].cases == 1 && withEmpty.meanDice.mean == 1)
        let missed = CaseEvaluation.score(CasePrediction(id: "m", shape: shape, spacing: [1, 1, 1], truth: truth, prediction: zeros), classes: 2)
        #expect(missed.dice == [0] && missed.hd95 == [nil])

        let summary = EvaluationSummary([perfect, allWrong, missed], classNames: ["background", "blob"], settings: EvaluationSettings())
        #expect(summary.meanDice.mean == 1.0 / 3 && summary.hd95PerClass[0].cases == 2)
        #expect(summary.pooledCalibration!.total == perfect.roiVoxels + allWrong.roiVoxels)
    }
}
