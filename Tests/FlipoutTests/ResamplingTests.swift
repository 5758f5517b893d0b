// Reorientation to RAS and resampling, and back, checked against voxel centres mapped through the
// NIfTI srow definition in Double by the test itself (not through Affine or Resample).
import Testing
import Foundation
import Flipout3D
import TestSupport

/// Dice of label `k` between two label arrays of equal length.
func dice(_ a: [Float], _ b: [Float], label k: Float) -> Double {
    var inter = 0, na = 0, nb = 0
    for i in a.indices {
        let x = a[i] == k, y = b[i] == k
        if x { na += 1 }; if y { nb += 1 }; if x && y { inter += 1 }
    }
    return na + nb == 0 ? 1 : 2 * Double(inter) / Double(na + nb)
}

/// A 2×2×3 mm LPS grid: i runs to the Left, j to Posterior, k to Superior (srow written out by
/// hand, NIfTI: x = srow_x · (i, j, k, 1)). (D, H, W) = (nz, ny, nx) = (14, 22, 20).
private struct LPSCase {
    static let (nx, ny, nz) = (20, 22, 14)
    static let srow: [[Double]] = [[-2, 0, 0, 19], [0, -2, 0, 23], [0, 0, 3, -17]]
    /// Three ellipsoids in world mm (labels 1, 2, 3; later ones overwrite).
    static func labelAt(x: Double, y: Double, z: Double) -> Float {
        func inside(_ c: (Double, Double, Double), _ r: (Double, Double, Double)) -> Bool {
            let a = (x - c.0) / r.0, b = (y - c.1) / r.1, d = (z - c.2) / r.2
            return a * a + b * b + d * d <= 1
        }
        var l: Float = 0
        if inside((-2, 1, 0), (12, 14, 14)) { l = 1 }
        if inside((4, -3, 3), (6, 5, 8)) { l = 2 }
        if inside((-8, 8, -6), (5, 6, 9)) { l = 3 }
        return l
    }
    static func world(_ i: Int, _ j: Int, _ k: Int) -> (Double, Double, Double) {
        let v = [Double(i), Double(j), Double(k), 1]
        func row(_ r: [Double]) -> Double { r[0] * v[0] + r[1] * v[1] + r[2] * v[2] + r[3] * v[3] }
        return (row(srow[0]), row(srow[1]), row(srow[2]))
    }
    static func header() -> NIfTIHeader {
        var h = NIfTIHeader(shape: [nz, ny, nx])
        h.srowX = srow[0].map(Float.init); h.srowY = srow[1].map(Float.init); h.srowZ = srow[2].map(Float.init)
        h.sformCode = 1
        h.setQformFromSform()
        return h
    }
    /// label and image (the image is the world x coordinate, a linear field) on the source grid.
    static func volumes() -> (label: Tensor, image: Tensor) {
        let label = Tensor(shape: [nz, ny, nx]), image = Tensor(shape: [nz, ny, nx])
        for k in 0..<nz { for j in 0..<ny { for i in 0..<nx {
            let w = world(i, j, k)
            label.data[(k * ny + j) * nx + i] = labelAt(x: w.0, y: w.1, z: w.2)
            image.data[(k * ny + j) * nx + i] = Float(w.0)
        } } }
        return (label, image)
    }
}

