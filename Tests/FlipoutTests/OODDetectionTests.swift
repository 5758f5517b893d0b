// Case-level OOD detection (`flipout evaluate --ood-predictions`) against the pairwise definition of
// the AUROC, the synthetic OOD look and its export, and the --data defaults of `flipout train`.
import Foundation
import Testing
import Flipout3D
import TestSupport

@Suite struct OODDetectionTests {
    /// AUROC by its definition: the fraction of (OOD, in-distribution) pairs the score orders
    /// correctly, ties counting one half.
    static func pairwiseAUROC(inside: [Double], outside: [Double]) -> Double {
        var s = 0.0
        for o in outside { for i in inside { s += o > i ? 1 : o == i ? 0.5 : 0 } }
        return s / Double(inside.count * outside.count)
    }

    @Test func oodAUROCMatchesThePairwiseDefinitionWithTies() {
        var rng = SystemRandomNumberGenerator()
        for trial in 0..<20 {
            let nIn = 1 + trial % 7, nOut = 1 + (trial * 3) % 5
            // Scores on a coarse grid, so ties within and across the groups occur.
            func u(_ shift: Int) -> Double { Double(Int.random(in: 0...6, using: &rng) + shift) / 4 }
            let inside = (0..<nIn).map { CaseUncertainty(id: "in\($0)", meanMutualInformation: u(0), meanEntropy: u(1)) }
            let outside = (0..<nOut).map { CaseUncertainty(id: "out\($0)", meanMutualInformation: u(2), meanEntropy: u(0)) }
            let d = OODDetection(inDistribution: inside, outOfDistribution: outside)
            #expect(abs(d.aurocMutualInformation - Self.pairwiseAUROC(inside: inside.map(\.meanMutualInformation), outside: outside.map(\.meanMutualInformation))) < 1e-12)
            #expect(abs(d.aurocEntropy - Self.pairwiseAUROC(inside: inside.map(\.meanEntropy), outside: outside.map(\.meanEntropy))) < 1e-12)
            #expect(d.inDistributionCases == nIn && d.outOfDistributionCases == nOut)
        }
        // All tied: 0.5; perfectly separated: 1, and reversed: 0.
        let same = [CaseUncertainty(id: "a", meanMutualInformation: 1, meanEntropy: 1)]
        #expect(OODDetection(inDistribution: same, outOfDistribution: same).aurocMutualInformation == 0.5)
        let low = [CaseUncertainty(id: "a", meanMutualInformation: 0.1, meanEntropy: 0.9)]
        let high = [CaseUncertainty(id: "b", meanMutualInformation: 0.2, meanEntropy: 0.3)]
        let d = OODDetection(inDistribution: low, outOfDistribution: high)
        #expect(d.aurocMutualInformation == 1 && d.aurocEntropy == 0)
    }

    @Test func caseScoresAreWholeVolumeMeansAndEntropyComesFromProbabilitiesWhenAbsent() {
        let mi = Tensor(shape: [2, 1, 2], values: [0, 0.1, 0.2, 0.5])
        let p = Tensor(shape: [2, 2, 1, 2], values: [0.5, 0.9, 1, 0.2, 0.5, 0.1, 0, 0.8])
        let u = OODDetection.uncertainty(id: "c", mutualInformation: mi, entropy: nil, probabilities: p)
        #expect(abs(u.meanMutualInformation - 0.2) < 1e-7)
        func h(_ q: Double) -> Double { (q > 0 ? -q * log(q) : 0) + (q < 1 ? -(1 - q) * log(1 - q) : 0) }
        let expected = (h(0.5) + h(0.9) + h(1) + h(0.2)) / 4
        #expect(abs(u.meanEntropy - expected) < 1e-6)
        let given = OODDetection.uncertainty(id: "c", mutualInformation: mi, entropy: Tensor(shape: [2, 1, 2], values: [1, 1, 1, 0]), probabilities: p)
        #expect(given.meanEntropy == 0.75)
    }

    @Test func outOfDistributionCasesHaveInvertedContrastMoreNoiseAndTheirOwnStream() {
        let inside = SyntheticCases(seed: 5, count: 1).case(0)
        let outside = SyntheticCases(seed: 5, count: 1, look: .outOfDistribution).case(0)
        #expect(inside.id == "synth_000" && outside.id == "synth_ood_000")
        #expect(SyntheticCases(seed: 5, count: 1, look: .outOfDistribution).noiseSigma == 0.9)
        #expect(inside.label.array != outside.label.array || inside.image.shape != outside.image.shape)
        // Channel 0: structures (classes 1, 2; contrast +2) are brighter than the background in
        // distribution, darker out of it.
        func contrast(_ c: SyntheticCases.Case) -> Double {
            let n = c.label.count
            var fg = 0.0, bg = 0.0, nf = 0.0, nb = 0.0
            for i in 0..<n { if c.label.data[i] > 0 { fg += Double(c.image.data[i]); nf += 1 } else { bg += Double(c.image.data[i]); nb += 1 } }
            return fg / max(nf, 1) - bg / max(nb, 1)
        }
        #expect(contrast(inside) > 50 && contrast(outside) < -50, "\(contrast(inside)) \(contrast(outside))")
        // The in-distribution look is unchanged by the option's existence: the default is that look.
        #expect(SyntheticCases(seed: 5, count: 1, look: .inDistribution).case(0).image.array == inside.image.array)
    }
}

