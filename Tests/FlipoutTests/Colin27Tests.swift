// Colin27: 2 mm resampling, head z-score, hemispheres and patches, against numbers from an independent Python script.
import Testing
import Flipout3D

private let installed = FileIO.exists(Colin27.defaultDirectory + "/ch2.nii.gz") && FileIO.exists(Colin27.defaultDirectory + "/ch2bet.nii.gz")

@Test(.enabled(if: installed, "mricron-data not installed"))
func colin27ResamplesTo2mm() throws {
    let c = try Colin27()
    #expect(c.shape == [90, 108, 90]) // 181×217×181 cropped to even, halved; (D, H, W) = (nz, ny, nx)
    #expect(c.header.dim == [3, 90, 108, 90, 1, 1, 1, 1] && c.header.spacing == [2, 2, 2])
    // Voxel 0 of the 2 mm grid is the mean of 1 mm voxels 0 and 1 along each axis.
    #expect(c.header.srowX == [2, 0, 0, -89.5] && c.header.srowY == [0, 2, 0, -124.5] && c.header.srowZ == [0, 0, 2, -70.5])
    #expect(c.header.sformCode == 4 && c.header.qformCode == 4)
    for (q, s) in zip(c.header.qformMatrix, c.header.sformMatrix) { for k in 0..<4 { #expect(abs(q[k] - s[k]) < 1e-5) } }
    // From a pure-Python pass over the uint8 voxels (majority >= 4 of 8 for masks, head mean/sd of
    // block means): 219745 brain voxels, 520860 head voxels, mean 76.01921, sd 35.43131.
    #expect(c.brain.array.filter { $0 == 1 }.count == 219_745)
    #expect(c.head.array.filter { $0 == 1 }.count == 520_860)
    #expect(abs(c.headMean - 76.01921) < 1e-3 && abs(c.headStd - 35.43131) < 1e-3)
    var s = 0.0, s2 = 0.0, n = 0.0
    for i in 0..<c.image.count where c.head.data[i] == 1 { s += Double(c.image.data[i]); s2 += Double(c.image.data[i] * c.image.data[i]); n += 1 }
    #expect(abs(s / n) < 1e-4 && abs(s2 / n - 1) < 1e-3)
    let full = c.fullVolume
    #expect(full.image.shape == [1, 1, 90, 108, 90] && full.label.shape == [1, 1, 90, 108, 90])
}

@Test(.enabled(if: installed, "mricron-data not installed"))
func colin27HemispheresAndPatches() throws {
    let c = try Colin27()
    #expect(c.columns(.left) == 0..<45 && c.columns(.right) == 45..<90) // srow_x[0] > 0: low i is left
    let right = c.hemisphere(.right, multipleOf: 4)
    #expect(right.image.shape == [1, 1, 88, 108, 44] && right.origin == [1, 0, 45])
    #expect(c.hemisphere(.left, multipleOf: 4).origin == [1, 0, 1])
    // The crop's first row is the grid's row at the origin.
    #expect(right.image.data[0] == c.image.data[(1 * 108 + 0) * 90 + 45])

    let a = c.patches(.left, count: 6, size: 32, seed: 5), b = c.patches(.left, count: 6, size: 32, seed: 5)
    #expect(a.x.shape == [6, 1, 32, 32, 32] && a.x.array == b.x.array && a.origins == b.origins)
    #expect(c.patches(.left, count: 6, size: 32, seed: 6).origins != a.origins)
    for (n, o) in a.origins.enumerated() {
        #expect(o[2] >= 0 && o[2] + 32 <= 45, "left patch \(n) at \(o) leaves the left hemisphere")
        // Last voxel of patch n equals the grid voxel at origin + 31.
        let last = a.x.data[n * 32768 + 32767], grid = c.image.data[((o[0] + 31) * 108 + o[1] + 31) * 90 + o[2] + 31]
        #expect(last == grid)
        let brain = (0..<32768).filter { a.y.data[n * 32768 + $0] == 1 }.count
        #expect(brain >= 3277, "patch \(n): \(brain) brain voxels")
    }
    for o in c.patches(.right, count: 4, size: 32, seed: 5).origins { #expect(o[2] >= 45 && o[2] + 32 <= 90) }
}

@Test func colin27MissingDataSaysHowToInstall() {
    do {
        _ = try Colin27(directory: "/nonexistent/templates")
        Issue.record("no error for a missing directory")
    } catch {
        let m = "\(error)"
        #expect(m.contains("/nonexistent/templates/ch2.nii.gz") && m.contains("apt-get install mricron-data") && m.contains("scripts/demo --real"))
    }
}
