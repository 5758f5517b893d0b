// Issue 20's reproducers through the built binary: short relative paths, path errors in the tool's
// own words, options beyond their documented range, geometry that would not fit, extreme intensities,
// and a sample of the mutation tour (scripts/mutation-tour): every run exits with a code of the table.
import Testing
import Foundation
import Flipout3D
import TestSupport

@Suite(.serialized) struct HostileCLITests {
    /// The table of `flipout --help` (Errors.swift).
    static let table: Set<Int32> = [0, 1, 64, 65, 66, 70, 74]

    static func expectClean(_ r: Subprocess.Result, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(Self.table.contains(r.status) && !r.stderr.contains("Fatal error") && !r.stderr.contains("NSCocoaErrorDomain")
                && !r.stderr.contains("crashed"), "\(what): exit \(r.status)\n\(r.stderr)", sourceLocation: sourceLocation)
        if r.status != 0 { #expect(r.stderr.contains("Error: "), "\(what): no message", sourceLocation: sourceLocation) }
    }

    @Test func oneCharacterRelativePathsWork() throws {
        // The first command of many tutorials, from an empty folder.
        let dir = try Fixtures.temporaryDirectory("one-char")
        let export = try FlipoutCLI.run(["datasets", "export-synthetic", "D", "--cases", "2", "--test-cases", "1"], in: dir)
        #expect(export.status == 0, "\(export.stderr)")
        #expect(FileManager.default.fileExists(atPath: dir.appendingPathComponent("D/dataset.json").path))
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir.path)
        #expect(leftovers == ["D"], "\(leftovers)")
        let check = try FlipoutCLI.run(["datasets", "check", "D"], in: dir)
        #expect(check.status == 0 && check.stdout.contains("OK: D is a valid dataset folder"), "\(check.stderr)")
        // Missing one-character inputs: the tool's "no such file", exit 66, never a trap.
        for args in [["predict", "--checkpoint", "c", "--input", "a"], ["train", "--resume", "c"], ["evaluate", "--checkpoint", "c"],
                     ["datasets", "check", "x"]] {
            let r = try FlipoutCLI.run(args, in: dir)
            Self.expectClean(r, args.joined(separator: " "))
            #expect(r.status == 66 || r.status == 64, "\(args): \(r.status) \(r.stderr)")
        }
        // A one-character file name as --input (the volume in the current folder).
        let tiny = try FlipoutCLI.run(["predict", "--checkpoint", try tinyCheckpoint.get(), "--input", "a", "--samples", "1", "--output", "o"], in: dir)
        #expect(tiny.status == 66 && tiny.stderr.contains("a: no such file"), "\(tiny.stderr)")
        try Data(try niftiBytes(dims: [8, 8, 8])).write(to: dir.appendingPathComponent("a.nii"))
        let one = try FlipoutCLI.run(["predict", "--checkpoint", try tinyCheckpoint.get(), "--input", "a.nii", "--samples", "1", "--output", "o"], in: dir)
        #expect(one.status == 0 && FileManager.default.fileExists(atPath: dir.appendingPathComponent("o/a.nii.gz").path), "\(one.stderr)")
    }

    @Test func pathErrorsAreTheToolsOwnMessages() throws {
        let dir = try Fixtures.temporaryDirectory("path-errors")
        let file = dir.appendingPathComponent("plain-file").path
        try Data("x".utf8).write(to: URL(fileURLWithPath: file))
        let cases: [([String], String)] = [
            (tinyTrain + ["--run", "/dev/null"], "--run /dev/null: exists and is not a folder"),
            (tinyTrain + ["--run", ""], "--run needs a path (got an empty string)"),
            (tinyTrain + ["--run", file], "exists and is not a folder"),
            (["predict", "--checkpoint", "c", "--input", "i", "--output", "/dev/null"], "--output /dev/null: exists and is not a folder"),
            (["predict", "--checkpoint", "c", "--input", ""], "--input needs a path"),
            (["datasets", "check", ""], "the dataset folder needs a path"),
            (["datasets", "export-synthetic", file], "exists and is not a folder"),
            (["evaluate", "--predictions", "p", "--labels", "l", "--output", "/dev/null"], "--output /dev/null: exists and is not a folder"),
        ]
        for (args, expected) in cases {
            let r = try FlipoutCLI.run(args, in: dir)
            #expect(r.status == 64 && r.stderr.contains(expected), "\(args): exit \(r.status)\n\(r.stderr)")
            Self.expectClean(r, args.joined(separator: " "))
        }
        // A run folder whose parent is a file: Foundation's error, said in the tool's words (exit 74).
        let under = try FlipoutCLI.run(tinyTrain + ["--run", file + "/run"], in: dir)
        Self.expectClean(under, "--run under a file")
        #expect(under.status == 74 || under.status == 66, "\(under.status) \(under.stderr)")
        #expect(under.stderr.contains(file), "\(under.stderr)")
    }

