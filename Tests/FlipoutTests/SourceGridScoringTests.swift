// Run reports score on the original grid: SourceGridScoring's Dice equals scoring predict's written label map against the label file.
import Foundation
import Testing
import Flipout3D
import TestSupport

@Suite struct SourceGridScoringTests {
    @Test func diceIsScoredOnTheSourceGridAgainstTheLabelFile() throws {
        let root = try Fixtures.temporaryDirectory("source-grid")
        let images = root.appendingPathComponent("imagesTr"), labels = root.appendingPathComponent("labelsTr")
        for d in [images, labels] { try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true) }
        let c = try UncertaintyMapsTests.lpsCase(images)
        let header = try NIfTI.readHeader(c.input.channels[0])
        try NIfTI.write(Tensor(shape: c.shape, values: c.truth.map(Float.init)), header: header, datatype: .uint8,
                        to: labels.appendingPathComponent("lps.nii.gz").path)
        let json = #"{"channel_names": {"0": "a", "1": "b"}, "labels": {"background": 0, "one": 1, "two": 2}, "numTraining": 1, "file_ending": ".nii.gz"}"#
        try json.write(to: root.appendingPathComponent("dataset.json"), atomically: true, encoding: .utf8)
        let folder = try DatasetFolder(root.path)
        let window = SlidingWindowOptions(window: [8, 8, 8], overlap: 0.5)
        let predictor = contextPredictor(noise: 0.5)
        let dice = try SourceGridScoring.meanDice(folder.training, plan: c.plan, window: window, draws: 3, predictor: predictor)

        // Reference: predict's written label map against the label file, both on the source grid.
        var settings = PredictionSettings(window: window, classNames: c.plan.classNames)
        settings.preprocessing = .plan(c.plan)
        let out = root.appendingPathComponent("preds").path
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        _ = try CasePredictor.run(c.input, channels: 2, classes: 3, draws: 3, settings: settings, folder: out, predictor: predictor)
        let written = try NIfTI.read(out + "/lps.nii.gz")
        #expect(written.header.shape == c.shape)
        let pred = written.data.array.map { Int32($0) }
        for k in 1..<3 {
            let tp = zip(pred, c.truth).filter { $0 == Int32(k) && $1 == Int32(k) }.count
            let np = pred.filter { $0 == Int32(k) }.count, nt = c.truth.filter { $0 == Int32(k) }.count
            let reference = 2 * Double(tp) / Double(np + nt)
            #expect(abs(dice[k] - reference) < 1e-12, "class \(k): \(dice[k]) vs \(reference)")
        }
        #expect(dice.dropFirst().contains { $0 > 0.05 && $0 < 1 }, "\(dice)")
    }
}
