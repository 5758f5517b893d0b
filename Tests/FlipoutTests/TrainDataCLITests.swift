// `flipout train` through the built binary: the default (exported) data, --data folders, resume that extends bit for bit, run-folder safety, bad options exit 64.
import Foundation
import Testing
import TestSupport
import Flipout3D

/// The bytes of every file in a folder (recursively), by relative path.
func folderBytes(_ dir: String) throws -> [String: Data] {
    var out: [String: Data] = [:]
    let e = FileManager.default.enumerator(atPath: dir)!
    while let name = e.nextObject() as? String {
        var isDir: ObjCBool = false
        let path = (dir as NSString).appendingPathComponent(name)
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), !isDir.boolValue { out[name] = try Data(contentsOf: URL(fileURLWithPath: path)) }
    }
    return out
}

/// A tiny U-Net: 2 levels, width 2, 16³ patches, one step per epoch.
let tinyUNet = ["--steps-per-epoch", "1", "--patch", "16,16,16", "--width", "2", "--levels", "2", "--samples", "1", "--quiet"]

@Suite struct TrainDataCLITests {
    @Test func trainOnAnExportedFolderReportsDicePerClassAndRecordsThePlan() throws {
        let dir = try Fixtures.temporaryDirectory("train-data")
        let data = dir.appendingPathComponent("synth").path, run = dir.appendingPathComponent("run").path
        let export = try FlipoutCLI.run(["datasets", "export-synthetic", data, "--cases", "3", "--test-cases", "1"])
        #expect(export.status == 0, "\(export.stderr)")
        let r = try FlipoutCLI.run(["train", "--data", data, "--run", run, "--epochs", "1"] + tinyUNet)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("test dice (1 cases, 1 samples): structureA ") && r.stdout.contains("structureB "), "\(r.stdout)")
        #expect(r.stderr.contains("2 channels [\"T1\", \"T2\"], 3 classes"), "\(r.stderr)")
        let results = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: run + "/results.json"))) as? [String: Any]
        #expect((results?["test_dice"] as? [Any])?.count == 3 && results?["patch_size"] as? [Int] == [16, 16, 16])
        #expect(results?["learned_priors"] == nil)
        // A new run refuses the folder of another run, touching nothing, and says what to do.
        let before = try folderBytes(run)
        let again = try FlipoutCLI.run(["train", "--data", data, "--run", run, "--epochs", "1", "--quiet"])
        #expect(again.status == 64 && again.stderr.contains("already holds") && again.stderr.contains("--overwrite")
                && again.stderr.contains("--resume"), "\(again.stderr)")
        // --overwrite with a bad --data or a bad --prior fails before anything is removed: the previous run stays byte-identical.
        let badData = try FlipoutCLI.run(["train", "--data", dir.appendingPathComponent("nope").path, "--run", run, "--overwrite", "--epochs", "1"] + tinyUNet)
        #expect(badData.status == 64 || badData.status == 66, "\(badData.stderr)")
        let badPrior = try FlipoutCLI.run(["train", "--data", data, "--run", run, "--overwrite", "--prior", "org.example.nosuch", "--epochs", "1"] + tinyUNet)
        #expect(badPrior.status == 64, "\(badPrior.stderr)")
        let badPatch = try FlipoutCLI.run(["train", "--data", data, "--run", run, "--overwrite", "--patch", "30,30,30", "--epochs", "1", "--quiet"])
        #expect(badPatch.status == 64, "\(badPatch.stderr)")
        #expect(try folderBytes(run) == before, "a refused --overwrite must leave the previous run as it was")
        // A valid --overwrite replaces it.
        let over = try FlipoutCLI.run(["train", "--data", data, "--run", run, "--overwrite", "--epochs", "1", "--seed", "2"] + tinyUNet)
        #expect(over.status == 0 && over.stderr.contains("--overwrite removed"), "\(over.stderr)")
        #expect(try folderBytes(run)["checkpoint.safetensors"] != before["checkpoint.safetensors"])
    }

    /// After the last epoch the largest-component post-processing is decided on the validation cases and saved in the
    /// checkpoint; without validation (--fold all) on the training cases. The augmentation policy is recorded.
    @Test func postprocessingIsDecidedOnValidationAndSaved() throws {
        let dir = try Fixtures.temporaryDirectory("train-postprocessing")
        let data = dir.appendingPathComponent("synth").path, run = dir.appendingPathComponent("run").path
        _ = try FlipoutCLI.run(["datasets", "export-synthetic", data, "--cases", "3", "--test-cases", "0"])
        let fold = try FlipoutCLI.run(["train", "--data", data, "--run", run + "-fold", "--epochs", "1", "--fold", "1", "--folds", "3"] + tinyUNet)
        #expect(fold.status == 0, "\(fold.stderr)")
        #expect(fold.stderr.contains("post-processing on validation (largest component per class"), "\(fold.stderr)")
        #expect(try Checkpoint.read(run + "-fold/checkpoint.safetensors").metadata[Postprocessing.checkpointKey] != nil)
        let all = try FlipoutCLI.run(["train", "--data", data, "--run", run, "--epochs", "1"] + tinyUNet)
        #expect(all.status == 0, "\(all.stderr)")
        let meta = try Checkpoint.read(run + "/checkpoint.safetensors").metadata
        let line = try #require(all.stderr.split(separator: "\n").first { $0.contains("post-processing on 3 training case(s) (no validation cases)") },
                                "\(all.stderr)")
        // The saved decision is the classes whose printed Dice rose ("NAME before → after").
        let rose = line.split(separator: ":", maxSplits: 1)[1].split(separator: ";")[0].split(separator: ",").enumerated().compactMap { i, part -> Int? in
            let numbers = part.split(separator: " ").compactMap { Double($0) }
            return numbers.count == 2 && numbers[1] > numbers[0] ? i + 1 : nil
        }
        let saved = try JSONDecoder().decode(Postprocessing.self, from: Data(try #require(meta[Postprocessing.checkpointKey]).utf8))
        #expect(saved.largestComponentClasses == rose, "\(line) vs \(saved)")
        #expect(meta[UNetCheckpointKey.patchTraining]?.contains(#""policy":"default""#) == true, "\(meta[UNetCheckpointKey.patchTraining] ?? "")")
    }

    /// Must show: `train --data D --epochs 2`, then `--resume --epochs 4`, writes the same checkpoint, byte for byte,
    /// as an uninterrupted 4-epoch run. The first run names its dataset relative to its working folder; the resume
    /// runs from another working folder and must still find it (the checkpoint stores the resolved path).
    @Test func resumeExtendsBitForBit() throws {
        let dir = try Fixtures.temporaryDirectory("train-resume")
        let export = try FlipoutCLI.run(["datasets", "export-synthetic", dir.appendingPathComponent("synth").path, "--cases", "3", "--test-cases", "0"])
        try #require(export.status == 0, "\(export.stderr)")
        let straight = dir.appendingPathComponent("straight").path, split = dir.appendingPathComponent("split").path
        // The polynomial decay is planned over the run's epochs, so extending a run is exact under a constant rate.
        let s = try FlipoutCLI.run(["train", "--data", "synth", "--run", straight, "--epochs", "4", "--fold", "0", "--folds", "3", "--lr-schedule", "constant"] + tinyUNet, in: dir)
        try #require(s.status == 0, "\(s.stderr)")
        let a = try FlipoutCLI.run(["train", "--data", "./synth", "--run", split, "--epochs", "2", "--fold", "0", "--folds", "3", "--lr-schedule", "constant"] + tinyUNet, in: dir)
        try #require(a.status == 0, "\(a.stderr)")
        let two = try Data(contentsOf: URL(fileURLWithPath: split + "/checkpoint.safetensors"))
        #expect(two != (try Data(contentsOf: URL(fileURLWithPath: straight + "/checkpoint.safetensors"))))
        let b = try FlipoutCLI.run(["train", "--resume", split + "/checkpoint.safetensors", "--epochs", "4", "--quiet"], in: URL(fileURLWithPath: "/"))
        try #require(b.status == 0, "\(b.stderr)")
        #expect(b.stderr.contains("resuming") && b.stderr.contains("after epoch 2 of 4"), "\(b.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: split + "/checkpoint.safetensors")) == Data(contentsOf: URL(fileURLWithPath: straight + "/checkpoint.safetensors")),
                "resumed 2 + 2 epochs vs 4 uninterrupted: the checkpoints differ")
        let metrics = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: split + "/metrics.json"))) as! [[String: Any]]
        #expect(metrics.map { $0["epoch"] as! Int } == [1, 2, 3, 4])
        // Folds are the dataset's: the same validation cases for the two runs (and another seed).
        let other = dir.appendingPathComponent("seed3").path
        let c = try FlipoutCLI.run(["train", "--data", "synth", "--run", other, "--epochs", "0", "--fold", "0", "--folds", "3", "--seed", "3"] + tinyUNet, in: dir)
        try #require(c.status == 0, "\(c.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: other + "/splits.json")) == Data(contentsOf: URL(fileURLWithPath: straight + "/splits.json")))
        // A complete run resumed without a larger --epochs trains nothing and says so; fewer epochs than done is refused.
        let complete = try FlipoutCLI.run(["train", "--resume", split + "/checkpoint.safetensors", "--quiet"])
        #expect(complete.status == 0 && complete.stderr.contains("the run is complete"), "\(complete.stderr)")
        let fewer = try FlipoutCLI.run(["train", "--resume", split + "/checkpoint.safetensors", "--epochs", "3", "--quiet"])
        #expect(fewer.status == 64 && fewer.stderr.contains("at least the 4 epochs"), "\(fewer.stderr)")
    }

    /// --resume with --run continues into that folder (a copy of the run), leaving the source run as it was;
    /// resuming a backup beside another checkpoint is refused instead of replacing it.
    @Test func resumeWithRunContinuesInThatFolder() throws {
        let dir = try Fixtures.temporaryDirectory("train-resume-run")
        let data = dir.appendingPathComponent("synth").path, run = dir.appendingPathComponent("run").path
        _ = try FlipoutCLI.run(["datasets", "export-synthetic", data, "--cases", "2", "--test-cases", "0"])
        let a = try FlipoutCLI.run(["train", "--data", data, "--run", run, "--epochs", "1"] + tinyUNet)
        try #require(a.status == 0, "\(a.stderr)")
        let source = try folderBytes(run)
        let target = dir.appendingPathComponent("longer").path
        let b = try FlipoutCLI.run(["train", "--resume", run + "/checkpoint.safetensors", "--run", target, "--epochs", "2", "--quiet"])
        #expect(b.status == 0 && b.stderr.contains("continues there"), "\(b.stderr)")
        #expect(try folderBytes(run) == source, "the source run is untouched")
        let metrics = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: target + "/metrics.json"))) as! [[String: Any]]
        #expect(metrics.map { $0["epoch"] as! Int } == [1, 2])
        // Into a folder holding another run: refused.
        let busy = try FlipoutCLI.run(["train", "--resume", run + "/checkpoint.safetensors", "--run", target, "--epochs", "3", "--quiet"])
        #expect(busy.status == 64 && busy.stderr.contains("already holds"), "\(busy.stderr)")
        // A backup resumed in its own folder would replace the run's checkpoint: refused, nothing changed.
        try FileManager.default.copyItem(atPath: run + "/checkpoint.safetensors", toPath: run + "/backup.safetensors")
        let withBackup = try folderBytes(run)
        let backup = try FlipoutCLI.run(["train", "--resume", run + "/backup.safetensors", "--epochs", "2", "--quiet"])
        #expect(backup.status == 64 && backup.stderr.contains("--run DIR"), "\(backup.stderr)")
        #expect(try folderBytes(run) == withBackup)
    }

    /// `flipout train` without --data trains the embedded synthetic data, exported into the run folder as a dataset folder.
    @Test func theDefaultDataIsAnExportedFolder() throws {
        let dir = try Fixtures.temporaryDirectory("train-default")
        let run = dir.appendingPathComponent("run").path
        let r = try FlipoutCLI.run(["train", "--run", run, "--epochs", "1"] + tinyUNet)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("exporting the embedded synthetic data") && r.stdout.contains("test dice (8 cases"), "\(r.stderr)\n\(r.stdout)")
        let check = try FlipoutCLI.run(["datasets", "check", run + "/dataset"])
        #expect(check.status == 0, "\(check.stderr)")
        #expect(FileManager.default.fileExists(atPath: run + "/dataset/imagesOod"))
        // The export is the one `datasets export-synthetic` writes.
        let mine = dir.appendingPathComponent("exported").path
        _ = try FlipoutCLI.run(["datasets", "export-synthetic", mine, "--cases", "32", "--test-cases", "8", "--ood-cases", "8"])
        #expect(try folderBytes(mine) == folderBytes(run + "/dataset"))
    }

    /// `evaluate --checkpoint` and `bench --variance` read a U-Net checkpoint: the test (and OOD) cases of its
    /// dataset folder are predicted and scored; the gradient variance is measured per layer at its weights.
    @Test func evaluateAndBenchVarianceReadAUNetCheckpoint() throws {
        let dir = try Fixtures.temporaryDirectory("train-evaluate")
        let data = dir.appendingPathComponent("synth").path, run = dir.appendingPathComponent("run").path
        let export = try FlipoutCLI.run(["datasets", "export-synthetic", data, "--cases", "3", "--test-cases", "1", "--ood-cases", "1"])
        try #require(export.status == 0, "\(export.stderr)")
        let t = try FlipoutCLI.run(["train", "--data", data, "--run", run, "--epochs", "1"] + tinyUNet)
        try #require(t.status == 0, "\(t.stderr)")
        let e = try FlipoutCLI.run(["evaluate", "--checkpoint", run + "/checkpoint.safetensors", "--samples", "2", "--json"])
        try #require(e.status == 0, "\(e.stderr)")
        let summary = try JSONSerialization.jsonObject(with: Data(e.stdout.utf8)) as! [String: Any]
        #expect(summary["ood"] != nil && summary["dicePerClass"] != nil, "\(e.stdout)")
        for f in ["test/synth_003.nii.gz", "ood/synth_ood_000.nii.gz", "summary.json", "cases.csv"] {
            #expect(FileManager.default.fileExists(atPath: run + "/evaluation/" + f), "\(f) missing: \((try? FileManager.default.subpathsOfDirectory(atPath: run + "/evaluation")) ?? [])")
        }
        let v = try FlipoutCLI.run(["bench", "--variance", "--checkpoint", run + "/checkpoint.safetensors", "--batches", "1,2", "--draws", "4", "--json"])
        try #require(v.status == 0, "\(v.stderr)")
        let rows = v.stdout.split(separator: "\n").map { try! JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        // 3 estimators x 2 batches x 7 Flipout convolutions (2 levels) x (loc, scale).
        #expect(rows.count == 3 * 2 * 7 * 2, "\(rows.count) rows")
        #expect(Set(rows.map { $0["layer"] as! String }) == ["enc0a", "enc0b", "enc1a", "enc1b", "up0", "dec0", "head"])
        #expect(rows.allSatisfy { ($0["variance"] as! Double) > 0 })
        // At N = 1 per-example draws exactly reparam's sample: the ratio is 1.
        for r in rows where r["estimator"] as? String == "per-example" && r["batch"] as? Int == 1 {
            let reparam = rows.first { $0["estimator"] as? String == "reparam" && $0["batch"] as? Int == 1 && $0["layer"] as? String == r["layer"] as? String
                                       && $0["parameter"] as? String == r["parameter"] as? String }!
            #expect(r["variance"] as! Double == reparam["variance"] as! Double)
        }
    }

    @Test func badDataOptionsExit64WithAdvice() throws {
        let dir = try Fixtures.temporaryDirectory("train-data-bad")
        let data = dir.appendingPathComponent("synth").path
        _ = try FlipoutCLI.run(["datasets", "export-synthetic", data, "--cases", "2", "--test-cases", "0"])
        let patch = try FlipoutCLI.run(["train", "--data", data, "--run", dir.appendingPathComponent("r").path, "--patch", "30,30,30", "--quiet"])
        #expect(patch.status == 64 && patch.stderr.contains("multiple of 4"), "\(patch.stderr)")
        let fold = try FlipoutCLI.run(["train", "--data", data, "--fold", "7"])
        #expect(fold.status == 64 && fold.stderr.contains("--fold 7 needs --folds > 7"), "\(fold.stderr)")
        let layers = try FlipoutCLI.run(["train", "--data", data, "--bayesian-layers", "middle"])
        #expect(layers.status == 64)
        // The built-in binary task's options are gone: refused, not ignored.
        for removed in [["--volume-size", "8"], ["--train-volumes", "2"], ["--test-volumes", "2"], ["--dataset", "colin27"], ["--architecture", "stack"], ["--after-positive", "norm"]] {
            let r = try FlipoutCLI.run(["train", "--data", data] + removed)
            #expect(r.status == 64 && r.stderr.contains(removed[0]), "\(removed): \(r.stderr)")
        }
        // What the checkpoint fixes cannot be changed on resume.
        for fixed in [["--data", data], ["--patch", "16,16,16"], ["--fold", "0"], ["--width", "4"]] {
            let r = try FlipoutCLI.run(["train", "--resume", dir.appendingPathComponent("c.safetensors").path] + fixed)
            #expect(r.status == 64 && r.stderr.contains("\(fixed[0]) cannot be changed"), "\(fixed): \(r.stderr)")
        }
    }
}

