// dataset.json regions and the ignore label on the user's path: parsing, the trainer's loss against a Double restatement, a BraTS-like folder through datasets check, train, predict and evaluate (the built binary), and the batch worker's bit-identity.
import Foundation
import Testing
import TestSupport
import Flipout3D

/// dataset.json in a fresh folder with one training case (a 4³ image and label), for parsing tests.
private func folder(labels: String, extra: String = "") throws -> String {
    let dir = try Fixtures.temporaryDirectory("region-json").path
    for sub in ["imagesTr", "labelsTr"] { try FileManager.default.createDirectory(atPath: dir + "/" + sub, withIntermediateDirectories: true) }
    let header = NIfTIHeader(shape: [4, 4, 4])
    try NIfTI.write(Tensor(shape: [4, 4, 4], values: (0..<64).map { Float($0) }), header: header, datatype: .float32, to: dir + "/imagesTr/a_0000.nii.gz")
    try NIfTI.write(Tensor(shape: [4, 4, 4], values: (0..<64).map { Float($0 % 4) }), header: header, datatype: .uint8, to: dir + "/labelsTr/a.nii.gz")
    let json = "{\"channel_names\": {\"0\": \"T1\"}, \"labels\": \(labels), \"numTraining\": 1, \"file_ending\": \".nii.gz\"\(extra)}"
    try json.write(toFile: dir + "/dataset.json", atomically: true, encoding: .utf8)
    return dir
}

/// The step's loss in Double from the logits, over the voxels not labelled `ignore`: softmax
/// CE + 1 − mean foreground Dice (classes), or BCE + 1 − mean region Dice (regions); batch sums, s = 1e-5.
private func referenceLoss(logits z: Tensor, labels y: Tensor, regions: [[Int]]?, ignore: Int) -> Double {
    let (n, k) = (z.shape[0], z.shape[1]), v = z.count / (n * k)
    var inter = [Double](repeating: 0, count: k), sum = inter, data = 0.0, m = 0.0
    for b in 0..<n { for i in 0..<v {
        let label = Int(y.data[b * v + i])
        if label == ignore { continue }
        m += 1
        let zs = (0..<k).map { Double(z.data[(b * k + $0) * v + i]) }
        if let regions {
            for r in 0..<k {
                let p = 1 / (1 + exp(-zs[r])), t: Double = regions[r].contains(label) ? 1 : 0
                data -= t * log(p) + (1 - t) * log(1 - p)
                inter[r] += p * t; sum[r] += p + t
            }
        } else {
            let top = zs.max()!, s = zs.reduce(0) { $0 + exp($1 - top) }
            data -= zs[label] - top - log(s)
            for c in 0..<k { let p = exp(zs[c] - top) / s; inter[c] += c == label ? p : 0; sum[c] += p + (c == label ? 1 : 0) }
        }
    } }
    let dice = (0..<k).map { (2 * inter[$0] + 1e-5) / (sum[$0] + 1e-5) }
    if regions != nil { return data / (m * Double(k)) + 1 - dice.reduce(0, +) / Double(k) }
    return data / m + 1 - dice.dropFirst().reduce(0, +) / Double(k - 1)
}

/// Synthetic cases whose top half of slices is labelled `ignore`.
private func casesWithIgnoredSlab(_ ignore: Float) -> [PreparedCase] {
    SyntheticCases(seed: 1, count: 2).prepared().map { c in
        let label = c.label!.copy(), shape = Array(label.shape.dropFirst()), plane = shape[1] * shape[2]
        for i in ((shape[0] / 2) * plane)..<label.count { label.data[i] = ignore }
        return PreparedCase(id: c.id, image: c.image, label: label, geometry: c.geometry)
    }
}