/// A two-case exported folder and the options of a one-step U-Net run on it (for CLI tests).
enum TinyFolderRun {
    static let options = ["--steps-per-epoch", "1", "--patch", "16,16,16", "--width", "2", "--levels", "2", "--samples", "1", "--quiet", "--epochs", "1"]
    static let beta = ["--posterior", "org.flipout3d.beta", "--prior", "org.flipout3d.gamma"]
    static func folder(_ label: String) throws -> (URL, String) {
        let dir = try Fixtures.temporaryDirectory(label)
        let data = dir.appendingPathComponent("synth").path
        let r = try FlipoutCLI.run(["datasets", "export-synthetic", data, "--cases", "2", "--test-cases", "0"])
        precondition(r.status == 0, "export-synthetic failed: \(r.stderr)")
        return (dir, data)
    }
}

/// The OOD export and `flipout evaluate --ood-predictions` through the built binary.
@Suite(.serialized) struct OODDetectionCLITests {
    /// Writes a prediction folder: per case a label map, an MI map filled with `mi`, and (if
    /// `entropy`) an entropy map filled with 1 − mi; labels beside it when `labels` is given.
    static func predictionFolder(_ dir: URL, cases: [(String, Float)], labels: URL? = nil, entropy: Bool = true) throws {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        if let labels { try FileManager.default.createDirectory(at: labels, withIntermediateDirectories: true) }
        let header = NIfTIHeader(shape: [4, 4, 4], spacing: [1, 1, 1])
        let label = Tensor(shape: [4, 4, 4], values: (0..<64).map { Float($0 % 3 == 0 ? 1 : 0) })
        for (id, mi) in cases {
            try NIfTI.write(label, header: header, datatype: .uint8, to: dir.appendingPathComponent("\(id).nii.gz").path)
            try NIfTI.write(Tensor(shape: [4, 4, 4], values: [Float](repeating: mi, count: 64)), header: header, to: dir.appendingPathComponent("\(id)_mi.nii.gz").path)
            if entropy {
                try NIfTI.write(Tensor(shape: [4, 4, 4], values: [Float](repeating: 1 - mi, count: 64)), header: header, to: dir.appendingPathComponent("\(id)_entropy.nii.gz").path)
            }
            if let labels { try NIfTI.write(label, header: header, datatype: .uint8, to: labels.appendingPathComponent("\(id).nii.gz").path) }
        }
    }

    @Test func evaluateReportsCaseLevelOODAUROCInSummaryJSON() throws {
        let dir = try Fixtures.temporaryDirectory("ood-evaluate")
        let preds = dir.appendingPathComponent("preds"), labels = dir.appendingPathComponent("labels"), ood = dir.appendingPathComponent("ood")
        try Self.predictionFolder(preds, cases: [("a", 0.1), ("b", 0.3), ("c", 0.2)], labels: labels)
        try Self.predictionFolder(ood, cases: [("x", 0.25), ("y", 0.4)])
        let r = try FlipoutCLI.run(["evaluate", "--predictions", preds.path, "--labels", labels.path, "--ood-predictions", ood.path])
        #expect(r.status == 0, "\(r.stderr)")
        // MI: x beats a, c and loses to b (2 of 3), y beats all: 5/6. Entropy = 1 − MI reverses it: 1/6.
        #expect(r.stdout.contains("OOD detection: AUROC 0.8333 by mean MI, 0.1667 by mean entropy (2 out-of-distribution cases against 3)"), "\(r.stdout)")
        let doc = try JSONSerialization.jsonObject(with: Data(contentsOf: preds.appendingPathComponent("summary.json"))) as! [String: Any]
        let o = (doc["summary"] as! [String: Any])["ood"] as! [String: Any]
        #expect(abs((o["aurocMutualInformation"] as! Double) - 5.0 / 6) < 1e-9 && o["outOfDistributionCases"] as? Int == 2)
        #expect(((o["outOfDistribution"] as! [[String: Any]]).map { $0["id"] as! String }) == ["x", "y"])
    }

