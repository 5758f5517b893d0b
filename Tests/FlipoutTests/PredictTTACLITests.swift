// `flipout predict`'s test-time mirroring through the built binary: on by default along the trained axes, off on request, flip-invariant.
import Foundation
import Testing
import Flipout3D
import TestSupport

@Suite(.serialized) struct PredictTTACLITests {
    /// Two small one-channel, two-class checkpoints, one trained with nnU-Net's augmentation (every
    /// axis mirrored) and one without; a 16³ case and its mirror along D and W (same header).
    static func setUp() throws -> (augmented: String, plain: String, input: String, flipped: String, dir: URL) {
        let dir = try Fixtures.temporaryDirectory("flipout-predict-tta")
        let plan = PreprocessingPlan(spacing: [1, 1, 1], channelNames: ["image"], channels: [.zScore(mean: 0, std: 1)],
                                     labels: ["background": 0, "foreground": 1], classCount: 2)
        let cases = PredictEvaluateCLITests.binaryCases(3)
        var checkpoints: [String] = []
        for augmented in [true, false] {
            var (m, u, t, p) = SmallRun.configs(epochs: 1, seed: 42)
            m.width = 4; u.inputChannels = 1; u.classCount = 2
            p.augmentation = augmented ? AugmentationSettings(policy: .default, spacing: [1, 1, 1]) : AugmentationSettings.none
            let trainer = try PatchTrainer(model: try UNet(m, shape: u, registry: try SmallRun.registry(), seed: 42), training: t, patch: p,
                                           plan: plan, train: cases, validation: [], runDirectory: dir.appendingPathComponent("run\(augmented)").path)
            trainer.showProgress = false
            _ = try trainer.trainEpoch()
            checkpoints.append(trainer.checkpointPath)
        }
        let x = Tensor(shape: [1, 16, 16, 16])
        PatchSampler.crop(PredictEvaluateCLITests.binaryCases(5)[4].image, start: [8, 8, 8], size: [16, 16, 16], into: x.data)
        let header = NIfTIHeader(shape: [16, 16, 16], spacing: [1, 1, 1])
        let input = dir.appendingPathComponent("case.nii.gz").path, flippedPath = dir.appendingPathComponent("mirror.nii.gz").path
        try NIfTI.write(x.reshaped([16, 16, 16]), header: header, to: input)
        Mirror.apply(x.data, shape: [1, 16, 16, 16], axes: [0, 2])
        try NIfTI.write(x.reshaped([16, 16, 16]), header: header, to: flippedPath)
        return (checkpoints[0], checkpoints[1], input, flippedPath, dir)
    }

    static func predict(_ checkpoint: String, _ input: String, _ out: String, _ extra: [String]) throws -> (r: Subprocess.Result, report: [String: Any], p: Tensor) {
        let r = try FlipoutCLI.run(["predict", "--checkpoint", checkpoint, "--input", input, "--output", out, "--samples", "3", "--no-normalise"] + extra)
        guard r.status == 0 else { return (r, [:], Tensor(shape: [1])) }
        let id = Paths.lastComponent(input).replacingOccurrences(of: ".nii.gz", with: "")
        let report = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(out)/\(id).json"))) as! [String: Any]
        return (r, report, try NIfTI.read4D("\(out)/\(id)_probabilities.nii.gz").data)
    }

