// The CLI's promises: the exit-code table in --help, 64 with a message saying what is allowed for
// every bad option value, the documented codes for bad input files, and the run-folder policy.
import Testing
import Foundation
import Flipout3D
import TestSupport

/// A one-channel, two-class dataset folder of 16³ cases shared by the tests (see `writeBinaryDataset`).
let tinyData: String = {
    let root = (try? Fixtures.temporaryDirectory("tiny-data"))!.appendingPathComponent("binary")
    do { try writeBinaryDataset(root, training: 2, test: 2) } catch { return "/nonexistent/tiny-data: \(error)" }
    return root.path
}()

/// The smallest run the CLI trains (about a second): a width-2, 2-level U-Net, one step of 16³ patches.
let tinyTrain = ["train", "--data", tinyData, "--epochs", "1", "--steps-per-epoch", "1", "--patch", "16,16,16", "--levels", "2",
                 "--samples", "1", "--width", "2", "--batch-size", "2", "--quiet"]

/// One trained checkpoint shared by the tests that only read it.
let tinyCheckpoint: Result<String, Error> = Result {
    let dir = try Fixtures.temporaryDirectory("tiny-run").appendingPathComponent("run").path
    let r = try FlipoutCLI.run(tinyTrain + ["--run", dir])
    guard r.status == 0 else { throw FixtureError("tiny train failed (\(r.status)): \(r.stderr)") }
    return dir + "/checkpoint.safetensors"
}

@Suite struct CLIExitCodeTests {
    @Test func helpPrintsTheExitCodeTable() throws {
        let r = try FlipoutCLI.run(["--help"])
        #expect(r.status == 0)
        for row in ["Exit codes:", "0   success", "1   a plugin failed to load or to compute", "64  bad command-line input",
                    "65  bad input file", "66  input file missing or unreadable", "70  internal error", "74  cannot write an output"] {
            #expect(r.stdout.contains(row), "--help lacks \"\(row)\":\n\(r.stdout)")
        }
    }

    @Test func everyBadOptionValueExits64SayingWhatIsAllowed() throws {
        let dir = try Fixtures.temporaryDirectory("bad-options")
        let run = ["--run", dir.appendingPathComponent("r").path]
        let cases: [([String], String)] = [
            (["train", "--epochs=-1"], "--epochs must be an integer from 0 to 100000 (got -1)"),
            (["train", "--epochs", "1000000"], "--epochs must be an integer from 0 to 100000"),
            (["train", "--batch-size", "0"], "--batch-size must be an integer from 1 to 1024 (got 0)"),
            (["train", "--batch-size", "5000"], "--batch-size must be an integer from 1 to 1024"),
            (["train", "--lr", "0"], "--lr must be a number above 0 and at most 1"),
            (["train", "--lr", "nan"], "--lr must be"),
            (["train", "--lr", "5"], "--lr must be"),
            (["train", "--beta=-1"], "--beta must be a number from 0.0 to 1000000.0"),
            (["train", "--beta", "inf"], "--beta must be"),
            (["train", "--beta-anneal=-1"], "--beta-anneal must be an integer from 0 to 100000"),
            (["train", "--samples", "0"], "--samples must be an integer from 1 to 10000"),
            (["train", "--samples", "100000"], "--samples must be an integer from 1 to 10000"),
            (["train", "--width=-8"], "--width must be an integer from 1 to 64 (got -8)"),
            (["train", "--width", "100000"], "--width must be an integer from 1 to 64"),
            (["train", "--kl-samples", "0"], "--kl-samples must be an integer from 1 to 1000"),
            (["train", "--estimator", "bogus"], "--estimator"),
            (["train", "--seed=-1"], "--seed"),
            (["train", "--prior-param", "scale=0.1", "--prior-param", "scale=0.2"], "--prior-param scale is given twice"),
            (["train", "--posterior-hyper", "components=2", "--posterior-hyper", "components=3"], "--posterior-hyper components is given twice"),
            (["train", "--prior-param", "scale=abc"], "--prior-param expects NAME=NUMBER"),
            (["train", "--prior-param", "scale=inf"], "--prior-param scale must be a finite number"),
            (["train", "--prior-param", "nosuch=1", "--epochs", "0"] + run, "has no parameter \"nosuch\""),
            (["train", "--foreign-prior", "garbage", "--epochs", "0"] + run, "--foreign-prior \"garbage\""),
            (["train", "--foreign-prior", "./x.so:f(y:d,s:d=1)->d", "--epochs", "0"] + run, "must be x"),
            (["train", "--resume", "somewhere.safetensors", "--lr", "0.1"], "--lr cannot be changed"),
            (["train", "--resume", "somewhere.safetensors", "--width", "4"], "--width cannot be changed"),
            (["predict", "--checkpoint", "c", "--input", "i", "--samples", "0"], "--samples must be an integer from 1 to 10000"),
            (["predict", "--checkpoint", "c", "--input", "i", "--samples", "1000000"], "--samples must be an integer from 1 to 10000"),
            (["predict", "--checkpoint", "c", "--input", "i", "--nonfinite", "maybe"], "--nonfinite"),
            (["evaluate", "--checkpoint", "c", "--samples", "0"], "--samples must be an integer from 1 to 10000"),
            (["bench", "--repeats", "0"], "--repeats must be an integer from 1 to 10000"),
        ]
        for (args, expected) in cases {
            let r = try FlipoutCLI.run(args)
            #expect(r.status == 64 && r.stderr.contains(expected), "\(args.joined(separator: " ")): exit \(r.status)\n\(r.stderr)")
            #expect(!r.stderr.contains("Fatal error"), "\(args): \(r.stderr)")
        }
    }

