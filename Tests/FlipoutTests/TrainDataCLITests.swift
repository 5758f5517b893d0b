// `flipout train --data` through the built binary: an exported synthetic folder trains and reports Dice per class; bad options exit 64.
import Foundation
import Testing
import TestSupport
import Flipout3D

@Suite struct TrainDataCLITests {
    @Test func trainOnAnExportedFolderReportsDicePerClassAndRecordsThePlan() throws {
        let dir = try Fixtures.temporaryDirectory("train-data")
        let data = dir.appendingPathComponent("synth").path, run = dir.appendingPathComponent("run").path
        let export = try FlipoutCLI.run(["datasets", "export-synthetic", data, "--cases", "3", "--test-cases", "1"])
        #expect(export.status == 0, "\(export.stderr)")
        let r = try FlipoutCLI.run(["train", "--data", data, "--run", run, "--epochs", "1", "--steps-per-epoch", "1",
                                    "--patch", "16,16,16", "--width", "2", "--levels", "2", "--samples", "1", "--quiet"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("test dice (1 cases, 1 samples): structureA ") && r.stdout.contains("structureB "), "\(r.stdout)")
        #expect(r.stderr.contains("2 channels [\"T1\", \"T2\"], 3 classes"), "\(r.stderr)")
        let results = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: run + "/results.json"))) as? [String: Any]
        #expect((results?["test_dice"] as? [Any])?.count == 3 && results?["patch_size"] as? [Int] == [16, 16, 16])
        // A new run refuses the folder of another run, touching nothing, and says what to do.
        let before = try Data(contentsOf: URL(fileURLWithPath: run + "/checkpoint.safetensors"))
        let again = try FlipoutCLI.run(["train", "--data", data, "--run", run, "--epochs", "1", "--quiet"])
        #expect(again.status == 64 && again.stderr.contains("already holds") && again.stderr.contains("--overwrite")
                && again.stderr.contains("--resume"), "\(again.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: run + "/checkpoint.safetensors")) == before)
        // A fold writes splits.json into the run folder and validates on the held-out cases.
        let fold = try FlipoutCLI.run(["train", "--data", data, "--run", run + "-fold", "--epochs", "1", "--steps-per-epoch", "1",
                                       "--patch", "16,16,16", "--width", "2", "--levels", "2", "--samples", "1", "--fold", "1", "--folds", "3", "--quiet"])
        #expect(fold.status == 0, "\(fold.stderr)")
        #expect(FileManager.default.fileExists(atPath: run + "-fold/splits.json") && fold.stderr.contains("val dice structureA"))
        // After the last epoch the largest-component post-processing is decided on the validation cases and saved.
        #expect(fold.stderr.contains("post-processing on validation (largest component per class"), "\(fold.stderr)")
        #expect(try Checkpoint.read(run + "-fold/checkpoint.safetensors").metadata[Postprocessing.checkpointKey] != nil)
        let checkpointMeta = try Checkpoint.read(run + "/checkpoint.safetensors").metadata
        #expect(checkpointMeta[Postprocessing.checkpointKey] == #"{"largestComponentClasses":[]}"#, "no validation, no post-processing")
        #expect(checkpointMeta[UNetCheckpointKey.patchTraining]?.contains(#""policy":"default""#) == true,
                "\(checkpointMeta[UNetCheckpointKey.patchTraining] ?? "")")
        // --resume continues the U-Net run from its checkpoint.
        let resumed = try FlipoutCLI.run(["train", "--resume", run + "/checkpoint.safetensors", "--quiet"])
        #expect(resumed.status == 0 && resumed.stderr.contains("resuming"), "\(resumed.stderr)")
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
        let noData = try FlipoutCLI.run(["train", "--patch", "16,16,16"])
        #expect(noData.status == 64 && noData.stderr.contains("add --data"))
    }
}
