// Dataset folders through the built binary: a valid folder checks and prints its fingerprint;
// each inconsistency is an error naming the file, exit code 64, and nothing written.
import Testing
import Foundation
import Flipout3D
import TestSupport

/// A small valid nnU-Net v2 folder: 3 cases, channels T1 and CT, classes background/a/b, on 6×7×8
/// grids (one case LPS), plus one test case.
struct TinyDataset {
    let root: URL
    static let shape = [6, 7, 8] // (D, H, W)

    init(_ label: String) throws {
        root = try Fixtures.temporaryDirectory(label)
        for sub in ["imagesTr", "labelsTr", "imagesTs"] {
            try FileManager.default.createDirectory(at: root.appendingPathComponent(sub), withIntermediateDirectories: true)
        }
        for (n, id) in ["c1", "c2", "c3"].enumerated() {
            let h = n == 1 ? Self.lpsHeader() : NIfTIHeader(shape: Self.shape, spacing: [1, 1, 2], origin: [-4, -3, -6])
            try write(id: id, header: h, seed: n)
        }
        try Self.writeVolume(Self.image(seed: 7, channel: 0), NIfTIHeader(shape: Self.shape), path("imagesTs/t1_0000.nii.gz"))
        try Self.writeVolume(Self.image(seed: 7, channel: 1), NIfTIHeader(shape: Self.shape), path("imagesTs/t1_0001.nii.gz"))
        try json(["channel_names": ["0": "T1", "1": "CT"], "labels": ["background": 0, "a": 1, "b": 2],
                  "numTraining": 3, "file_ending": ".nii.gz"])
    }

    static func lpsHeader() -> NIfTIHeader {
        var h = NIfTIHeader(shape: shape)
        h.srowX = [-1, 0, 0, 4]; h.srowY = [0, -1, 0, 3]; h.srowZ = [0, 0, 2, -6]
        h.setQformFromSform()
        return h
    }

    func path(_ p: String) -> String { root.appendingPathComponent(p).path }

    static func image(seed: Int, channel: Int) -> Tensor {
        Tensor(shape: shape, values: (0..<shape.reduce(1, *)).map { Float(($0 * (7 + seed) + channel * 13) % 50) + (channel == 1 ? -1000 : 1) })
    }
    static func label() -> Tensor {
        Tensor(shape: shape, values: (0..<shape.reduce(1, *)).map { Float($0 % 7 == 0 ? 1 : $0 % 11 == 0 ? 2 : 0) })
    }
    static func writeVolume(_ t: Tensor, _ h: NIfTIHeader, _ path: String, datatype: NIfTIDatatype = .float32) throws {
        try NIfTI.write(t, header: h, datatype: datatype, to: path)
    }

    func write(id: String, header h: NIfTIHeader, seed: Int) throws {
        try Self.writeVolume(Self.image(seed: seed, channel: 0), h, path("imagesTr/\(id)_0000.nii.gz"))
        try Self.writeVolume(Self.image(seed: seed, channel: 1), h, path("imagesTr/\(id)_0001.nii.gz"))
        try Self.writeVolume(Self.label(), h, path("labelsTr/\(id).nii.gz"), datatype: .uint8)
    }

    func json(_ object: [String: Any]) throws {
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        try data.write(to: root.appendingPathComponent("dataset.json"))
    }

    /// Every file under the folder with its size and modification time (to show nothing was written).
    func listing() -> [String] {
        let fm = FileManager.default
        return (fm.enumerator(atPath: root.path)?.allObjects as? [String] ?? []).sorted().map { p in
            let a = try? fm.attributesOfItem(atPath: path(p))
            return "\(p) \(a?[.size] ?? 0) \((a?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0)"
        }
    }

    func remove() { try? FileManager.default.removeItem(at: root) }
}

