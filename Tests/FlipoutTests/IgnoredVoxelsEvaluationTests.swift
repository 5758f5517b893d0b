// The ignore label in evaluation: its voxels take no part in HD95 (against a brute-force restatement), calibration, NLL and Brier (closed forms), in-process and through `flipout evaluate`.
import Foundation
import Testing
import Flipout3D
import TestSupport

/// A (D, H, W) = (10, 14, 16) case at spacing (1, 1.5, 2): the truth is a box, the prediction the
/// box's part before a slab of H rows, moved 1 voxel along W, plus a blob far away; the slab and the
/// blob's corner are the ignore label (truth 0 there, as `PredictionFolder` reads it).
private struct SlabCase {
    static let shape = [10, 14, 16], spacing = [1.0, 1.5, 2.0]
    static let n = shape.reduce(1, *)
    static func index(_ z: Int, _ y: Int, _ x: Int) -> Int { (z * shape[1] + y) * shape[2] + x }
    static func box(_ z: Range<Int>, _ y: Range<Int>, _ x: Range<Int>) -> [Bool] {
        var m = [Bool](repeating: false, count: n)
        for a in z { for b in y { for c in x { m[index(a, b, c)] = true } } }
        return m
    }
    static let ignored: [Bool] = zip(box(0..<10, 6..<8, 0..<16), box(7..<10, 0..<3, 0..<3)).map { $0 || $1 }
    static let truthBox = box(2..<8, 3..<11, 4..<11)
    static let truth: [Int32] = truthBox.indices.map { truthBox[$0] && !ignored[$0] ? 1 : 0 }
    static let prediction: [Int32] = zip(box(2..<8, 3..<6, 5..<11), box(7..<10, 0..<3, 0..<3)).map { $0 || $1 ? 1 : 0 }
}

/// HD95 restated by brute force: the surface of a mask (6-neighbourhood, the border counting as
/// outside) with an ignored neighbour counting as inside, ignored voxels never on it; every
/// directed distance by scanning every surface voxel of the other mask; numpy's percentile.
private func bruteForceHD95(_ a: [Bool], _ b: [Bool], ignored: [Bool]) -> Double {
    let s = SlabCase.shape
    func surface(_ m: [Bool]) -> [(Int, Int, Int)] {
        var out: [(Int, Int, Int)] = []
        for z in 0..<s[0] { for y in 0..<s[1] { for x in 0..<s[2] {
            let i = SlabCase.index(z, y, x)
            guard m[i] && !ignored[i] else { continue }
            var edge = false
            for (dz, dy, dx) in [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)] {
                let (zz, yy, xx) = (z + dz, y + dy, x + dx)
                if zz < 0 || yy < 0 || xx < 0 || zz >= s[0] || yy >= s[1] || xx >= s[2] { edge = true; continue }
                let j = SlabCase.index(zz, yy, xx)
                if !m[j] && !ignored[j] { edge = true }
            }
            if edge { out.append((z, y, x)) }
        } } }
        return out
    }
    func directed(_ from: [(Int, Int, Int)], _ to: [(Int, Int, Int)]) -> Double {
        let d = from.map { p in
            to.map { q in
                let e = [Double(p.0 - q.0) * SlabCase.spacing[0], Double(p.1 - q.1) * SlabCase.spacing[1], Double(p.2 - q.2) * SlabCase.spacing[2]]
                return (e[0] * e[0] + e[1] * e[1] + e[2] * e[2]).squareRoot()
            }.min()!
        }.sorted()
        let r = Double(d.count - 1) * 0.95, lo = Int(r), hi = min(lo + 1, d.count - 1)
        return d[lo] + (d[hi] - d[lo]) * (r - Double(lo))
    }
    let sa = surface(a), sb = surface(b)
    return max(directed(sa, sb), directed(sb, sa))
}