@Test func lpsLabelMapTo1mmRASAndBackKeepsEveryLabel() throws {
    let dir = try Fixtures.temporaryDirectory("resample-lps")
    defer { try? FileManager.default.removeItem(at: dir) }
    let (label, image) = LPSCase.volumes()
    let labelValues = label.array
    let h = LPSCase.header()
    try NIfTI.write(label, header: h, datatype: .uint8, to: dir.appendingPathComponent("label.nii.gz").path)
    try NIfTI.write(image, header: h, datatype: .float32, to: dir.appendingPathComponent("image.nii.gz").path)
    let l = try NIfTI.read(dir.appendingPathComponent("label.nii.gz").path)
    let x = try NIfTI.read(dir.appendingPathComponent("image.nii.gz").path)
    #expect(AxisOrientation(l.header.affine).description == "LPS")

    let plan = PreprocessingPlan(spacing: [1, 1, 1], channelNames: ["T1"], channels: [.zScore(mean: 0, std: 1)],
                                 labels: ["background": 0, "a": 1, "b": 2, "c": 3], classCount: 4)
    let p = try plan.prepare(id: "lps", images: [x], label: l)
    let g = p.geometry
    // The prepared grid: 1 mm, axes along +x, +y, +z, the source field of view (20·2, 22·2, 14·3 mm).
    #expect(g.preparedShape == [42, 44, 40])
    let a = g.preparedAffine.m
    for r in 0..<3 { for c in 0..<3 { #expect(abs(a[r][c] - (r == c ? 1 : 0)) < 1e-9, "prepared affine \(a)") } }
    let origin = (a[0][3], a[1][3], a[2][3])
    // Same centre as the source: source centre voxel ((nx-1)/2, (ny-1)/2, (nz-1)/2) mapped by srow.
    let srcCentre = (LPSCase.srow[0][0] * 9.5 + LPSCase.srow[0][3], LPSCase.srow[1][1] * 10.5 + LPSCase.srow[1][3], LPSCase.srow[2][2] * 6.5 + LPSCase.srow[2][3])
    #expect(abs(origin.0 + 19.5 - srcCentre.0) < 1e-9 && abs(origin.1 + 21.5 - srcCentre.1) < 1e-9 && abs(origin.2 + 20.5 - srcCentre.2) < 1e-9)

    // Independent reference on the prepared grid: the world point of each prepared voxel, inverted
    // through srow by hand (i = (x - 19) / -2, j = (y - 23) / -2, k = (z + 17) / 3); there each
    // class's share of the trilinear weights of the 8 surrounding source voxels (index clamped to
    // the grid, as within half a voxel of its edge), the largest share wins, a tie to the larger
    // class (nnU-Net's one-hot resampling of segmentations); beyond half a voxel, background.
    let (W, H, D) = (g.preparedShape[2], g.preparedShape[1], g.preparedShape[0])
    var reference = [Float](repeating: 0, count: D * H * W)
    var linearError = 0.0
    let lab = p.label!.array, img = p.image.array
    for k in 0..<D { for j in 0..<H { for i in 0..<W {
        let wx = origin.0 + Double(i), wy = origin.1 + Double(j), wz = origin.2 + Double(k)
        let si = (wx - 19) / -2, sj = (wy - 23) / -2, sk = (wz + 17) / 3
        let n = (k * H + j) * W + i
        let inGrid = si >= -0.5 && sj >= -0.5 && sk >= -0.5 && si <= Double(LPSCase.nx) - 0.5 && sj <= Double(LPSCase.ny) - 0.5 && sk <= Double(LPSCase.nz) - 0.5
        if inGrid {
            let ci = min(max(si, 0), Double(LPSCase.nx - 1)), cj = min(max(sj, 0), Double(LPSCase.ny - 1)), ck = min(max(sk, 0), Double(LPSCase.nz - 1))
            let i0 = Int(ci.rounded(.down)), j0 = Int(cj.rounded(.down)), k0 = Int(ck.rounded(.down))
            var share = [Double](repeating: 0, count: 4)
            for dk in 0...1 { for dj in 0...1 { for di in 0...1 {
                let w = (di == 0 ? 1 - (ci - Double(i0)) : ci - Double(i0)) * (dj == 0 ? 1 - (cj - Double(j0)) : cj - Double(j0))
                    * (dk == 0 ? 1 - (ck - Double(k0)) : ck - Double(k0))
                let (ii, jj, kk) = (min(i0 + di, LPSCase.nx - 1), min(j0 + dj, LPSCase.ny - 1), min(k0 + dk, LPSCase.nz - 1))
                share[Int(labelValues[(kk * LPSCase.ny + jj) * LPSCase.nx + ii])] += w
            } } }
            var best = 0
            for c in 1..<4 where share[c] >= share[best] - 1e-6 { best = c }
            reference[n] = Float(best)
        }
        // Trilinear interpolation reproduces a linear field exactly inside the source grid.
        if si >= 0 && si <= Double(LPSCase.nx - 1) && sj >= 0 && sj <= Double(LPSCase.ny - 1) && sk >= 0 && sk <= Double(LPSCase.nz - 1) {
            linearError = max(linearError, abs(Double(img[n]) - wx))
        }
    } } }
    #expect(linearError < 1e-3, "trilinear error on a linear field \(linearError)")
    for k: Float in [1, 2, 3] {
        #expect(dice(lab, reference, label: k) >= 0.99, "prepared label \(k) vs the srow reference: \(dice(lab, reference, label: k))")
        // And against the analytic shapes at the prepared voxel centres (resolution-limited).
        #expect(lab.contains(k))
    }

    // Back onto the source grid and affine: nearest on the label, and linear on one-hot maps then argmax.
    let back = plan.restore(p.label!, to: g, interpolation: .nearest)
    #expect(back.shape == [1, LPSCase.nz, LPSCase.ny, LPSCase.nx])
    let oneHot = Tensor(shape: [4] + g.preparedShape)
    let plane = g.preparedShape.reduce(1, *)
    withExtendedLifetime(oneHot) { for v in 0..<plane { oneHot.data[Int(lab[v]) * plane + v] = 1 } }
    let probs = plan.restore(oneHot, to: g, interpolation: .linear)
    let srcPlane = label.count
    let p4 = probs.array
    let argmax: [Float] = (0..<srcPlane).map { v in Float((0..<4).max { p4[$0 * srcPlane + v] < p4[$1 * srcPlane + v] }!) }
    for k: Float in [1, 2, 3] {
        let dn = dice(back.array, label.array, label: k), dl = dice(argmax, label.array, label: k)
        #expect(dn >= 0.99, "label \(k) after the round trip (nearest): Dice \(dn)")
        #expect(dl >= 0.99, "label \(k) after the round trip (linear one-hot, argmax): Dice \(dl)")
    }
}

@Test func affineFollowsTheNIfTIRules() throws {
    // sform_code > 0: the sform, whatever the qform says.
    var h = NIfTIHeader(shape: [4, 5, 6], spacing: [1, 2, 3], origin: [10, 20, 30])
    h.quaternB = 1; h.quaternC = 0; h.quaternD = 0 // a qform rotated 180° about x
    #expect(h.affine.m == [[1, 0, 0, 10], [0, 2, 0, 20], [0, 0, 3, 30], [0, 0, 0, 1]])
    // sform_code 0, qform_code > 0: the qform (here 180° about x: j -> -y, k -> -z).
    h.sformCode = 0
    h.srowX = [9, 9, 9, 9]
    let q = h.affine.m
    let expected: [[Double]] = [[1, 0, 0, 10], [0, -2, 0, 20], [0, 0, -3, 30], [0, 0, 0, 1]]
    for r in 0..<4 { for c in 0..<4 { #expect(abs(q[r][c] - expected[r][c]) < 1e-6, "qform affine \(q)") } }
    #expect(AxisOrientation(h.affine).description == "RPI")
    // Neither: pixdim scaling only.
    h.qformCode = 0
    #expect(h.affine.m == [[1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 3, 0], [0, 0, 0, 1]])
    // A permuted, flipped sform: voxel i runs to Anterior, j to Inferior, k to Left ("AIL").
    let perm = Affine([[0, 0, -1.5, 0], [2, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]])
    #expect(AxisOrientation(perm).description == "AIL")
    #expect(perm.inverse.concatenating(perm).isClose(to: .identity, tolerance: 1e-12))
}

@Test func reorientationOfAPermutedGridIsAPureIndexPermutation() throws {
    // Grid "AIL" with unit spacing: reorienting to RAS at its own spacing moves voxels without
    // interpolating; each value lands at the voxel whose world point is the same.
    let shape = [5, 4, 3] // (D, H, W) = (nk, nj, ni)
    let affine = Affine([[0, 0, -1, 7], [1, 0, 0, -2], [0, -1, 0, 4], [0, 0, 0, 1]])
    let source = VoxelGrid(shape: shape, affine: affine)
    let values = Tensor(shape: shape, values: (0..<60).map(Float.init))
    let target = source.reorientedToRAS(spacing: [1, 1, 1])
    #expect(target.shape == [4, 3, 5]) // S from j (4), A from i (3), R from k (5)
    let out = Resample.resample(values, from: source, to: target, interpolation: .linear).array
    #expect(out.sorted() == values.array) // a permutation: every value once, none blended
    // Voxel (i, j, k) of the source sits at world (7 - k, i - 2, 4 - j) (srow by hand).
    let t = target.affine.m
    for k in 0..<5 { for j in 0..<4 { for i in 0..<3 {
        let w = (7.0 - Double(k), Double(i) - 2, 4.0 - Double(j))
        let ti = Int((w.0 - t[0][3]).rounded()), tj = Int((w.1 - t[1][3]).rounded()), tk = Int((w.2 - t[2][3]).rounded())
        #expect(out[(tk * 3 + tj) * 5 + ti] == Float((k * 4 + j) * 3 + i))
    } } }
}

@Test func obliqueGridKeepsItsRotationAndRoundTrips() throws {
    // LPS axes rotated 20° about z, 2×2×3 mm: the prepared grid keeps the rotation (MONAI's
    // Orientationd + Spacingd), runs closest to R, A, S, has 1 mm columns, and maps back exactly.
    let t = 20.0 * Double.pi / 180, (c, s) = (cos(t), sin(t))
    let rot: [[Double]] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    let flipScale = [-2.0, -2.0, 3.0] // LPS, 2×2×3 mm
    var m = (0..<3).map { r in (0..<3).map { k in rot[r][k] * flipScale[k] } + [Double([7, -5, 11][r])] }
    m.append([0, 0, 0, 1])
    let source = VoxelGrid(shape: [12, 16, 14], affine: Affine(m))
    let n = source.shape.reduce(1, *)
    // Labels from ellipsoids at the voxel centres' world points (affine applied by hand).
    let label = Tensor(shape: source.shape, values: (0..<n).map { v in
        let (i, j, k) = (Double(v % 14), Double(v / 14 % 16), Double(v / (14 * 16)))
        let w = (0..<3).map { r in m[r][0] * i + m[r][1] * j + m[r][2] * k + m[r][3] }
        let a = pow((w[0] - 5) / 9, 2) + pow((w[1] + 8) / 8, 2) + pow((w[2] - 25) / 10, 2)
        let b = pow((w[0] + 3) / 5, 2) + pow((w[1] + 16) / 4, 2) + pow((w[2] - 18) / 7, 2)
        return b <= 1 ? 2 : a <= 1 ? 1 : 0
    })
    let target = source.reorientedToRAS(spacing: [1, 1, 1])
    let p = target.affine.m
    #expect(AxisOrientation(target.affine).description == "RAS")
    for a in 0..<3 { for b in 0..<3 {
        let dot = (0..<3).reduce(0.0) { $0 + p[$1][a] * p[$1][b] }
        #expect(abs(dot - (a == b ? 1 : 0)) < 1e-9, "prepared columns \(a), \(b): \(dot)")
    } }
    // Its first column is the source i direction (towards L, rotated) negated: (cos 20°, sin 20°, 0).
    #expect(abs(p[0][0] - c) < 1e-9 && abs(p[1][0] - s) < 1e-9)
    let there = Resample.resample(label, from: source, to: target, interpolation: .nearest)
    let back = Resample.resample(there, from: target, to: source, interpolation: .nearest).array
    for k: Float in [1, 2] {
        #expect(label.array.contains(k))
        #expect(dice(back, label.array, label: k) >= 0.99, "oblique label \(k): \(dice(back, label.array, label: k))")
    }
}
