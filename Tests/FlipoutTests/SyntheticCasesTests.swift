// SyntheticCases: determinism per (seed, index), geometry (RAS affine, spacing, shape), class fractions and per-channel contrast.
import Testing
import Flipout3D

@Test func syntheticCasesArePureFunctionsOfSeedAndIndex() {
    let a = SyntheticCases(seed: 3, count: 4), b = SyntheticCases(seed: 3, count: 4)
    let c1 = a.case(2), c2 = b.case(2)
    #expect(c1.id == "synth_002")
    #expect(c1.image.array == c2.image.array && c1.label.array == c2.label.array && c1.spacing == c2.spacing)
    for other in [a.case(1), SyntheticCases(seed: 4).case(2)] {
        #expect(other.image.array != c1.image.array)
    }
    #expect(a.all().map(\.id) == ["synth_000", "synth_001", "synth_002", "synth_003"])
}

@Test func syntheticCasesSitOnRASGridsCoveringTheFieldOfView() {
    let g = SyntheticCases(seed: 1, count: 6)
    var spacings = Set<[Double]>()
    for c in g.all() {
        let s = c.spacing
        spacings.insert(s)
        #expect(s.allSatisfy { g.spacingRange.contains($0) })
        #expect(c.image.shape.count == 4 && c.image.shape[0] == 2)
        let shape = Array(c.image.shape.dropFirst())
        #expect(c.label.shape == [1] + shape)
        // NIfTI convention: column 0 is i (W, x), column 2 is k (D, z); diagonal positive = RAS.
        #expect(c.affine[0][0] == s[2] && c.affine[1][1] == s[1] && c.affine[2][2] == s[0])
        for axis in 0..<3 {
            let extent = Double(shape[axis]) * s[axis]
            #expect(abs(extent - g.fieldOfView[axis]) <= s[axis], "axis \(axis) covers \(extent) mm")
            // Voxel centres are symmetric about the world origin.
            let row = 2 - axis
            let first = c.affine[row][3], last = first + Double(shape[axis] - 1) * s[axis]
            #expect(abs(first + last) < 1e-9)
        }
    }
    #expect(spacings.count == 6, "spacing should vary between cases")
}

@Test func syntheticCasesNeedBothChannelsToTellTheClassesApart() {
    let g = SyntheticCases(seed: 5, count: 8)
    var sums = [[Double]](repeating: [0, 0, 0], count: 2), counts = [Double](repeating: 0, count: 3)
    for c in g.all() {
        let n = c.label.count
        let classes = Set(c.label.array)
        #expect(classes == [0, 1, 2], "case \(c.id) holds classes \(classes)")
        for v in 0..<n {
            let k = Int(c.label.data[v]); counts[k] += 1
            for ch in 0..<2 { sums[ch][k] += Double(c.image.data[ch * n + v]) }
        }
    }
    let total = counts.reduce(0, +)
    // Each structure is a few percent of the volume, not empty, not dominant.
    for k in 1...2 { #expect(counts[k] / total > 0.01 && counts[k] / total < 0.3, "class \(k) fraction \(counts[k] / total)") }
    let mean = (0..<2).map { ch in (0..<3).map { sums[ch][$0] / counts[$0] } }
    // Channel 0: A and B equally bright above background. Channel 1: only B stands out.
    #expect(mean[0][1] > mean[0][0] + 100 && mean[0][2] > mean[0][0] + 100 && abs(mean[0][1] - mean[0][2]) < 30)
    #expect(mean[1][2] > mean[1][0] + 90 && abs(mean[1][1] - mean[1][0]) < 25)
}