@Suite struct IgnoredVoxelsEvaluationTests {
    @Test func hd95LeavesIgnoredVoxelsOutOfTheSurfaces() throws {
        var c = CasePrediction(id: "slab", shape: SlabCase.shape, spacing: SlabCase.spacing, truth: SlabCase.truth, prediction: SlabCase.prediction)
        c.ignored = SlabCase.ignored
        let s = CaseEvaluation.score(c, classes: 2)
        let expected = bruteForceHD95(SlabCase.prediction.map { $0 == 1 }, SlabCase.truth.map { $0 == 1 }, ignored: SlabCase.ignored)
        let hd = try #require(s.hd95[0])
        #expect(abs(hd - expected) < 1e-9, "HD95 \(hd), brute force \(expected)")
        // Scoring the ignored voxels as agreed background (both maps 0 there) measures something else:
        // the slab's faces become surfaces (the truth's far face, with nothing of the prediction
        // near it, and both near faces at distance 0): 7.5 mm there against 7.76 mm here.
        let zeroed = SlabCase.prediction.indices.map { SlabCase.ignored[$0] ? Int32(0) : SlabCase.prediction[$0] }
        let asBackground = try #require(CaseEvaluation.score(CasePrediction(id: "bg", shape: SlabCase.shape, spacing: SlabCase.spacing,
                                                                         truth: SlabCase.truth, prediction: zeroed), classes: 2).hd95[0])
        #expect(abs(asBackground - expected) > 0.1, "the test must tell the rules apart: \(asBackground) vs \(expected)")
        // Dice counts the kept voxels alone.
        var tp = 0, fp = 0, fn = 0
        for i in 0..<SlabCase.n where !SlabCase.ignored[i] {
            let p = SlabCase.prediction[i] == 1, t = SlabCase.truth[i] == 1
            if p && t { tp += 1 } else if p { fp += 1 } else if t { fn += 1 }
        }
        #expect(abs(s.dice[0] - 2 * Double(tp) / Double(2 * tp + fp + fn)) < 1e-12)
        // Without any ignored voxel the rule is MONAI's HD95 unchanged.
        let none = [Bool](repeating: false, count: SlabCase.n)
        #expect(SurfaceDistance.hd95(SlabCase.prediction.map { $0 == 1 }, SlabCase.truthBox, shape: SlabCase.shape, spacing: SlabCase.spacing)
                == SurfaceDistance.hd95(SlabCase.prediction.map { $0 == 1 }, SlabCase.truthBox, shape: SlabCase.shape, spacing: SlabCase.spacing, excluded: none))
    }

    /// Every kept voxel is right with probability 0.8; every ignored voxel is confidently wrong
    /// (0.99 on the other class). Closed forms over the kept voxels: NLL −ln 0.8, Brier 2 · 0.2²,
    /// ECE 0.2 (all correct at confidence 0.8), no errors.
    static func calibrationCase() -> (prediction: [Int32], probabilities: Tensor) {
        let n = SlabCase.n
        var prediction = SlabCase.truth
        let p = Tensor(shape: [2] + SlabCase.shape)
        for v in 0..<n {
            if SlabCase.ignored[v] {
                prediction[v] = 1 - SlabCase.truth[v]
                p.data[Int(prediction[v]) * n + v] = 0.99; p.data[Int(SlabCase.truth[v]) * n + v] = 0.01
            } else {
                p.data[Int(SlabCase.truth[v]) * n + v] = 0.8; p.data[Int(1 - SlabCase.truth[v]) * n + v] = 0.2
            }
        }
        return (prediction, p)
    }

    @Test func calibrationAndUncertaintyFiguresLeaveIgnoredVoxelsOut() throws {
        let (prediction, p) = Self.calibrationCase()
        var c = CasePrediction(id: "cal", shape: SlabCase.shape, spacing: SlabCase.spacing, truth: SlabCase.truth, prediction: prediction, probabilities: p)
        c.ignored = SlabCase.ignored
        let s = CaseEvaluation.score(c, classes: 2)
        #expect(abs(try #require(s.nll) + log(0.8)) < 1e-6, "NLL \(String(describing: s.nll))")
        #expect(abs(try #require(s.brier) - 0.08) < 1e-6, "Brier \(String(describing: s.brier))")
        #expect(abs(try #require(s.eceROI) - 0.2) < 1e-6, "ECE \(String(describing: s.eceROI))")
        #expect(s.errorVoxels == 0 && s.dice == [1] && s.hd95 == [0])
        // Entropy of (0.8, 0.2) at every kept voxel.
        let h = -(0.8 * log(0.8) + 0.2 * log(0.2))
        #expect(abs(try #require(s.meanEntropyForeground) - h) < 1e-6)
    }

    /// Through the binary: a dataset.json beside the labels names label 2 "ignore".
    @Test func evaluateCommandLeavesTheIgnoreLabelOut() throws {
        let dir = try Fixtures.temporaryDirectory("evaluate-ignore")
        let labels = dir.appendingPathComponent("labelsTs").path, preds = dir.appendingPathComponent("preds").path
        for d in [labels, preds] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        try #"{"channel_names": {"0": "T1"}, "labels": {"background": 0, "brain": 1, "ignore": 2}, "numTraining": 1, "file_ending": ".nii.gz"}"#
            .write(toFile: dir.appendingPathComponent("dataset.json").path, atomically: true, encoding: .utf8)
        let header = NIfTIHeader(shape: SlabCase.shape, spacing: SlabCase.spacing.map(Float.init))
        let onDisk = SlabCase.truth.indices.map { SlabCase.ignored[$0] ? Float(2) : Float(SlabCase.truth[$0]) }
        try NIfTI.write(Tensor(shape: SlabCase.shape, values: onDisk), header: header, datatype: .uint8, to: labels + "/slab.nii.gz")
        let (prediction, p) = Self.calibrationCase()
        try NIfTI.write(Tensor(shape: SlabCase.shape, values: prediction.map(Float.init)), header: header, datatype: .uint8, to: preds + "/slab.nii.gz")
        try NIfTI.write(p, header: header, to: preds + "/slab_probabilities.nii.gz")
        let r = try FlipoutCLI.run(["evaluate", "--predictions", preds, "--labels", labels])
        #expect(r.status == 0, "\(r.stderr)")
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: preds + "/summary.json"))) as! [String: Any]
        let c = (json["cases"] as! [[String: Any]])[0]
        #expect(abs((c["nll"] as! Double) + log(0.8)) < 1e-5 && abs((c["brier"] as! Double) - 0.08) < 1e-5, "\(c)")
        #expect(abs((c["eceROI"] as! Double) - 0.2) < 1e-5 && c["errorVoxels"] as? Int == 0, "\(c)")
        #expect((c["hd95"] as! [Any]).first as? Double == 0 && (c["dice"] as! [Double]) == [1], "\(c)")

        // A label map that is the ignore label everywhere has nothing to score: exit 65 naming the case.
        try NIfTI.write(Tensor(shape: SlabCase.shape, values: [Float](repeating: 2, count: SlabCase.n)), header: header, datatype: .uint8, to: labels + "/slab.nii.gz")
        let all = try FlipoutCLI.run(["evaluate", "--predictions", preds, "--labels", labels])
        #expect(all.status != 0 && all.stderr.contains("slab: every voxel of its label map is the ignore label"), "\(all.status) \(all.stderr)")
    }
}
