// Real data (Debian mricron-data): HarvardOxford and JHU atlases (182×218×182, other origins,
// HarvardOxford stored LAS) resampled onto the Colin27 ch2 grid, and Colin27 + AAL as a dataset.
import Testing
import Foundation
import Flipout3D
import TestSupport

private let templates = Colin27.defaultDirectory
private let installed = ["ch2.nii.gz", "aal.nii.gz", "HarvardOxford-cort-maxprob-thr0-1mm.nii.gz", "JHU-WhiteMatter-labels-1mm.nii.gz"]
    .allSatisfy { FileIO.exists(templates + "/" + $0) }

/// The world point (mm) of voxel (i, j, k) by the NIfTI-1 sform definition, in Double.
private func sformWorld(_ h: NIfTIHeader, _ i: Int, _ j: Int, _ k: Int) -> [Double] {
    [h.srowX, h.srowY, h.srowZ].map { r in Double(r[0]) * Double(i) + Double(r[1]) * Double(j) + Double(r[2]) * Double(k) + Double(r[3]) }
}

@Test(.enabled(if: installed, "mricron-data not installed"),
      arguments: ["HarvardOxford-cort-maxprob-thr0-1mm.nii.gz", "JHU-WhiteMatter-labels-1mm.nii.gz"])
func atlasResampledOntoTheColin27Grid(_ file: String) throws {
    let ch2 = try NIfTI.readHeader(templates + "/ch2.nii.gz")
    let atlas = try NIfTI.read(templates + "/" + file)
    #expect(atlas.header.shape == [182, 218, 182] && ch2.shape == [181, 217, 181])
    let target = VoxelGrid(shape: ch2.shape, affine: ch2.affine)
    let out = Resample.resample(atlas.data, from: VoxelGrid(shape: atlas.header.shape, affine: atlas.header.affine),
                                to: target, interpolation: .nearest)
    // Independent: every ch2 voxel's world point (sform by hand), found in the atlas by solving
    // its diagonal sform by hand (x = s·i + o, so i = (x - o) / s), must carry that atlas voxel's label.
    let a = atlas.header
    let (nx, ny, nz) = (a.nx, a.ny, a.nz)
    var mismatches = 0, outside = 0
    let values = atlas.data.array, resampled = out.array
    for k in 0..<ch2.nz { for j in 0..<ch2.ny { for i in 0..<ch2.nx {
        let w = sformWorld(ch2, i, j, k)
        let ai = (w[0] - Double(a.srowX[3])) / Double(a.srowX[0])
        let aj = (w[1] - Double(a.srowY[3])) / Double(a.srowY[1])
        let ak = (w[2] - Double(a.srowZ[3])) / Double(a.srowZ[2])
        let (ri, rj, rk) = (Int(ai.rounded()), Int(aj.rounded()), Int(ak.rounded()))
        let v = resampled[(k * ch2.ny + j) * ch2.nx + i]
        guard (0..<nx).contains(ri) && (0..<ny).contains(rj) && (0..<nz).contains(rk) else { outside += 1; if v != 0 { mismatches += 1 }; continue }
        if v != values[(rk * ny + rj) * nx + ri] { mismatches += 1 }
    } } }
    #expect(mismatches == 0 && outside == 0, "\(file): \(mismatches) voxels differ, \(outside) outside")
    // Label volumes in mm³ (both grids 1 mm³ voxels): preserved except what falls outside the smaller field of view.
    var before = [Float: Int](), after = [Float: Int]()
    for v in values where v > 0 { before[v, default: 0] += 1 }
    for v in resampled where v > 0 { after[v, default: 0] += 1 }
    #expect(Set(before.keys) == Set(after.keys))
    for (label, n) in before { #expect(abs(Double(after[label] ?? 0) - Double(n)) <= 0.02 * Double(n), "\(file) label \(label): \(n) → \(after[label] ?? 0) mm³") }

    // To 2 mm RAS through the plan (a real resampling; every 2 mm centre falls between 1 mm
    // centres): volumes within 5% for labels of at least 10 cm³ (thin tracts of a few cm³ move by
    // up to 8% under nearest-neighbour subsampling), and the grid's centre where the affine says.
    let plan = PreprocessingPlan(spacing: [2, 2, 2], channelNames: ["T1"], channels: [.zScore(mean: 0, std: 1)],
                                 labels: ["background": 0], classCount: 1)
    let grid = plan.preparedGrid(for: VoxelGrid(shape: a.shape, affine: a.affine))
    #expect(grid.shape == [91, 109, 91])
    let g = grid.affine.m
    #expect(g[0][0] == 2 && g[1][1] == 2 && g[2][2] == 2) // RAS, 2 mm, although HarvardOxford is stored LAS
    // The 2 mm grid's centre is the atlas grid's centre (sform by hand at voxel (181/2, 217/2, 181/2)).
    let centre = sformWorld(a, 0, 0, 0).enumerated().map { r, v in v + [Double(a.srowX[0]), Double(a.srowY[1]), Double(a.srowZ[2])][r] * [181, 217, 181][r] / 2 }
    for r in 0..<3 { #expect(abs(g[r][3] + g[r][r] * Double([90, 108, 90][r]) / 2 - centre[r]) < 1e-6) }
    let coarse = Resample.resample(atlas.data, from: VoxelGrid(shape: a.shape, affine: a.affine), to: grid, interpolation: .nearest)
    var coarseVolume = [Float: Double]()
    for v in coarse.array where v > 0 { coarseVolume[v, default: 0] += 8 }
    var checked = 0
    for (label, n) in before where n >= 10_000 {
        let v = coarseVolume[label] ?? 0
        #expect(abs(v - Double(n)) <= 0.05 * Double(n), "\(file) label \(label) at 2 mm: \(n) → \(v) mm³")
        checked += 1
    }
    #expect(checked >= 3)
}

@Test(.enabled(if: installed, "mricron-data not installed"))
func colin27WithAALIsARealMultiClassDataset() throws {
    let dir = try Fixtures.temporaryDirectory("colin27-aal")
    defer { try? FileManager.default.removeItem(at: dir) }
    let out = dir.appendingPathComponent("colin27").path
    let r = try FlipoutCLI.run(["datasets", "export-colin27", out])
    #expect(r.status == 0, "\(r.stderr)")
    let folder = try DatasetFolder(out)
    #expect(folder.training.map(\.id) == ["colin27"] && folder.classCount == 4 && folder.channelNames == ["T1"])
    let f = try DatasetFingerprint(folder: folder)
    // Class volumes against the AAL file itself, grouped by region index here.
    let aal = try NIfTI.read(templates + "/aal.nii.gz")
    var expected = [0, 0, 0, 0]
    for v in aal.data.array { let r = Int(v); expected[r == 0 ? 0 : (71...78).contains(r) ? 2 : (91...116).contains(r) ? 3 : 1] += 1 }
    #expect(f.classVoxels == expected && expected.allSatisfy { $0 > 10_000 })
    #expect(f.orientations == ["RAS": 1] && f.medianSpacing == [1, 1, 1])
    // Prepared at 2 mm: a 4-class label map whose class volumes stay within 5% (mm³).
    let plan = PreprocessingPlan(fingerprint: f, spacing: [2, 2, 2])
    let c = try folder.prepare(folder.training, plan: plan)[0]
    // Cropped to the head's nonzero box first, then 2 mm: at most the whole grid's 91 × 109 × 91.
    let box = try #require(c.geometry.crop)
    #expect(c.geometry.sourceShape == [181, 217, 181] && box.shape.reduce(1, *) < 181 * 217 * 181)
    #expect(c.image.shape == [1] + box.shape.map { Int((Double($0) / 2).rounded()) })
    var counts = [0, 0, 0, 0]
    for v in c.label!.array { counts[Int(v)] += 1 }
    for k in 1..<4 { #expect(abs(Double(counts[k] * 8) - Double(expected[k])) <= 0.05 * Double(expected[k]), "class \(k): \(expected[k]) → \(counts[k] * 8) mm³") }
}

@Test(.enabled(if: installed, "mricron-data not installed"))
func colin27HemispheresAreCropsWithTheirOwnAffines() throws {
    let dir = try Fixtures.temporaryDirectory("colin27-halves")
    defer { try? FileManager.default.removeItem(at: dir) }
    let out = dir.appendingPathComponent("halves").path
    let r = try FlipoutCLI.run(["datasets", "export-colin27", out, "--hemispheres"])
    #expect(r.status == 0, "\(r.stderr)")
    let folder = try DatasetFolder(out)
    #expect(folder.training.map(\.id) == ["colin27_left"] && folder.test.map(\.id) == ["colin27_right"])
    let ch2Values = try NIfTI.read(templates + "/ch2.nii.gz").data.array
    // ch2: x = i - 90 (sform), so the left half is i 0..<90 (x < 0), the right half i 91...180.
    for (c, first, count) in [(folder.training[0], 0, 90), (folder.test[0], 91, 90)] {
        let half = try NIfTI.read(c.imagePaths[0])
        let halfValues = half.data.array
        #expect(half.header.shape == [181, 217, count])
        #expect(half.header.srowX[3] == Float(first - 90) && half.header.srowY[3] == -125 && half.header.srowZ[3] == -71)
        // Voxel (i, j, k) of the crop is ch2 voxel (i + first, j, k): same value at the same world point.
        for (i, j, k) in [(0, 100, 90), (count - 1, 50, 30), (40, 120, 100)] {
            #expect(halfValues[(k * 217 + j) * count + i] == ch2Values[(k * 217 + j) * 181 + i + first])
        }
        #expect(FileIO.exists(c.labelPath ?? ""))
    }
}