    @Test func everyNumericOptionHasADocumentedRange() throws {
        let cases: [([String], String)] = [
            (["predict", "--checkpoint", "c", "--input", "i", "--window", "4096,4096,4096"], "--window must be D,H,W with each from 4 to 512 voxels"),
            (["predict", "--checkpoint", "c", "--input", "i", "--window", "512,512,512"], "at most 16777216 (256x256x256)"),
            (["predict", "--checkpoint", "c", "--input", "i", "--overlap", "0.99"], "--overlap must be a number from 0.0 to 0.9"),
            (["predict", "--checkpoint", "c", "--input", "i", "--window-batch", "100000"], "--window-batch must be an integer from 1 to 64"),
            (["train", "--data", "d", "--patch", "4096,4096,4096"], "--patch must be D,H,W with each from 1 to 512 voxels"),
            (["train", "--data", "d", "--spacing", "0.0001,1,1"], "--spacing must be D,H,W in mm with each from 0.001 to 100.0"),
            (["train", "--data", "d", "--spacing", "1e300,1,1"], "--spacing must be"),
            (["train", "--data", "d", "--spacing=-1,1,1"], "--spacing must be"),
            (["train", "--data", "d", "--folds", "1000000"], "--folds must be an integer from 2 to 100"),
            (["train", "--data", "d", "--steps-per-epoch", "1000000000"], "--steps-per-epoch must be an integer from 0 to 1000000"),
            (["train", "--data", "d", "--memory-budget", "100000000"], "--memory-budget must be an integer from 16 to 1048576"),
            (["train", "--data", "d", "--moped-delta", "1e30"], "--moped-delta must be a number from"),
            (["evaluate", "--predictions", "p", "--labels", "l", "--classes", "100000"], "--classes must be an integer from 2 to 1000"),
            (["evaluate", "--predictions", "p", "--labels", "l", "--roi-margin", "1e300"], "--roi-margin must be a number from 0.0 to 1000.0"),
            (["datasets", "check", "d", "--spacing", "0,1,1"], "--spacing must be D,H,W in mm"),
            (["datasets", "export-synthetic", "d", "--cases", "100000000"], "--cases must be an integer from 1 to 10000"),
            (["datasets", "export-synthetic", "d", "--ood-cases", "100000000"], "--ood-cases must be an integer from 0 to 10000"),
        ]
        for (args, expected) in cases {
            let r = try FlipoutCLI.run(args)
            #expect(r.status == 64 && r.stderr.contains(expected), "\(args.joined(separator: " ")): exit \(r.status)\n\(r.stderr)")
            Self.expectClean(r, args.joined(separator: " "))
        }
    }

    @Test func geometryAndIntensityReproducersExitWithACodeOfTheTable() throws {
        let checkpoint = try tinyCheckpoint.get()
        let dir = try Fixtures.temporaryDirectory("geometry-cli")
        func predict(_ name: String, _ bytes: [UInt8], _ extra: [String] = []) throws -> Subprocess.Result {
            let path = dir.appendingPathComponent(name).path
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            return try FlipoutCLI.run(["predict", "--checkpoint", checkpoint, "--input", path, "--samples", "1",
                                       "--output", dir.appendingPathComponent("out-" + name).path] + extra)
        }
        // A qform of norm > 1: refused (65) naming the field.
        let q = try predict("q.nii", try niftiBytes(dims: [8, 8, 8]) { setI16(&$0, 252, 1); setF32(&$0, 256, 0.8); setF32(&$0, 260, 0.8) })
        #expect(q.status == 65 && q.stderr.contains("quatern_b/c/d"), "\(q.stderr)")
        // A .nii.gz with a wrong CRC: refused (65).
        var gz = try gzipped(try niftiBytes(dims: [8, 8, 8]))
        gz[gz.count - 8] ^= 0xFF
        let crc = try predict("crc.nii.gz", gz)
        #expect(crc.status == 65 && crc.stderr.contains("incorrect data check"), "\(crc.stderr)")
        // Extreme but finite intensities (any range wider than Float's or narrower than its normals): written, preview included.
        for (name, values) in [("wide.nii", [3.4e38, -3.4e38]), ("narrow.nii", [0, 1e-40]), ("denormal.nii", [1e-45, 2e-45])] {
            let r = try predict(name, try niftiBytes(dims: [8, 8, 8], values: (0..<512).map { values[$0 % 2] }))
            #expect(r.status == 0, "\(name): \(r.stderr)")
            let stem = String(name.dropLast(4))
            let png = dir.appendingPathComponent("out-\(name)/\(stem)_preview.png").path
            #expect(FileManager.default.fileExists(atPath: png), "\(name): no preview")
            let probabilities = try NIfTI.read4D(dir.appendingPathComponent("out-\(name)/\(stem)_probabilities.nii.gz").path)
            let finite = probabilities.data.buffer.allSatisfy { $0.isFinite }
            #expect(finite, "\(name): non-finite probabilities")
        }
        // --nonfinite clip turning inf into Float's extremes, then the preview.
        let clipped = try predict("clip.nii", try niftiBytes(dims: [8, 8, 8], values: (0..<512).map { $0 % 3 == 0 ? .infinity : $0 % 3 == 1 ? -3.4e38 : 3.4e38 }), ["--nonfinite", "clip"])
        #expect(clipped.status == 0, "\(clipped.stderr)")
    }

    /// 30 runs of the mutation tour through this build's binary (scripts/mutation-tour runs 2,000+).
    @Test func aSampleOfTheMutationTourExitsCleanly() throws {
        guard (try? Subprocess.run("/usr/bin/env", ["python3", "--version"]))?.status == 0 else {
            Issue.record("python3 is needed for scripts/mutation-tour"); return
        }
        let work = try Fixtures.temporaryDirectory("mutation-tour")
        let script = Fixtures.packageRoot.appendingPathComponent("scripts/mutation-tour").path
        let r = try Subprocess.run("/usr/bin/env", ["python3", script, "--runs", "30", "--seed", "20", "--flipout", BuildProducts.flipout,
                                                   "--work", work.path, "--timeout", "120"])
        #expect(r.status == 0 && r.stdout.contains("crashes 0, hangs 0, other problems 0"), "\(r.stdout)\n\(r.stderr)")
    }
}
