// Patch sampler: bit-reproducible draws per (seed, step), the foreground fraction, foreground centring, padding of small volumes, crop contents.
import Testing
import TestSupport
import Flipout3D

/// A prepared case whose voxel values are their own flat index, with one small class-2 cube.
private func indexCase(_ shape: [Int], id: String = "c") -> PreparedCase {
    let v = shape.reduce(1, *)
    let image = Tensor(shape: [1] + shape, values: (0..<v).map(Float.init))
    let label = Tensor(shape: [1] + shape)
    for z in 2..<4 { for y in 3..<5 { for x in 1..<3 where z < shape[0] && y < shape[1] && x < shape[2] { label[(z * shape[1] + y) * shape[2] + x] = 2 } } }
    let a = Affine.identity
    return PreparedCase(id: id, image: image, label: label, geometry: CaseGeometry(sourceShape: shape, sourceAffine: a, preparedShape: shape, preparedAffine: a))
}

@Test func patchDrawsArePureFunctionsOfSeedAndStep() {
    let cases = [indexCase([12, 10, 9]), indexCase([8, 16, 8])]
    let s = PatchSampler(cases: cases, patchSize: [4, 4, 4], classCount: 3, seed: 5)
    let again = PatchSampler(cases: cases, patchSize: [4, 4, 4], classCount: 3, seed: 5)
    #expect(s.draws(step: 3, caseIndices: [0, 1, 1]) == again.draws(step: 3, caseIndices: [0, 1, 1]))
    #expect(s.batch(s.draws(step: 3, caseIndices: [0, 1])).x.array == again.batch(again.draws(step: 3, caseIndices: [0, 1])).x.array)
    #expect(s.draws(step: 3, caseIndices: [0, 0, 0, 0]) != s.draws(step: 4, caseIndices: [0, 0, 0, 0]))
    #expect(PatchSampler(cases: cases, patchSize: [4, 4, 4], classCount: 3, seed: 6).draws(step: 3, caseIndices: [0, 0, 0, 0]) != s.draws(step: 3, caseIndices: [0, 0, 0, 0]))
}

@Test func aThirdOfPatchesAreCentredOnForeground() {
    let c = indexCase([12, 12, 12])
    let s = PatchSampler(cases: [c], patchSize: [4, 4, 4], classCount: 3, seed: 1)
    var centred = 0, total = 0
    for step in 0..<600 {
        for d in s.draws(step: step, caseIndices: [0, 0]) {
            total += 1
            #expect((0..<3).allSatisfy { d.start[$0] >= 0 && d.start[$0] + 4 <= 12 })
            if d.foregroundCentred {
                centred += 1
                // The class-2 cube [2,4)×[3,5)×[1,3) is where the patch centre (start + 2) falls.
                #expect((2...3).contains(d.start[0] + 2) && (3...4).contains(d.start[1] + 2) && (1...2).contains(d.start[2] + 2) || d.start[2] == 0,
                        "foreground patch at \(d.start)")
                let y = s.batch([d]).y
                #expect(y.array.contains(2), "a foreground-centred patch must hold foreground")
            }
        }
    }
    let fraction = Double(centred) / Double(total)
    #expect(abs(fraction - PatchSampler.foregroundFraction) < 0.04, "foreground fraction \(fraction)")
}

@Test func patchesCopyTheVolumeAndPadWhereItIsSmaller() {
    let c = indexCase([3, 6, 5])
    let s = PatchSampler(cases: [c], patchSize: [4, 4, 8], classCount: 3, seed: 2)
    for step in 0..<20 {
        let d = s.draws(step: step, caseIndices: [0])[0]
        // Axes smaller than the patch start at or below 0 and cover the whole axis.
        #expect(d.start[0] <= 0 && d.start[0] >= -1 && d.start[2] <= 0 && d.start[2] >= -3 && d.start[1] >= 0 && d.start[1] <= 2)
        let x = s.batch([d]).x
        for z in 0..<4 { for y in 0..<4 { for xx in 0..<8 {
            let (sz, sy, sx) = (d.start[0] + z, d.start[1] + y, d.start[2] + xx)
            let inside = sz >= 0 && sz < 3 && sy >= 0 && sy < 6 && sx >= 0 && sx < 5
            let expected: Float = inside ? Float((sz * 6 + sy) * 5 + sx) : 0
            #expect(x.data[(z * 4 + y) * 8 + xx] == expected)
        } } }
    }
}