    @Test func badInputFilesExitWithTheDocumentedCodes() throws {
        let checkpoint = try tinyCheckpoint.get()
        let dir = try Fixtures.temporaryDirectory("bad-inputs")
        func predict(_ input: String, _ extra: [String] = []) throws -> Subprocess.Result {
            try FlipoutCLI.run(["predict", "--checkpoint", checkpoint, "--input", input, "--samples", "2",
                                "--output", dir.appendingPathComponent("out").path] + extra)
        }
        // The recreated crash inputs of issue 15 (and their like): exit 65 naming the field.
        for (k, lie) in headerLies.enumerated() {
            let path = dir.appendingPathComponent("lie\(k).nii").path
            try Data(try niftiBytes(dims: [8, 8, 8], edit: lie.edit)).write(to: URL(fileURLWithPath: path))
            let r = try predict(path)
            #expect(r.status == 65 && r.stderr.contains(lie.expected) && r.stderr.contains(path), "\(lie.name): \(r.status) \(r.stderr)")
        }
        // A non-finite voxel: refused with 65, or replaced with --nonfinite and said so; no NaN in any map.
        let nan = dir.appendingPathComponent("nan.nii").path
        try Data(try niftiBytes(dims: [8, 8, 8], values: (0..<512).map { $0 == 70 ? .nan : Double($0 % 13) })).write(to: URL(fileURLWithPath: nan))
        let refused = try predict(nan)
        #expect(refused.status == 65 && refused.stderr.contains("1 voxel is not finite") && refused.stderr.contains("(6, 0, 1)"), "\(refused.stderr)")
        let zeroed = try predict(nan, ["--nonfinite", "zero"])
        #expect(zeroed.status == 0 && zeroed.stderr.contains("replaced 1 NaN or infinite voxel"), "\(zeroed.stderr)")
        for map in ["nan_probabilities.nii.gz", "nan_entropy.nii.gz", "nan_mi.nii.gz", "nan_expected_entropy.nii.gz"] {
            let v = try NIfTI.read4D(dir.appendingPathComponent("out/\(map)").path)
            let finite = v.data.buffer.allSatisfy { $0.isFinite }
            #expect(finite, "\(map) has non-finite values")
        }
        // Missing and unreadable inputs: 66.
        let missing = try predict(dir.appendingPathComponent("missing.nii").path)
        #expect(missing.status == 66 && missing.stderr.contains("no such file"), "\(missing.stderr)")
        let fifo = dir.appendingPathComponent("fifo.nii").path
        _ = mkfifo(fifo, 0o600)
        let pipe = try predict(fifo)
        #expect(pipe.status == 66 && pipe.stderr.contains("FIFO"), "\(pipe.stderr)")
        // A corrupt checkpoint: 65 naming the tensor; a checkpoint without plugin pins: 65, accepted with the flag.
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: checkpoint)))
        bytes[bytes.count - 3] ^= 0x04
        let flipped = dir.appendingPathComponent("flipped.safetensors").path
        try Data(bytes).write(to: URL(fileURLWithPath: flipped))
        let f = try FlipoutCLI.run(["evaluate", "--checkpoint", flipped, "--samples", "1"])
        #expect(f.status == 65 && f.stderr.contains("does not match its SHA-256 checksum") && f.stderr.contains("tensor "), "\(f.stderr)")
        var c = try Checkpoint.read(checkpoint)
        c.metadata[CheckpointKey.plugins] = nil
        let unpinned = dir.appendingPathComponent("unpinned.safetensors").path
        try c.write(to: unpinned)
        let u = try FlipoutCLI.run(["evaluate", "--checkpoint", unpinned, "--samples", "1"])
        #expect(u.status == 65 && u.stderr.contains("no plugin pins") && u.stderr.contains("--allow-plugin-change"), "\(u.stderr)")
        let allowed = try FlipoutCLI.run(["evaluate", "--checkpoint", unpinned, "--samples", "1", "--allow-plugin-change"])
        #expect(allowed.status == 0 && allowed.stderr.contains("warning") && allowed.stdout.contains("dice"), "\(allowed.stderr)")
    }

    @Test func runFolderPolicyAndResumeThatExtends() throws {
        let dir = try Fixtures.temporaryDirectory("run-policy").appendingPathComponent("run").path
        #expect(try FlipoutCLI.run(tinyTrain + ["--run", dir]).status == 0)
        let checkpoint = dir + "/checkpoint.safetensors"
        let first = try Data(contentsOf: URL(fileURLWithPath: checkpoint))
        // A second train into the same folder is refused, and the checkpoint is untouched.
        let again = try FlipoutCLI.run(tinyTrain + ["--run", dir])
        #expect(again.status == 64 && again.stderr.contains("--resume") && again.stderr.contains("--overwrite"), "\(again.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: checkpoint)) == first)
        // --resume honours --epochs: a finished run of 1 epoch extends to 2, after a stale temporary is cleaned up.
        let stale = dir + "/.checkpoint.safetensors.tmp-AbC123"
        _ = FileManager.default.createFile(atPath: stale, contents: Data([1, 2, 3]))
        let extended = try FlipoutCLI.run(["train", "--resume", checkpoint, "--epochs", "2", "--quiet"])
        #expect(extended.status == 0 && extended.stderr.contains("after epoch 1 of 2"), "\(extended.stderr)")
        #expect(extended.stderr.contains("removed \(stale)") && !FileManager.default.fileExists(atPath: stale))
        let metrics = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/metrics.json"))) as? [Any]
        #expect(metrics?.count == 2)
        let fewer = try FlipoutCLI.run(["train", "--resume", checkpoint, "--epochs", "1", "--quiet"])
        #expect(fewer.status == 64 && fewer.stderr.contains("--epochs must be at least the 2 epochs"), "\(fewer.stderr)")
        let complete = try FlipoutCLI.run(["train", "--resume", checkpoint, "--quiet"])
        #expect(complete.status == 0 && complete.stderr.contains("the run is complete"), "\(complete.stderr)")
        // --overwrite replaces the run.
        let over = try FlipoutCLI.run(tinyTrain + ["--run", dir, "--overwrite"])
        #expect(over.status == 0 && over.stderr.contains("--overwrite removed"), "\(over.stderr)")
        let m2 = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/metrics.json"))) as? [Any]
        #expect(m2?.count == 1)
    }
}