@Suite struct RegionDatasetTests {
    @Test func datasetJSONRegionsAndIgnoreAsNNUNetReadsThem() throws {
        // BraTS: the regions listed in any key order come back in regions_class_order's order.
        let brats = try DatasetFolder(try folder(labels: "{\"background\": 0, \"enhancing\": [3], \"whole\": [1, 2, 3], \"core\": [2, 3], \"ignore\": 4}",
                                                 extra: ", \"regions_class_order\": [1, 2, 3]"))
        #expect(brats.labelScheme.regions?.map(\.name) == ["whole", "core", "enhancing"])
        #expect(brats.labelScheme.regions?.map(\.values) == [[1, 2, 3], [2, 3], [3]])
        #expect(brats.labelScheme.ignoreLabel == 4 && brats.classCount == 4 && brats.labels == ["background": 0])
        // Classes with an ignore label: K excludes it.
        let classes = try DatasetFolder(try folder(labels: "{\"background\": 0, \"a\": 1, \"b\": 2, \"ignore\": 3}"))
        #expect(classes.classCount == 3 && classes.labelScheme.ignoreLabel == 3 && classes.labelScheme.regions == nil)
        // Refusals that say what to do.
        func refused(_ labels: String, _ extra: String = "", _ words: [String]) throws {
            do { _ = try DatasetFolder(try folder(labels: labels, extra: extra)); Issue.record("accepted \(labels) \(extra)") } catch let e as DatasetError {
                for w in words { #expect(e.description.contains(w), "\(e.description) lacks \(w)") }
            }
        }
        try refused("{\"background\": 0, \"whole\": [1, 2], \"core\": [2]}", "", ["regions_class_order"])
        try refused("{\"background\": 0, \"whole\": [1, 2], \"core\": [2]}", ", \"regions_class_order\": [3, 1]", ["regions_class_order", "lists 3"])
        try refused("{\"background\": 0, \"a\": 1, \"b\": 2, \"ignore\": 1}", "", ["highest"])
        try refused("{\"background\": 0, \"whole\": [0, 1], \"core\": [1]}", ", \"regions_class_order\": [1, 1]", ["background 0 is never part"])
        try refused("{\"background\": 0, \"tumour\": [1, 2]}", ", \"regions_class_order\": [1]", ["single region is a class"])
    }

    /// The trainer's step loss equals the loss restated in Double over the non-ignored voxels,
    /// for softmax classes and for sigmoid regions: the ignore label reaches the loss, and the
    /// regions train one sigmoid each.
    @Test(arguments: [false, true])
    func trainerStepLeavesIgnoredVoxelsOut(_ regionBased: Bool) throws {
        var plan = SmallRun.plan
        plan.ignoreLabel = 3
        if regionBased { plan.regions = [LabelRegion(name: "whole", values: [1, 2]), LabelRegion(name: "B", values: [2])]; plan.regionsClassOrder = [1, 2] }
        try plan.validate()
        var (m, u, t, p) = SmallRun.configs(epochs: 1)
        m.bayesian = false; u.classCount = plan.outputCount
        p.stepsPerEpoch = 1
        let trainer = try PatchTrainer(model: try UNet(m, shape: u, registry: try SmallRun.registry(), seed: 3), training: t, patch: p, plan: plan,
                                       train: casesWithIgnoredSlab(3), validation: [], runDirectory: SmallRun.tempDir())
        let (x, y) = trainer.sampler.batch(trainer.sampler.draws(step: 1, caseIndices: [0, 1]))
        let ignored = y.array.filter { $0 == 3 }.count
        #expect(ignored > 0, "the batch holds no ignored voxel")
        let logits = try trainer.model.forward(x, StepContext(seed: t.seed, step: 1)).logits
        let reference = referenceLoss(logits: logits, labels: y, regions: plan.regions?.map(\.values), ignore: 3)
        let step = try trainer.step(x: x, y: y, step: 1, beta: 1)
        #expect(abs(step.loss.value - reference) < 1e-4 * max(1, abs(reference)), "step loss \(step.loss.value), reference \(reference)")
        // Counting the ignored voxels (as background) gives another loss: the test can tell.
        let counted = referenceLoss(logits: logits, labels: Tensor(shape: y.shape, values: y.array.map { $0 == 3 ? 0 : $0 }),
                                    regions: plan.regions?.map(\.values), ignore: -1)
        #expect(abs(counted - reference) > 1e-3, "ignoring changes the loss (\(counted) vs \(reference))")
    }

    /// Patches cut and augmented on the worker thread beside the step give the same run, byte for byte.
    @Test func batchWorkerKeepsTrainingBitIdentical() throws {
        func run(prefetch: Bool) throws -> Data {
            var (m, u, t, p) = SmallRun.configs(epochs: 2)
            p.stepsPerEpoch = 3
            p.augmentation = AugmentationSettings(policy: .default, spacing: [1, 1, 1])
            let dir = SmallRun.tempDir()
            let trainer = try PatchTrainer(model: try UNet(m, shape: u, registry: try SmallRun.registry(), seed: 4), training: t, patch: p,
                                           plan: SmallRun.plan, train: SyntheticCases(seed: 1, count: 3).prepared(), validation: [], runDirectory: dir)
            trainer.showProgress = false
            trainer.prefetch = prefetch
            try trainer.run()
            return try Data(contentsOf: URL(fileURLWithPath: trainer.checkpointPath))
        }
        let with = try run(prefetch: true), without = try run(prefetch: false)
        #expect(with == without, "checkpoints differ with and without the batch worker")
    }

    /// A BraTS-like folder (nested regions, ignore slabs) on the user's path: datasets check
    /// reports regions, ignore and test cases; train --data trains the regions and reports
    /// per-region test Dice per case; predict writes region maps; evaluate scores per region,
    /// matching Dice computed here from the written files.
    @Test func regionDatasetTrainsPredictsAndEvaluatesPerRegion() throws {
        let dir = try Fixtures.temporaryDirectory("region-cli")
        let data = dir.appendingPathComponent("brats").path, run = dir.appendingPathComponent("run").path
        let preds = dir.appendingPathComponent("preds").path
        let export = try FlipoutCLI.run(["datasets", "export-synthetic", data, "--cases", "3", "--test-cases", "2", "--regions", "--ignore"])
        #expect(export.status == 0, "\(export.stderr)")
        let check = try FlipoutCLI.run(["datasets", "check", data])
        #expect(check.status == 0, "\(check.stderr)")
        for line in ["regions      0 whole tumour = [1, 2, 3]", "1 tumour core = [2, 3]", "2 enhancing tumour = [3]", "ignore       label 4:",
                     "test         2 case(s) in imagesTs/, 2 with a label in labelsTs/", "test spacing min/median/max", "test orient."] {
            #expect(check.stdout.contains(line), "datasets check lacks \(line):\n\(check.stdout)")
        }
        let train = try FlipoutCLI.run(["train", "--data", data, "--run", run, "--epochs", "2", "--deterministic"] + tinyUNet.filter { $0 != "--quiet" })
        #expect(train.status == 0, "\(train.stderr)")
        #expect(train.stderr.contains("test case 1/2 synth_003: windows") && train.stderr.contains("test case 2/2 synth_004: windows"), "no progress line of the test report:\n\(train.stderr)")
        #expect(train.stderr.contains("3 regions [\"whole tumour\", \"tumour core\", \"enhancing tumour\"] (one sigmoid each), ignore label 4"), "\(train.stderr)")
        #expect(train.stdout.contains("test dice (2 cases, 1 samples): whole tumour ") && train.stdout.contains("enhancing tumour "), "\(train.stdout)")
        let results = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: run + "/results.json"))) as? [String: Any]
        #expect(results?["classes"] as? [String] == ["whole tumour", "tumour core", "enhancing tumour"] && results?["region_based"] as? Bool == true)
        let perCase = results?["test_case_dice"] as? [[String: Any]]
        #expect(perCase?.map { $0["id"] as? String } == ["synth_003", "synth_004"] && perCase?.allSatisfy { ($0["dice"] as? [Any])?.count == 3 } == true)

        let predict = try FlipoutCLI.run(["predict", "--checkpoint", run + "/checkpoint.safetensors", "--input", data + "/imagesTs", "--output", preds])
        #expect(predict.status == 0, "\(predict.stderr)")
        let probabilities = try NIfTI.read4D(preds + "/synth_003_probabilities.nii.gz")
        #expect(probabilities.data.shape[0] == 3, "one sigmoid map per region")
        let map = try NIfTI.read(preds + "/synth_003.nii.gz").data.array, sig = probabilities.data.array
        let n = map.count
        // nnU-Net's rule: the last region (in regions_class_order) above 0.5 writes its value.
        let rule = (0..<n).map { v -> Float in (0..<3).reduce(Float(0)) { sig[$1 * n + v] > 0.5 ? Float($1 + 1) : $0 } }
        #expect(map == rule, "label map follows regions_class_order")

        let evaluate = try FlipoutCLI.run(["evaluate", "--predictions", preds, "--labels", data + "/labelsTs"])
        #expect(evaluate.status == 0, "\(evaluate.stderr)")
        #expect(evaluate.stdout.contains("region-based: whole tumour [1, 2, 3] (writes 1)"), "\(evaluate.stdout)")
        let summary = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: preds + "/summary.json"))) as? [String: Any]
        let cases = summary?["cases"] as? [[String: Any]]
        #expect(summary?["regions"] as? [String] == ["whole tumour", "tumour core", "enhancing tumour"] && cases?.count == 2)
        // Dice per region computed here from the files, against evaluate's and the training report's.
        let truth = try NIfTI.read(data + "/labelsTs/synth_003.nii.gz").data.array
        let regions: [Set<Float>] = [[1, 2, 3], [2, 3], [3]]
        let mine = regions.map { r -> Double? in
            var tp = 0, fp = 0, fn = 0
            for v in 0..<n { let a = r.contains(map[v]), b = r.contains(truth[v]); if a && b { tp += 1 } else if a { fp += 1 } else if b { fn += 1 } }
            return tp + fp + fn == 0 ? nil : 2 * Double(tp) / Double(2 * tp + fp + fn)
        }
        let scored = (cases?.first { $0["id"] as? String == "synth_003" }?["dice"] as? [Any])?.map { $0 as? Double }
        let reported = (perCase?.first { $0["id"] as? String == "synth_003" }?["dice"] as? [Any])?.map { $0 as? Double }
        for r in 0..<3 {
            #expect(scored?[r].map { d in mine[r].map { abs($0 - d) < 1e-9 } ?? false } ?? (mine[r] == nil), "region \(r): evaluate \(String(describing: scored?[r])) vs \(String(describing: mine[r]))")
            #expect(reported?[r].map { d in mine[r].map { abs($0 - d) < 1e-9 } ?? false } ?? (mine[r] == nil), "region \(r): train report \(String(describing: reported?[r])) vs \(String(describing: mine[r]))")
        }
    }
}
