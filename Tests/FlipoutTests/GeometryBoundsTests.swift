// The reproducer classes of issue 20 (geometry, paths, extreme values, outputs) in the library: each
// is refused with a message naming what is wrong, or handled, never a trap.
import Testing
import Foundation
import Flipout3D
import TestSupport

/// The message of the error `body` throws ("accepted" if none).
func refusal(_ body: () throws -> Void) -> String {
    do { try body(); return "accepted" } catch { return "\(error)" }
}

@Suite struct PathsTests {
    @Test func pathsSplitAndJoinLikeDirnameAndBasename() {
        let parents: [(String, String)] = [("a", "."), ("D", "."), ("ab", "."), ("", "."), ("/", "/"), ("/a", "/"), ("a/b", "a"),
                                           ("a/b/", "a"), ("a//b", "a"), ("./a", "."), ("../x/y.nii", "../x"), ("//a", "/")]
        for (p, expected) in parents { #expect(Paths.parent(p) == expected, "parent(\(p))") }
        let names: [(String, String)] = [("a", "a"), ("a/b", "b"), ("a/b/", "b"), ("/", "/"), ("", ""), ("x/y.nii.gz", "y.nii.gz")]
        for (p, expected) in names { #expect(Paths.lastComponent(p) == expected, "lastComponent(\(p))") }
        let joins: [(String, String, String)] = [("a", "b", "a/b"), ("a/", "b", "a/b"), ("", "b", "b"), ("/", "b", "/b"), ("a", "/b", "a/b"), (".", "c", "./c")]
        for (f, n, expected) in joins { #expect(Paths.join(f, n) == expected, "join(\(f), \(n))") }
    }
}

@Suite struct GeometryBoundsTests {
    /// A 4×4×4 grid with `affine` rows (3 of 4), as a header sets it.
    static func grid(_ rows: [[Double]], shape: [Int] = [4, 4, 4]) -> VoxelGrid {
        VoxelGrid(shape: shape, affine: Affine(rows + [[0, 0, 0, 1]]))
    }

    @Test func implausibleVoxelSizesAndCoordinatesAreRefusedNamingTheAxis() throws {
        // xyzt_units = metres on mm values: 1000 mm voxels, refused naming the unit.
        var h = NIfTIHeader(shape: [4, 4, 4])
        h.xyztUnits = 1
        let metres = VoxelGrid(shape: h.shape, affine: h.affine)
        let m = refusal { try metres.checkGeometry(path: "m.nii", header: h) }
        #expect(m.contains("m.nii") && m.contains("axis i is 1000 mm") && m.contains("xyzt_units says metres"), "\(m)")
        // Voxels below 1 µm (a median of these rounded to 0 and trapped in PreprocessingPlan).
        let tiny = refusal { try Self.grid([[4e-5, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]).checkGeometry(path: "t.nii") }
        #expect(tiny.contains("axis i is 4e-05 mm") && tiny.contains("from 0.001 to 100 mm"), "\(tiny)")
        // sform entries near 9.2e18: refused (they trapped converting Double to Int in reorientedToRAS).
        let far = refusal { try Self.grid([[9.2e18, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]).checkGeometry(path: "f.nii") }
        #expect(far.contains("axis i is 9.2e+18 mm"), "\(far)")
        let origin = refusal { try Self.grid([[1, 0, 0, 9.2e18], [0, 1, 0, 0], [0, 0, 1, 0]]).checkGeometry(path: "o.nii") }
        #expect(origin.contains("x = 9.2e+18 mm"), "\(origin)")
        let singular = refusal { try Self.grid([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0]]).checkGeometry(path: "s.nii") }
        #expect(singular.contains("singular"), "\(singular)")
        // What a scan looks like passes: oblique 0.7 mm, 5 mm slices, origin 200 mm off.
        try Self.grid([[0.7, 0.1, 0, -200], [-0.1, 0.7, 0, 120], [0, 0, 5, 30]]).checkGeometry(path: "ok.nii")
    }

    @Test func theResampledGridIsBoundedBeforeAllocationNamingAxisAndSpacing() throws {
        // 30 mm voxels resampled to 0.05 mm: 600 voxels per source voxel along each axis, 1.4e10 in all.
        let big = Self.grid([[30, 0, 0, 0], [0, 30, 0, 0], [0, 0, 30, 0]])
        let m = refusal { _ = try big.checkedRASGrid(spacing: [0.05, 0.05, 0.05], path: "big.nii") }
        #expect(m.contains("big.nii") && m.contains("2400 x 2400 x 2400") && m.contains("over the cap of \(GeometryLimits.gridVoxels)")
                && m.contains("4 voxels of 30 mm, resampled to 0.05 mm") && m.contains("--spacing"), "\(m)")
        #expect(throws: VolumeGeometryError.self) { _ = try big.checkedRASGrid(spacing: [0.05, 0.05, 0.05], path: "big.nii") }
        // At the plan's spacing it is the grid reorientedToRAS makes.
        let ok = try big.checkedRASGrid(spacing: [10, 10, 10], path: "ok.nii")
        #expect(ok == big.reorientedToRAS(spacing: [10, 10, 10]) && ok.shape == [12, 12, 12])
    }

    @Test func preparationRefusesWhatTheChecksRefuseAndTheSameDatasetFailsInCheckAndTraining() throws {
        // A dataset whose second case has 100 mm voxels on a 16³ grid: plausible alone, but resampled
        // to the median spacing (2, 1, 1) mm its grid is over the cap. `checkedPlan` (what datasets
        // check and train both call) refuses it, and so does preparation, before allocating.
        let d = try TinyDataset("geometry-bounds")
        let h = NIfTIHeader(shape: [16, 16, 16], spacing: [100, 100, 100])
        let image = Tensor(shape: [16, 16, 16], values: (0..<4096).map { Float($0 % 50 + 1) })
        for c in 0..<2 { try TinyDataset.writeVolume(image, h, d.path("imagesTr/c2_000\(c).nii.gz")) }
        try TinyDataset.writeVolume(Tensor(shape: [16, 16, 16]), h, d.path("labelsTr/c2.nii.gz"), datatype: .uint8)
        let folder = try DatasetFolder(d.root.path)
        let fingerprint = try DatasetFingerprint(folder: folder)
        let m = refusal { _ = try fingerprint.checkedPlan() }
        #expect(m.contains("c2_0000.nii.gz") && m.contains("800 x 1600 x 1600") && m.contains("over the cap") && m.contains("100 mm"), "\(m)")
        let plan = PreprocessingPlan(fingerprint: fingerprint)
        let c2 = folder.training.first { $0.id == "c2" }!
        let p = refusal { _ = try folder.prepare([c2], plan: plan) }
        #expect(p.components(separatedBy: "; check")[0] == m.components(separatedBy: "; check")[0], "\(p)\n\(m)")
        let r = try FlipoutCLI.run(["datasets", "check", d.root.path])
        #expect(r.status == 64 && r.stderr.contains("over the cap") && !r.stderr.contains("Fatal"), "\(r.status) \(r.stderr)")
    }

    @Test func aPlanDecodedFromACheckpointKeepsTheRulesItsInitializerTrapsOn() throws {
        let good = PreprocessingPlan(spacing: [1, 1, 2], channelNames: ["T1"], channels: [.zScore(mean: 1, std: 2)], labels: ["background": 0, "a": 1], classCount: 2)
        #expect(PreprocessingPlan(jsonString: good.jsonString()) == good)
        func edited(_ key: String, _ value: Any) throws -> String {
            var o = try #require(try JSONSerialization.jsonObject(with: Data(good.jsonString().utf8)) as? [String: Any])
            o[key] = value
            return String(decoding: try JSONSerialization.data(withJSONObject: o), as: UTF8.self)
        }
        for bad in [try edited("spacing", [0, 1, 2]), try edited("spacing", [1, 2]), try edited("spacing", [1e-9, 1, 1]), try edited("channelNames", [String]())] {
            #expect(PreprocessingPlan(jsonString: bad) == nil, "\(bad)")
        }
        #expect(PreprocessingPlan(jsonString: try edited("classCount", 2)) == good)
    }

    @Test func extremeFiniteIntensitiesNormaliseToFiniteValues() {
        let v = Tensor(shape: [1, 1, 4], values: [3.4e38, -3.4e38, 1e-39, 0])
        ChannelNormalization.zScore(mean: -3e38, std: 1e-3).apply(to: v)
        let finite = v.buffer.allSatisfy { $0.isFinite }
        #expect(finite && v.buffer.max() == Float(ChannelNormalization.zLimit), "\(v.array)")
    }
}

@Suite struct NIfTIOutputTests {
    @Test func aQuaternionOfNormAboveOneIsRefusedAsNibabelDoes() throws {
        // nibabel refuses b²+c²+d² > 1 beyond 3 float32 ulps; within them it takes a = 0.
        for (q, accepted) in [([Float(0.8), 0.6, 0.1], false), ([0.6, 0.8, 0], true), ([0.5774, 0.5774, 0.5774], false), ([0.57735, 0.57735, 0.57735], true)] {
            let m = niftiRefusal(try niftiBytes { b in setI16(&b, 252, 1); setF32(&b, 256, q[0]); setF32(&b, 260, q[1]); setF32(&b, 264, q[2]) })
            #expect((m == "accepted") == accepted, "\(q): \(m)")
            if !accepted { #expect(m.contains("quatern_b/c/d") && m.contains("b²+c²+d²"), "\(m)") }
        }
    }

    @Test func anUnusedQformThatIsNotARotationIsWrittenAsTheIdentity() throws {
        var h = NIfTIHeader(shape: [2, 2, 2])
        h.qformCode = 0; h.quaternB = 0.9; h.quaternC = 0.9; h.quaternD = 0.9
        let path = NSTemporaryDirectory() + "unused-qform-\(UUID().uuidString).nii"
        defer { unlink(path) }
        try NIfTI.write(Tensor(shape: [2, 2, 2]), header: h, to: path)
        let back = try NIfTI.readHeader(path)
        #expect(back.quaternB == 0 && back.quaternC == 0 && back.quaternD == 0 && back.sformMatrix == h.sformMatrix)
        // A valid unused qform is kept verbatim.
        h.quaternB = 0.6; h.quaternC = 0.8; h.quaternD = 0
        try NIfTI.write(Tensor(shape: [2, 2, 2]), header: h, to: path)
        #expect(try NIfTI.readHeader(path).quaternB == 0.6)
    }

    @Test func theGzipTrailerIsChecked() throws {
        let gz = try gzipped(try niftiBytes())
        #expect(try NIfTI.decode(gz, path: "ok.nii.gz").data.count == 64)
        var crc = gz; crc[crc.count - 8] ^= 0xFF
        #expect(niftiRefusal(crc).contains("incorrect data check"), "\(niftiRefusal(crc))")
        var length = gz; length[length.count - 4] ^= 0x01
        #expect(niftiRefusal(length).contains("incorrect length check"), "\(niftiRefusal(length))")
        let cut = Array(gz.dropLast(6))
        #expect(niftiRefusal(cut).contains("ends early"), "\(niftiRefusal(cut))")
        // More than maxGzipSlack bytes beyond what the header needs: refused without inflating them all.
        let bomb = try gzipped(try niftiBytes() + [UInt8](repeating: 0, count: NIfTI.maxGzipSlack + (1 << 20)))
        #expect(niftiRefusal(bomb).contains("more than \(NIfTI.maxGzipSlack) bytes beyond"), "\(niftiRefusal(bomb))")
    }
}

@Suite struct PNGExtremeRangeTests {
    /// The gray level of the axial view's first pixel of panel 0 and the brightest one.
    @Test func previewsTakeAnyFiniteRange() {
        // Wider than Float's largest value, narrower than its smallest normal, denormal only, and one value.
        for values: [Float] in [[3.4e38, -3.4e38], [0, 1e-40], [1e-45, 2e-45], [7, 7], [-Float.greatestFiniteMagnitude, .greatestFiniteMagnitude]] {
            let v = Tensor(shape: [2, 2, 2], values: (0..<8).map { values[$0 % 2] })
            let image = PNGPreview.render([PNGPreview.Panel(v), PNGPreview.Panel(v, colormap: .hot)])
            let levels = Set(stride(from: 0, to: image.pixels.count, by: 3).map { image.pixels[$0] })
            #expect(values[0] == values[1] || levels.contains(255), "\(values): levels \(levels.sorted())")
        }
        // A range given with infinite bounds draws black instead of trapping.
        let v = Tensor(shape: [2, 2, 2], values: [1, 2, 3, 4, 5, 6, 7, 8])
        _ = PNGPreview.render([PNGPreview.Panel(v, range: -Float.infinity...Float.infinity)])
    }

    @Test func aVeryLongAxisIsSubsampledSoThePreviewStaysSmall() {
        let v = Tensor(shape: [1, 2, 20_000]) // (D, H, W): 20 000 voxels along W
        let image = PNGPreview.render([PNGPreview.Panel(v)])
        #expect(image.width <= PNGPreview.maxEdge + 4 && image.height <= 3 * PNGPreview.maxEdge + 8, "\(image.width) x \(image.height)")
    }
}