    @Test func badOODFoldersExitWithClearMessages() throws {
        let dir = try Fixtures.temporaryDirectory("ood-evaluate-bad")
        let preds = dir.appendingPathComponent("preds"), labels = dir.appendingPathComponent("labels")
        try Self.predictionFolder(preds, cases: [("a", 0.1), ("b", 0.3)], labels: labels)
        func evaluate(_ ood: String) throws -> Subprocess.Result {
            try FlipoutCLI.run(["evaluate", "--predictions", preds.path, "--labels", labels.path, "--ood-predictions", ood])
        }
        let missing = try evaluate(dir.appendingPathComponent("nowhere").path)
        #expect(missing.status == 66 && missing.stderr.contains("nowhere") && missing.stderr.contains("no such"), "\(missing.stderr)")
        let empty = dir.appendingPathComponent("empty")
        try FileManager.default.createDirectory(at: empty, withIntermediateDirectories: true)
        let none = try evaluate(empty.path)
        #expect(none.status == 64 && none.stderr.contains("no predictions") && none.stderr.contains("flipout predict"), "\(none.stderr)")
        let shared = try evaluate(preds.path)
        #expect(shared.status == 64 && shared.stderr.contains("share case(s) a, b"), "\(shared.stderr)")
        let noMI = dir.appendingPathComponent("no-mi")
        try Self.predictionFolder(noMI, cases: [("z", 0.5)])
        try FileManager.default.removeItem(at: noMI.appendingPathComponent("z_mi.nii.gz"))
        let mi = try evaluate(noMI.path)
        #expect(mi.status == 64 && mi.stderr.contains("z_mi.nii.gz"), "\(mi.stderr)")
        let alone = try FlipoutCLI.run(["evaluate", "--checkpoint", "x.safetensors", "--ood-predictions", preds.path])
        #expect(alone.status == 64 && alone.stderr.contains("--ood-predictions compares with"), "\(alone.stderr)")
    }

    @Test func exportWritesOODCasesBesideTheDatasetAndTrainingIgnoresThem() throws {
        let dir = try Fixtures.temporaryDirectory("ood-export")
        let data = dir.appendingPathComponent("synth").path
        let r = try FlipoutCLI.run(["datasets", "export-synthetic", data, "--cases", "2", "--test-cases", "1", "--ood-cases", "2"])
        #expect(r.status == 0 && r.stdout.contains("2 out-of-distribution cases in imagesOod/"), "\(r.stdout)\(r.stderr)")
        let files = try FileManager.default.contentsOfDirectory(atPath: data + "/imagesOod").sorted()
        #expect(files == ["synth_ood_000_0000.nii.gz", "synth_ood_000_0001.nii.gz", "synth_ood_001_0000.nii.gz", "synth_ood_001_0001.nii.gz"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: data + "/labelsOod").count == 2)
        let check = try FlipoutCLI.run(["datasets", "check", data])
        #expect(check.status == 0 && check.stdout.contains("OK"), "\(check.stderr)")
        let bad = try FlipoutCLI.run(["datasets", "export-synthetic", dir.appendingPathComponent("x").path, "--ood-cases", "-1"])
        #expect(bad.status == 64 && bad.stderr.contains("--ood-cases"))
    }

    @Test func trainDataTakesItsOwnDefaultsAndThePositiveRecipe() throws {
        let (dir, data) = try TinyFolderRun.folder("train-data-defaults")
        let small = TinyFolderRun.options
        let run = dir.appendingPathComponent("beta").path
        let r = try FlipoutCLI.run(["train", "--data", data, "--run", run] + TinyFolderRun.beta + small)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("has positive support") && r.stderr.contains("first Bayesian convolution only"), "\(r.stderr)")
        // The checkpoint records the recipe and train --data's own learning rate (not the binary trainer's 3e-3).
        let c = try Checkpoint.read(run + "/checkpoint.safetensors")
        let model = try JSONSerialization.jsonObject(with: Data(c.metadata[CheckpointKey.model]!.utf8)) as! [String: Any]
        let training = try JSONSerialization.jsonObject(with: Data(c.metadata[CheckpointKey.training]!.utf8)) as! [String: Any]
        #expect(model["customLayers"] as? String == "first" && model["posterior"] as? String == "org.flipout3d.beta")
        #expect(abs((training["learningRate"] as! Double) - Double(FolderTrainingDefaults.learningRate)) < 1e-9 && training["epochs"] as? Int == 1)
        // Asked for everywhere, it is honoured, without the note.
        let all = try FlipoutCLI.run(["train", "--data", data, "--run", dir.appendingPathComponent("all").path, "--custom-layers", "all"]
                                     + TinyFolderRun.beta + small)
        #expect(all.status == 0 && !all.stderr.contains("has positive support"), "\(all.stderr)")
        // --after-positive was the removed binary network's; the U-Net normalises after every convolution.
        let after = try FlipoutCLI.run(["train", "--data", data, "--after-positive", "norm"] + small)
        #expect(after.status == 64 && after.stderr.contains("--after-positive"), "\(after.stderr)")
    }
}