/// A one-channel, two-class dataset folder of 16³ cases (the synthetic T1 channel, any structure as foreground):
/// `training` cases in imagesTr/labelsTr and `test` in imagesTs/labelsTs. For CLI tests that predict one-channel volumes.
func writeBinaryDataset(_ root: URL, training: Int, test: Int) throws {
    for sub in ["imagesTr", "labelsTr", "imagesTs", "labelsTs"] {
        try FileManager.default.createDirectory(at: root.appendingPathComponent(sub), withIntermediateDirectories: true)
    }
    for (i, c) in PredictEvaluateCLITests.binaryCases(training + test).enumerated() {
        let x = Tensor(shape: [1, 16, 16, 16]), y = Tensor(shape: [1, 16, 16, 16])
        PatchSampler.crop(c.image, start: [8, 8, 8], size: [16, 16, 16], into: x.data)
        PatchSampler.crop(c.label!, start: [8, 8, 8], size: [16, 16, 16], into: y.data)
        let (images, labels) = i < training ? ("imagesTr", "labelsTr") : ("imagesTs", "labelsTs")
        let header = NIfTIHeader(shape: [16, 16, 16], spacing: [1, 1, 1])
        try NIfTI.write(x.reshaped([16, 16, 16]), header: header, to: root.appendingPathComponent("\(images)/case\(i)_0000.nii.gz").path)
        try NIfTI.write(y.reshaped([16, 16, 16]), header: header, datatype: .uint8, to: root.appendingPathComponent("\(labels)/case\(i).nii.gz").path)
    }
    let json: [String: Any] = ["name": "Binary", "channel_names": ["0": "T1"], "labels": ["background": 0, "foreground": 1],
                               "numTraining": training, "file_ending": ".nii.gz"]
    try JSONSerialization.data(withJSONObject: json, options: [.sortedKeys]).write(to: root.appendingPathComponent("dataset.json"))
}
