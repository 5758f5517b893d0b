// `flipout predict` on a folder with an ensemble, then `flipout evaluate` on its output: files, contents, exit codes.
import Foundation
import Testing
import Flipout3D
import TestSupport

@Suite(.serialized) struct PredictEvaluateCLITests {
    /// Synthetic cases reduced to one channel (T1) and two classes (any structure is foreground).
    static func binaryCases(_ n: Int) -> [PreparedCase] {
        SyntheticCases(seed: 1, count: n).prepared().map { c in
            let shape = Array(c.image.shape.dropFirst()), v = shape.reduce(1, *)
            let image = Tensor(shape: [1] + shape, values: Array(c.image.array[..<v]))
            let label = Tensor(shape: [1] + shape, values: c.label!.array.map { $0 > 0 ? 1 : 0 })
            return PreparedCase(id: c.id, image: image, label: label, geometry: c.geometry)
        }
    }

    /// Two small trained one-channel, two-class U-Net checkpoints (seeds 42 and 43) and a folder of two 16³ cases with labels.
    static func setUp() throws -> (checkpoints: [String], images: URL, labels: URL, dir: URL) {
        let dir = try Fixtures.temporaryDirectory("flipout-predict")
        var checkpoints: [String] = []
        let plan = PreprocessingPlan(spacing: [1, 1, 1], channelNames: ["image"], channels: [.zScore(mean: 0, std: 1)],
                                     labels: ["background": 0, "foreground": 1], classCount: 2)
        let cases = binaryCases(3)
        for seed in [UInt64(42), 43] {
            var (m, u, t, p) = SmallRun.configs(epochs: 1, seed: seed)
            m.width = 4; u.inputChannels = 1; u.classCount = 2
            let model = try UNet(m, shape: u, registry: try SmallRun.registry(), seed: seed)
            let trainer = try PatchTrainer(model: model, training: t, patch: p, plan: plan, train: cases, validation: [],
                                           runDirectory: dir.appendingPathComponent("run\(seed)").path)
            trainer.showProgress = false
            _ = try trainer.trainEpoch()
            checkpoints.append(trainer.checkpointPath)
        }
        let images = dir.appendingPathComponent("imagesTs"), labels = dir.appendingPathComponent("labelsTs")
        for d in [images, labels] { try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true) }
        for (i, c) in binaryCases(5).suffix(2).enumerated() {
            let x = Tensor(shape: [1, 16, 16, 16]), y = Tensor(shape: [1, 16, 16, 16])
            PatchSampler.crop(c.image, start: [8, 8, 8], size: [16, 16, 16], into: x.data)
            PatchSampler.crop(c.label!, start: [8, 8, 8], size: [16, 16, 16], into: y.data)
            // An anisotropic grid, odd sizes: windows must be padded and shifted.
            let header = NIfTIHeader(shape: [16, 16, 16], spacing: [0.8, 1, 2])
            try NIfTI.write(x.reshaped([16, 16, 16]), header: header, to: images.appendingPathComponent("case\(i)_0000.nii.gz").path)
            try NIfTI.write(y.reshaped([16, 16, 16]), header: header, datatype: .uint8, to: labels.appendingPathComponent("case\(i).nii.gz").path)
        }
        return (checkpoints, images, labels, dir)
    }

    @Test func predictFolderWithEnsembleThenEvaluate() throws {
        let s = try Self.setUp()
        let out = s.dir.appendingPathComponent("preds").path
        let r = try FlipoutCLI.run(["predict", "--checkpoint", s.checkpoints[0], "--checkpoint", s.checkpoints[1], "--input", s.images.path,
                                    "--output", out, "--samples", "3", "--window", "20,20,20", "--no-normalise"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("warning: --window 20x20x20 differs from the training patch 16x16x16"), "\(r.stderr)")
        #expect(r.stderr.contains("2 case(s)") && r.stderr.contains("6 draw(s) per window"), "\(r.stderr)")
        for id in ["case0", "case1"] {
            for suffix in [".nii.gz", "_probabilities.nii.gz", "_entropy.nii.gz", "_mi.nii.gz", "_expected_entropy.nii.gz", "_preview.png", ".json"] {
                #expect(FileManager.default.fileExists(atPath: "\(out)/\(id)\(suffix)"), "\(id)\(suffix) missing")
            }
        }
        let p = try NIfTI.read4D("\(out)/case0_probabilities.nii.gz")
        #expect(p.data.shape == [2, 16, 16, 16] && p.header.dim[0] == 4 && p.header.spacing == [0.8, 1, 2])
        for v in 0..<(16 * 16 * 16) { #expect(abs(p.data.data[v] + p.data.data[4096 + v] - 1) < 1e-5) }
        let report = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(out)/case0.json"))) as! [String: Any]
        #expect(report["draws"] as? Int == 6 && report["windows"] as? Int == 1)  // one 20³ window covers the 16³ case
        let classes = report["classes"] as! [[String: Any]]
        let voxels = classes.map { $0["voxels"] as! Int }
        #expect(voxels.reduce(0, +) == 4096)
        #expect(abs((classes[1]["volumeMM3"] as! Double) - Double(voxels[1]) * 1.6) < 1e-6 * Double(max(voxels[1], 1))) // spacing is Float in the header

        let e = try FlipoutCLI.run(["evaluate", "--predictions", out, "--labels", s.labels.path])
        #expect(e.status == 0, "\(e.stderr)")
        #expect(e.stdout.contains("mean (2 cases)") && e.stdout.contains("ECE(ROI)") && e.stdout.contains("AUROC(MI)"), "\(e.stdout)")
        #expect(e.stdout.contains("nDSC") && e.stdout.contains("QU-BraTS score") && e.stdout.contains("failure detection"), "\(e.stdout)")
        #expect(report["meanSampleDice"] is Double, "CASE.json holds the pooled pairwise Dice between the 6 samples")
        for f in ["summary.json", "cases.csv", "reliability.png", "retention.png", "uncertainty_vs_dice.png", "ndsc_retention.png", "qubrats.png", "risk_coverage.png"] {
            #expect(FileManager.default.fileExists(atPath: "\(out)/\(f)"), "\(f) missing")
        }
        let csv = try String(contentsOfFile: "\(out)/cases.csv", encoding: .utf8).split(separator: "\n")
        #expect(csv.count == 3 && csv[0].hasPrefix("case,dice_class 1,mean_dice,hd95_class 1,nll,brier,ece_roi,auroc_entropy,auroc_mi"))
        // The evaluation agrees with scoring the files in-process.
        let folder = try PredictionFolder(predictions: out, labels: s.labels.path)
        let (c, k) = try folder.load(folder.pairs[0], classes: nil)
        let score = CaseEvaluation.score(c, classes: k)
        let summary = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(out)/summary.json"))) as! [String: Any]
        let first = (summary["cases"] as! [[String: Any]])[0]
        #expect(first["id"] as? String == "case0" && abs((first["meanDice"] as! Double) - score.meanDice) < 1e-12)
        #expect(score.aurocMI != nil && score.nll != nil && score.quBraTSScore != nil && score.ndscRAAC != nil && score.sampleDice != nil)
        let fd = try #require((summary["summary"] as! [String: Any])["failureDetection"] as? [String: Any])
        #expect((fd["scores"] as! [[String: Any]]).map { $0["score"] as! String } == ["mean_entropy_foreground", "mean_mi_foreground", "sample_disagreement"])
        #expect(csv[0].contains(",ndsc_class 1,mean_ndsc,ndsc_raac,qubrats_class 1,qubrats_score,sample_dice"), "\(csv[0])")
    }

    @Test func badInputsExit64WithAMessage() throws {
        let s = try Self.setUp()
        let out = s.dir.appendingPathComponent("bad").path
        let missing = try FlipoutCLI.run(["predict", "--checkpoint", s.checkpoints[0], "--input", s.dir.appendingPathComponent("nope").path, "--output", out])
        #expect(missing.status == 66 && missing.stderr.contains("no such file"), "\(missing.stderr)")
        // Two channels for a one-channel model.
        try FileManager.default.copyItem(atPath: s.images.appendingPathComponent("case0_0000.nii.gz").path, toPath: s.images.appendingPathComponent("case0_0001.nii.gz").path)
        let channels = try FlipoutCLI.run(["predict", "--checkpoint", s.checkpoints[0], "--input", s.images.path, "--output", out])
        #expect(channels.status == 64 && channels.stderr.contains("the model takes 1"), "\(channels.stderr)")
        let noCheckpoint = try FlipoutCLI.run(["predict", "--input", s.images.path])
        #expect(noCheckpoint.status == 64)
        let noLabels = try FlipoutCLI.run(["evaluate", "--predictions", s.images.path, "--labels", s.dir.appendingPathComponent("run42").path])
        #expect(noLabels.status == 64 && noLabels.stderr.contains("no prediction in"), "\(noLabels.stderr)")
        let both = try FlipoutCLI.run(["evaluate", "--predictions", s.images.path, "--labels", s.labels.path, "--checkpoint", s.checkpoints[0]])
        #expect(both.status == 64)
    }

    /// predict refuses a window smaller than the receptive field and the training patch (exit 64),
    /// and a 4D (MSD) image with what to do; evaluate names an affine-only grid mismatch.
    @Test func windowFourDAndGridMessages() throws {
        let s = try Self.setUp()
        let out = s.dir.appendingPathComponent("msg").path
        let small = try FlipoutCLI.run(["predict", "--checkpoint", s.checkpoints[0], "--input", s.images.path, "--output", out, "--window", "8,8,8"])
        #expect(small.status == 64 && small.stderr.contains("smaller than the receptive field") && small.stderr.contains("(15 voxels per axis)")
                && small.stderr.contains("training patch 16x16x16"), "\(small.stderr)")
        #expect(!FileManager.default.fileExists(atPath: out + "/case0.nii.gz"))

        let msd = s.dir.appendingPathComponent("msd")
        try FileManager.default.createDirectory(at: msd, withIntermediateDirectories: true)
        try NIfTI.write(Tensor(shape: [2, 16, 16, 16]), header: NIfTIHeader(shape: [16, 16, 16]), to: msd.appendingPathComponent("BRATS_001.nii.gz").path)
        let four = try FlipoutCLI.run(["predict", "--checkpoint", s.checkpoints[0], "--input", msd.path, "--output", out])
        #expect(four.status == 64 && four.stderr.contains("is a 4D image with 2 volumes")
                && four.stderr.contains("Split it into BRATS_001_0000.nii.gz, BRATS_001_0001.nii.gz"), "\(four.stderr)")

        // A prediction on the label's shape but another affine (shifted 3 mm).
        let preds = s.dir.appendingPathComponent("shifted")
        try FileManager.default.createDirectory(at: preds, withIntermediateDirectories: true)
        let label = try NIfTI.read(s.labels.appendingPathComponent("case0.nii.gz").path)
        try NIfTI.write(label.data, header: NIfTIHeader(shape: [16, 16, 16], spacing: [0.8, 1, 2], origin: [3, 0, 0]), datatype: .uint8,
                        to: preds.appendingPathComponent("case0.nii.gz").path)
        let grid = try FlipoutCLI.run(["evaluate", "--predictions", preds.path, "--labels", s.labels.path, "--missing", "skip"])
        #expect(grid.status == 64 && grid.stderr.contains("same shape [16, 16, 16]") && grid.stderr.contains("voxel-to-world affine")
                && grid.stderr.contains("[0.8 0 0 3; 0 1 0 0; 0 0 2 0] differs from [0.8 0 0 0; 0 1 0 0; 0 0 2 0]"), "\(grid.stderr)")
    }

    /// evaluate refuses a labelled case without a prediction, naming it; --missing empty scores it
    /// as an empty prediction and --missing skip leaves it out, both listing it in summary.json.
    @Test func labelledCaseWithoutPredictionIsNamed() throws {
        let s = try Self.setUp()
        let out = s.dir.appendingPathComponent("preds").path
        let r = try FlipoutCLI.run(["predict", "--checkpoint", s.checkpoints[0], "--input", s.images.appendingPathComponent("case0_0000.nii.gz").path,
                                    "--output", out, "--samples", "2", "--no-normalise"])
        #expect(r.status == 0, "\(r.stderr)")
        let refused = try FlipoutCLI.run(["evaluate", "--predictions", out, "--labels", s.labels.path])
        #expect(refused.status == 64 && refused.stderr.contains("1 labelled case(s)") && refused.stderr.contains("no prediction in")
                && refused.stderr.contains(": case1.") && refused.stderr.contains("--missing empty"), "\(refused.stderr)")
        #expect(!FileManager.default.fileExists(atPath: out + "/summary.json"))

        let empty = try FlipoutCLI.run(["evaluate", "--predictions", out, "--labels", s.labels.path, "--missing", "empty", "--json"])
        #expect(empty.status == 0, "\(empty.stderr)")
        let doc = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/summary.json"))) as! [String: Any]
        let summary = doc["summary"] as! [String: Any], cases = doc["cases"] as! [[String: Any]]
        #expect(summary["missing"] as? [String] == ["case1"] && summary["missingPolicy"] as? String == "empty" && summary["cases"] as? Int == 2)
        let c1 = try #require(cases.first { $0["id"] as? String == "case1" })
        #expect(c1["meanDice"] as? Double == 0, "an empty prediction of a case with foreground scores Dice 0")

        let skip = try FlipoutCLI.run(["evaluate", "--predictions", out, "--labels", s.labels.path, "--missing", "skip"])
        #expect(skip.status == 0 && skip.stdout.contains("mean (1 cases)") && skip.stdout.contains("left out: case1"), "\(skip.stdout)\(skip.stderr)")
        let doc2 = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/summary.json"))) as! [String: Any]
        #expect((doc2["summary"] as! [String: Any])["missing"] as? [String] == ["case1"])
    }
}