@Suite struct DatasetFolderTests {
    @Test func validFolderChecksAndPrintsItsFingerprint() throws {
        let d = try TinyDataset("dataset-ok")
        defer { d.remove() }
        let before = d.listing()
        let r = try FlipoutCLI.run(["datasets", "check", d.root.path, "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        for s in ["cases        3 training, 1 test (imagesTs)", "channels     0 T1, 1 CT", "0 background", "1 a", "2 b",
                  "orientation  LPS 1, RAS 2", "spacing mm   min/median/max per axis (D, H, W) = (S, A, R): 2/2/2  1/1/1  1/1/1",
                  "plan         RAS, spacing (D, H, W) 2, 1, 1 mm; median shape then 6 × 7 × 8", "channel 1 CT: CT: clip to", "channel 0 T1: z-score per image", "OK: "] {
            #expect(r.stdout.contains(s), "missing \"\(s)\" in:\n\(r.stdout)")
        }
        #expect(d.listing() == before)
        // The plan JSON round-trips.
        let jsonLine = try #require(r.stdout.split(separator: "\n").first { $0.hasPrefix("{") })
        let plan = try #require(PreprocessingPlan(jsonString: String(jsonLine)))
        #expect(plan.spacing == [2, 1, 1] && plan.classCount == 3 && plan.channelNames == ["T1", "CT"])
        #expect(plan.classNames == ["background", "a", "b"])
    }

    /// One broken folder per inconsistency: (what to break, the file the error must name, a phrase of the advice).
    @Test(arguments: [
        "missing-channel", "label-shape", "label-affine", "channel-affine", "label-value", "label-4d", "label-fraction",
        "duplicate-case", "bad-json", "num-training", "orphan-image", "stray-channel", "no-json", "labels-gap", "test-channel", "duplicate-key",
    ])
    func badFolderIsAClearErrorAndWritesNothing(_ kind: String) throws {
        let d = try TinyDataset("dataset-bad")
        defer { d.remove() }
        let h = NIfTIHeader(shape: TinyDataset.shape, spacing: [1, 1, 2], origin: [-4, -3, -6])
        var names = "", advice = ""
        switch kind {
        case "missing-channel":
            try FileManager.default.removeItem(atPath: d.path("imagesTr/c3_0001.nii.gz"))
            names = d.path("imagesTr/c3_0001.nii.gz"); advice = "no file for channel 1 (CT)"
        case "label-shape":
            try TinyDataset.writeVolume(Tensor(shape: [6, 7, 9]), NIfTIHeader(shape: [6, 7, 9], spacing: [1, 1, 2], origin: [-4, -3, -6]), d.path("labelsTr/c1.nii.gz"))
            names = d.path("labelsTr/c1.nii.gz"); advice = "must share one voxel grid"
        case "label-affine":
            try TinyDataset.writeVolume(TinyDataset.label(), NIfTIHeader(shape: TinyDataset.shape, spacing: [1, 1, 2], origin: [-4, -3, -5]), d.path("labelsTr/c3.nii.gz"))
            names = d.path("labelsTr/c3.nii.gz"); advice = "not on the grid of \(d.path("imagesTr/c3_0000.nii.gz"))"
        case "channel-affine":
            try TinyDataset.writeVolume(TinyDataset.image(seed: 0, channel: 1), NIfTIHeader(shape: TinyDataset.shape, spacing: [1, 1, 3]), d.path("imagesTr/c1_0001.nii.gz"))
            names = d.path("imagesTr/c1_0001.nii.gz"); advice = "affine"
        case "label-value":
            let l = TinyDataset.label(); l.data[5] = 5
            try TinyDataset.writeVolume(l, h, d.path("labelsTr/c3.nii.gz"), datatype: .uint8)
            names = d.path("labelsTr/c3.nii.gz"); advice = "label values 5 are not in dataset.json's labels (background=0, a=1, b=2)"
        case "label-fraction":
            let l = TinyDataset.label(); l.data[3] = 1.5
            try TinyDataset.writeVolume(l, h, d.path("labelsTr/c1.nii.gz"))
            names = d.path("labelsTr/c1.nii.gz"); advice = "label values 1.5"
        case "label-4d":
            // A 3D file of twice the depth, its header patched to 4D (D/2, H, W, 2); gzip is
            // detected from the content, so an uncompressed file under the .nii.gz name reads.
            let tmp = d.path("l.nii")
            try TinyDataset.writeVolume(Tensor(shape: [12, 7, 8]), NIfTIHeader(shape: [12, 7, 8], spacing: [1, 1, 2], origin: [-4, -3, -6]), tmp, datatype: .uint8)
            var bytes = try Data(contentsOf: URL(fileURLWithPath: tmp))
            try FileManager.default.removeItem(atPath: tmp)
            bytes.replaceSubrange(40..<50, with: [4, 0, 8, 0, 7, 0, 6, 0, 2, 0])
            try bytes.write(to: URL(fileURLWithPath: d.path("labelsTr/c2.nii.gz")))
            names = d.path("labelsTr/c2.nii.gz"); advice = "the label map is not 3D (dims [8, 7, 6, 2])"
        case "duplicate-case":
            let e: [String: String] = ["image": "./imagesTr/c1.nii.gz", "label": "./labelsTr/c1.nii.gz"]
            try d.json(["channel_names": ["0": "T1", "1": "CT"], "labels": ["background": 0, "a": 1, "b": 2],
                        "numTraining": 2, "file_ending": ".nii.gz", "training": [e, e]])
            names = d.path("dataset.json"); advice = "case c1 is listed twice"
        case "bad-json":
            try Data("{\"channel_names\": {\"0\": \"T1\",}".utf8).write(to: d.root.appendingPathComponent("dataset.json"))
            names = d.path("dataset.json"); advice = "not valid JSON"
        case "num-training":
            try d.json(["channel_names": ["0": "T1", "1": "CT"], "labels": ["background": 0, "a": 1, "b": 2],
                        "numTraining": 4, "file_ending": ".nii.gz"])
            names = d.path("dataset.json"); advice = "set numTraining to 3"
        case "orphan-image":
            try TinyDataset.writeVolume(TinyDataset.image(seed: 0, channel: 0), h, d.path("imagesTr/c9_0000.nii.gz"))
            names = d.path("labelsTr/c9.nii.gz"); advice = "has no label map"
        case "stray-channel":
            try TinyDataset.writeVolume(TinyDataset.image(seed: 0, channel: 0), h, d.path("imagesTr/c1_0002.nii.gz"))
            names = d.path("imagesTr/c1_0002.nii.gz"); advice = "channel_names has 2 channel(s)"
        case "no-json":
            try FileManager.default.removeItem(atPath: d.path("dataset.json"))
            names = d.path("dataset.json"); advice = "a dataset folder needs dataset.json"
        case "labels-gap":
            try d.json(["channel_names": ["0": "T1", "1": "CT"], "labels": ["background": 0, "a": 1, "b": 3],
                        "numTraining": 3, "file_ending": ".nii.gz"])
            names = d.path("dataset.json"); advice = "consecutive 0, 1, ..., K-1"
        case "duplicate-key":
            // JSONSerialization keeps one of the two silently; StrictJSON refuses.
            let text = try String(contentsOfFile: d.path("dataset.json"), encoding: .utf8)
            try ("{\"numTraining\":1," + text.dropFirst()).write(toFile: d.path("dataset.json"), atomically: true, encoding: .utf8)
            names = d.path("dataset.json"); advice = "duplicate key \"numTraining\""
        case "test-channel":
            try FileManager.default.removeItem(atPath: d.path("imagesTs/t1_0001.nii.gz"))
            names = d.path("imagesTs/t1_0001.nii.gz"); advice = "no file for channel 1"
        default:
            Issue.record("unknown case \(kind)")
        }
        let before = d.listing()
        let r = try FlipoutCLI.run(["datasets", "check", d.root.path])
        #expect(r.status == 64, "\(kind): status \(r.status), stderr \(r.stderr)")
        #expect(r.stderr.contains("Error: \(names)"), "\(kind): the error does not start with the file \(names):\n\(r.stderr)")
        #expect(r.stderr.contains(advice), "\(kind): missing \"\(advice)\" in:\n\(r.stderr)")
        #expect(!r.stdout.contains("OK:"))
        #expect(d.listing() == before, "\(kind): the folder changed")
    }

    @Test func msdTrainingListIsAccepted() throws {
        let d = try TinyDataset("dataset-msd")
        defer { d.remove() }
        // MSD style: labels index -> name, modality instead of channel_names, a training list, no file_ending.
        let entries = ["c1", "c2", "c3"].map { ["image": "./imagesTr/\($0).nii.gz", "label": "./labelsTr/\($0).nii.gz"] }
        try d.json(["modality": ["0": "T1", "1": "CT"], "labels": ["0": "background", "1": "a", "2": "b"],
                    "numTraining": 3, "training": entries])
        let folder = try DatasetFolder(d.root.path)
        #expect(folder.training.map(\.id) == ["c1", "c2", "c3"] && folder.channelNames == ["T1", "CT"])
        #expect(folder.labels == ["background": 0, "a": 1, "b": 2] && folder.classCount == 3)
        #expect(folder.training[1].imagePaths == [d.path("imagesTr/c2_0000.nii.gz"), d.path("imagesTr/c2_0001.nii.gz")])
        #expect(folder.test.map(\.id) == ["t1"] && folder.test[0].labelPath == nil)

        // A single-channel MSD dataset: one file per case, named without a channel suffix, test list included.
        let m = try TinyDataset("dataset-msd1")
        defer { m.remove() }
        for id in ["c1", "c2", "c3"] {
            try FileManager.default.moveItem(atPath: m.path("imagesTr/\(id)_0000.nii.gz"), toPath: m.path("imagesTr/\(id).nii.gz"))
            try FileManager.default.removeItem(atPath: m.path("imagesTr/\(id)_0001.nii.gz"))
        }
        try FileManager.default.moveItem(atPath: m.path("imagesTs/t1_0000.nii.gz"), toPath: m.path("imagesTs/t1.nii.gz"))
        try FileManager.default.removeItem(atPath: m.path("imagesTs/t1_0001.nii.gz"))
        try m.json(["modality": ["0": "CT"], "labels": ["0": "background", "1": "a", "2": "b"], "numTraining": 3,
                    "training": ["c1", "c2", "c3"].map { ["image": "./imagesTr/\($0).nii.gz", "label": "./labelsTr/\($0).nii.gz"] },
                    "test": ["./imagesTs/t1.nii.gz"]])
        let single = try FlipoutCLI.run(["datasets", "check", m.root.path])
        #expect(single.status == 0 && single.stdout.contains("cases        3 training, 1 test"), "\(single.stdout)\n\(single.stderr)")
        #expect(try DatasetFolder(m.root.path).training[0].imagePaths == [m.path("imagesTr/c1.nii.gz")])
    }

    @Test func normalisationStatisticsFollowNNUNet() throws {
        let d = try TinyDataset("dataset-norm")
        defer { d.remove() }
        let folder = try DatasetFolder(d.root.path)
        let f = try DatasetFingerprint(folder: folder)
        let plan = PreprocessingPlan(fingerprint: f)
        // Independent: the statistics computed here over the same voxels in Double.
        var t1: [Double] = [], ctFG: [Double] = []
        for c in 0..<3 {
            let a = TinyDataset.image(seed: c, channel: 0).array, b = TinyDataset.image(seed: c, channel: 1).array, l = TinyDataset.label().array
            t1 += a.filter { $0 != 0 }.map(Double.init)
            ctFG += zip(b, l).filter { $0.1 > 0 }.map { Double($0.0) }
        }
        func meanStd(_ v: [Double]) -> (Double, Double) {
            let m = v.reduce(0, +) / Double(v.count)
            return (m, (v.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(v.count)).squareRoot())
        }
        func percentile(_ v: [Double], _ q: Double) -> Double {
            let s = v.sorted(), pos = q / 100 * Double(s.count - 1), lo = Int(pos)
            return s[lo] + (s[min(lo + 1, s.count - 1)] - s[lo]) * (pos - Double(lo))
        }
        // MRI: z-scored per image (no zero voxels here, so no mask); CT: the dataset's foreground statistics.
        guard plan.channels[0] == .zScorePerImage(useNonzeroMask: false), case let .ct(lo, hi, m1, s1) = plan.channels[1] else {
            Issue.record("plan channels \(plan.channels)"); return
        }
        #expect(plan.cropping == .nonzero)
        // The fingerprint still records the dataset-wide statistics (datasets check prints them).
        guard case let .zScore(m0, s0) = f.channelStatistics[0].normalization(channelName: "T1") else { Issue.record("T1 statistics"); return }
        let (em0, es0) = meanStd(t1), (em1, es1) = meanStd(ctFG)
        #expect(abs(m0 - em0) < 1e-9 && abs(s0 - es0) < 1e-9)
        #expect(abs(m1 - em1) < 1e-9 && abs(s1 - es1) < 1e-9)
        #expect(abs(lo - percentile(ctFG, 0.5)) < 1e-9 && abs(hi - percentile(ctFG, 99.5)) < 1e-9)
        // Applied: CT is clipped then scaled; the prepared grid is RAS at the median spacing.
        let cases = try folder.prepare(folder.training, plan: plan)
        #expect(cases.count == 3 && cases.allSatisfy { $0.image.shape == [2, 6, 7, 8] && $0.label?.shape == [1, 6, 7, 8] })
        let ct = cases[0].image.array[(6 * 7 * 8)...]
        #expect(abs(Double(ct.max()!) - (hi - m1) / s1) < 1e-4 && abs(Double(ct.min()!) - (lo - m1) / s1) < 1e-4)
        // The LPS case c2: prepared voxel (0, 0, 0) is source voxel (i, j, k) = (7, 6, 0) (x, y flipped).
        // (`.array` copies: a Tensor may be freed right after its last use, `.data` is a raw pointer.)
        // The T1 of c2 is normalised by its own mean and sd.
        let src = TinyDataset.image(seed: 1, channel: 0).array
        let (cm, cs) = meanStd(src.map(Double.init))
        #expect(abs(Double(cases[1].image.array[0]) - (Double(src[(0 * 7 + 6) * 8 + 7]) - cm) / cs) < 1e-4)
        let test = try folder.prepare(folder.test, plan: plan)
        #expect(test.count == 1 && test[0].label == nil && test[0].id == "t1")
    }

    @Test func splitsAreAPropertyOfTheDataset() throws {
        let dir = try Fixtures.temporaryDirectory("splits")
        defer { try? FileManager.default.removeItem(at: dir) }
        let ids = (0..<12).map { String(format: "case_%02d", $0) }
        let s = try Splits.forDataset(root: dir.path, caseIDs: ids, folds: 5)
        #expect(s.count == 5)
        // Every case validates exactly once over the folds; fold sizes differ by at most one.
        #expect(s.flatMap(\.val).sorted() == ids && Set(s.map(\.val.count)) == [2, 3])
        for f in s { #expect(Set(f.train).isDisjoint(with: f.val) && f.train.count + f.val.count == 12) }
        // Derived from the case list alone (any order of the ids), never from a run's seed; shuffled, not dealt in order.
        #expect(try Splits.forDataset(root: dir.path, caseIDs: ids.reversed(), folds: 5) == s)
        #expect(s[0].val != ["case_00", "case_05", "case_10"])
        // The dataset's own splits_final.json (nnU-Net's file) wins, and is checked against the dataset.
        let mine = [FoldSplit(train: Array(ids[6...]), val: Array(ids[..<6])), FoldSplit(train: Array(ids[..<6]), val: Array(ids[6...]))]
        try JSONEncoder().encode(mine).write(to: dir.appendingPathComponent("splits_final.json"))
        #expect(try Splits.forDataset(root: dir.path, caseIDs: ids, folds: 2) == mine)
        #expect(throws: DatasetError.self) { try Splits.forDataset(root: dir.path, caseIDs: ids, folds: 5) }
        #expect(throws: DatasetError.self) { try Splits.forDataset(root: dir.path, caseIDs: Array(ids.dropLast()), folds: 2) }
        #expect(try Splits.cases(.all, caseIDs: ids, splits: s) == FoldSplit(train: ids, val: []))
        #expect(try Splits.cases(.fold(2), caseIDs: ids, splits: s) == s[2])
        #expect(throws: DatasetError.self) { try Splits.cases(.fold(5), caseIDs: ids, splits: s) }
        #expect(FoldSelection("all") == .all && FoldSelection("3") == .fold(3) && FoldSelection("x") == nil && FoldSelection("-1") == nil)
    }

    @Test func exportSyntheticWritesACheckableFolderWithVariedGrids() throws {
        let dir = try Fixtures.temporaryDirectory("export-synthetic")
        defer { try? FileManager.default.removeItem(at: dir) }
        let out = dir.appendingPathComponent("syn").path
        let r = try FlipoutCLI.run(["datasets", "export-synthetic", out, "--cases", "5", "--test-cases", "2", "--seed", "4"])
        #expect(r.status == 0, "\(r.stderr)")
        let folder = try DatasetFolder(out)
        #expect(folder.training.count == 5 && folder.test.count == 2 && folder.channelNames == ["T1", "T2"] && folder.classCount == 3)
        #expect(folder.test.allSatisfy { $0.labelPath != nil })
        // Orientations and spacings vary; each file's grid is the generated case's field of view.
        var codes = Set<String>(), spacings = Set<[Double]>()
        let generator = SyntheticCases(seed: 4, count: 7)
        for (n, c) in (folder.training + folder.test).enumerated() {
            let h = try NIfTI.readHeader(c.labelPath!)
            codes.insert(AxisOrientation(h.affine).description)
            spacings.insert(h.affine.spacing.map { ($0 * 100).rounded() / 100 })
            // The world centre of the written grid (srow by hand) is the generated case's centre.
            let g = generator.case(n)
            let half = [Double(h.nx - 1) / 2, Double(h.ny - 1) / 2, Double(h.nz - 1) / 2]
            let ctr = h.sformMatrix.map { (row: [Float]) -> Double in
                let terms = (0..<3).map { Double(row[$0]) * half[$0] }
                return terms.reduce(Double(row[3]), +)
            }
            let shape = Array(g.image.shape.dropFirst())
            let gc = [g.affine[0][0] * Double(shape[2] - 1) / 2 + g.affine[0][3], g.affine[1][1] * Double(shape[1] - 1) / 2 + g.affine[1][3], g.affine[2][2] * Double(shape[0] - 1) / 2 + g.affine[2][3]]
            for k in 0..<3 { #expect(abs(ctr[k] - gc[k]) < 1e-3, "case \(n) centre \(ctr) vs \(gc)") }
        }
        #expect(codes.count >= 4 && spacings.count >= 5, "\(codes) \(spacings)")
        let check = try FlipoutCLI.run(["datasets", "check", out])
        #expect(check.status == 0 && check.stdout.contains("cases        5 training, 2 test"), "\(check.stderr)")
        // A second export into the non-empty folder is refused, and changes nothing.
        let again = try FlipoutCLI.run(["datasets", "export-synthetic", out, "--cases", "2"])
        #expect(again.status == 64 && again.stderr.contains("exists and is not an empty folder"), "\(again.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["syn"])
        #expect(try DatasetFolder(out).training.count == 5)
    }
}