    /// Must show: mirroring is on by default along the axes the training mirrored (all three
    /// under the default augmentation, none without augmentation); --no-tta and --tta none turn it
    /// off (the same maps); --tta all and --tta D,W choose axes; CASE.json records them.
    @Test func onByDefaultAlongTheTrainedAxesAndOffOnRequest() throws {
        let s = try Self.setUp()
        func out(_ name: String) -> String { s.dir.appendingPathComponent(name).path }
        let byDefault = try Self.predict(s.augmented, s.input, out("default"), [])
        #expect(byDefault.r.status == 0, "\(byDefault.r.stderr)")
        #expect(byDefault.r.stderr.contains("x 8 mirrorings (D,H,W)"), "\(byDefault.r.stderr)")
        #expect(byDefault.report["testTimeMirroring"] as? Bool == true && byDefault.report["mirrorAxes"] as? [String] == ["D", "H", "W"])
        let bare = try Self.predict(s.augmented, s.input, out("bare"), ["--tta"])
        #expect(bare.report["mirrorAxes"] as? [String] == ["D", "H", "W"], "\(bare.r.stderr)")
        #expect(bare.p.array == byDefault.p.array)
        let off = try Self.predict(s.augmented, s.input, out("off"), ["--no-tta"])
        let none = try Self.predict(s.augmented, s.input, out("none"), ["--tta", "none"])
        #expect(off.r.status == 0 && none.r.status == 0, "\(off.r.stderr)\(none.r.stderr)")
        #expect(off.report["testTimeMirroring"] as? Bool == false && off.report["mirrorAxes"] == nil)
        #expect(!off.r.stderr.contains("mirrorings"), "\(off.r.stderr)")
        #expect(off.p.array == none.p.array)
        #expect(zip(off.p.array, byDefault.p.array).map { abs($0 - $1) }.max()! > 1e-4, "mirroring should change the maps")
        let dw = try Self.predict(s.augmented, s.input, out("dw"), ["--tta", "D,W"])
        #expect(dw.report["mirrorAxes"] as? [String] == ["D", "W"] && dw.r.stderr.contains("x 4 mirrorings (D,W)"), "\(dw.r.stderr)")
        // Trained without augmentation: nothing was mirrored, so nothing is by default.
        let plain = try Self.predict(s.plain, s.input, out("plain"), [])
        #expect(plain.report["testTimeMirroring"] as? Bool == false, "\(plain.r.stderr)")
        let all = try Self.predict(s.plain, s.input, out("all"), ["--tta", "all"])
        #expect(all.report["mirrorAxes"] as? [String] == ["D", "H", "W"], "\(all.r.stderr)")
        // Bad requests exit 64 with a message.
        let both = try FlipoutCLI.run(["predict", "--checkpoint", s.augmented, "--input", s.input, "--output", out("x"), "--no-tta", "--tta", "all"])
        #expect(both.status == 64 && both.stderr.contains("--no-tta"), "\(both.stderr)")
        let bad = try FlipoutCLI.run(["predict", "--checkpoint", s.augmented, "--input", s.input, "--output", out("x"), "--tta", "X,Y"])
        #expect(bad.status == 64, "\(bad.stderr)")
        let help = try FlipoutCLI.run(["predict", "--help"])
        #expect(help.stdout.contains("Test-time mirroring is on by default") && help.stdout.contains("--no-tta"), "\(help.stdout)")
    }

    /// Must show: with mirroring on (the default for a mirrored-trained checkpoint), predicting the
    /// input mirrored along D and W gives the mirrored maps (to float rounding); without it, not.
    @Test func mirroredTrainedCheckpointPredictsFlipInvariantly() throws {
        let s = try Self.setUp()
        func out(_ name: String) -> String { s.dir.appendingPathComponent(name).path }
        func back(_ p: Tensor) -> Tensor {
            let c = p.copy()
            Mirror.apply(c.data, shape: p.shape, axes: [0, 2])
            return c
        }
        let a = try Self.predict(s.augmented, s.input, out("a"), []), b = try Self.predict(s.augmented, s.flipped, out("b"), [])
        #expect(a.r.status == 0 && b.r.status == 0, "\(a.r.stderr)\(b.r.stderr)")
        let gap = zip(a.p.array, back(b.p).array).map { abs($0 - $1) }.max()!
        #expect(gap < 1e-5, "with mirroring the flipped input's probabilities, flipped back, differ by \(gap)")
        let mi = try NIfTI.read("\(out("a"))/case_mi.nii.gz").data, miFlipped = try NIfTI.read("\(out("b"))/mirror_mi.nii.gz").data
        let miGap = zip(mi.array, back(miFlipped.reshaped([1, 16, 16, 16])).array).map { abs($0 - $1) }.max()!
        #expect(miGap < 1e-5 && mi.array.contains { $0 > 1e-6 }, "MI gap \(miGap)")
        let c = try Self.predict(s.augmented, s.input, out("c"), ["--no-tta"]), d = try Self.predict(s.augmented, s.flipped, out("d"), ["--no-tta"])
        let plainGap = zip(c.p.array, back(d.p).array).map { abs($0 - $1) }.max()!
        #expect(plainGap > 1e-3, "without mirroring the network alone should not be flip-invariant (gap \(plainGap))")
    }
}
