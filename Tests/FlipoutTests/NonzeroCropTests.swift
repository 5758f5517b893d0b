// nnU-Net's preprocessing: crop to the nonzero region, z-score each image by its own statistics, paste predictions back; against hand-computed values.
import Testing
import Foundation
import Flipout3D
import TestSupport

private func volume(_ shape: [Int], _ values: [Int: Float], spacing: [Float] = [1, 1, 1]) -> NIfTIVolume {
    var v = [Float](repeating: 0, count: shape.reduce(1, *))
    for (i, x) in values { v[i] = x }
    return NIfTIVolume(header: NIfTIHeader(shape: shape, spacing: spacing), data: Tensor(shape: shape, values: v))
}

private func index(_ z: Int, _ y: Int, _ x: Int, _ shape: [Int]) -> Int { (z * shape[1] + y) * shape[2] + x }

private func plan(_ n: ChannelNormalization, cropping: Cropping = .nonzero) -> PreprocessingPlan {
    var p = PreprocessingPlan(spacing: [1, 1, 1], channelNames: ["T1"], channels: [n], labels: ["background": 0, "brain": 1], classCount: 2)
    p.cropping = cropping
    return p
}

@Suite struct NonzeroCropTests {
    /// A 3×3×3 cube of 2s with a 0 at its centre inside a 5×6×7 grid of zeros: the box is the cube,
    /// the filled mask counts the hole, mean 52/27, sd √104/27, so the hole becomes −√26 and the
    /// 2s become 1/√26 (hand-computed).
    @Test func cubeWithAHoleIsCroppedAndZScoredInsideItsFilledMask() throws {
        let shape = [5, 6, 7]
        var values: [Int: Float] = [:]
        for z in 1...3 { for y in 2...4 { for x in 3...5 where !(z == 2 && y == 3 && x == 4) { values[index(z, y, x, shape)] = 2 } } }
        let region = NonzeroRegion(channels: [volume(shape, values).data])
        #expect(region.box == VoxelBox(start: [1, 2, 3], shape: [3, 3, 3]))
        #expect(region.mask[index(2, 3, 4, shape)] == 1, "the enclosed hole is filled")
        #expect(region.mask.reduce(0) { $0 + Int($1) } == 27)
        #expect(abs(region.boxFraction - 27.0 / 210) < 1e-12)

        let p = try plan(.zScorePerImage(useNonzeroMask: true)).prepare(id: "cube", images: [volume(shape, values)], label: nil)
        #expect(p.image.shape == [1, 3, 3, 3] && p.geometry.crop == VoxelBox(start: [1, 2, 3], shape: [3, 3, 3]))
        let out = p.image.array
        #expect(abs(Double(out[13]) + 26.0.squareRoot()) < 1e-5, "hole: \(out[13])")
        for i in 0..<27 where i != 13 { #expect(abs(Double(out[i]) - 1 / 26.0.squareRoot()) < 1e-5, "voxel \(i): \(out[i])") }
    }

    /// Two nonzero voxels (1 and 3) at opposite corners of a 3³ box: with the mask, mean 2 and sd 1
    /// give −1 and 1 and the 25 voxels outside the mask stay 0; without it, mean 4/27 and
    /// sd √254/27 over all 27 voxels give 23/√254, 77/√254 and −4/√254.
    @Test func maskDecidesWhichVoxelsTheStatisticsCover() throws {
        let shape = [5, 5, 5]
        let values = [index(1, 1, 1, shape): Float(1), index(3, 3, 3, shape): 3]
        let masked = try plan(.zScorePerImage(useNonzeroMask: true)).prepare(id: "m", images: [volume(shape, values)], label: nil).image.array
        #expect(masked.count == 27 && abs(masked[0] + 1) < 1e-6 && abs(masked[26] - 1) < 1e-6, "\(masked)")
        #expect(masked[1..<26].allSatisfy { $0 == 0 })
        let all = try plan(.zScorePerImage(useNonzeroMask: false)).prepare(id: "a", images: [volume(shape, values)], label: nil).image.array
        let r = 254.0.squareRoot()
        #expect(abs(Double(all[0]) - 23 / r) < 1e-5 && abs(Double(all[26]) - 77 / r) < 1e-5)
        #expect(all[1..<26].allSatisfy { abs(Double($0) + 4 / r) < 1e-5 })
        // Without cropping the grid is kept, and the same per-image rule runs over all 125 voxels.
        let uncropped = try plan(.zScorePerImage(useNonzeroMask: false), cropping: .none).prepare(id: "u", images: [volume(shape, values)], label: nil)
        #expect(uncropped.image.shape == [1, 5, 5, 5] && uncropped.geometry.crop == nil)
        let m = 4.0 / 125, sd = (10.0 / 125 - m * m).squareRoot()
        #expect(abs(Double(uncropped.image.array[0]) - (0 - m) / sd) < 1e-5)
    }

    /// Two images of one anatomy at different gains and offsets are identical after a per-image
    /// z-score (what dataset-wide statistics do not give another scanner's head).
    @Test func perImageZScoreIsInvariantToGainAndOffsetInsideTheMask() throws {
        let shape = [6, 6, 6]
        var a: [Int: Float] = [:], b: [Int: Float] = [:]
        for z in 1...4 { for y in 1...4 { for x in 1...4 {
            let v = Float((z * 7 + y * 3 + x) % 11 + 1)
            a[index(z, y, x, shape)] = v; b[index(z, y, x, shape)] = 3 * v + 40
        } } }
        let p = plan(.zScorePerImage(useNonzeroMask: true))
        let pa = try p.prepare(id: "a", images: [volume(shape, a)], label: nil).image.array
        let pb = try p.prepare(id: "b", images: [volume(shape, b)], label: nil).image.array
        assertClose(pb, pa, rtol: 1e-5, atol: 1e-5, "gain 3, offset 40")
    }

    /// Restore pastes the box back: probabilities get background 1 outside the box, label maps 0,
    /// and a label survives prepare → restore unchanged on an LPS, 2 mm grid resampled to 1 mm.
    @Test func restorePastesTheBoxBackWithBackgroundOutside() throws {
        let shape = [6, 7, 8]
        var h = NIfTIHeader(shape: shape)
        h.srowX = [-1, 0, 0, 4]; h.srowY = [0, -1, 0, 3]; h.srowZ = [0, 0, 2, -6]
        h.setQformFromSform()
        var img = [Float](repeating: 0, count: shape.reduce(1, *)), lab = img
        for z in 1...3 { for y in 2...5 { for x in 1...4 {
            img[index(z, y, x, shape)] = Float(10 + x + y + z)
            lab[index(z, y, x, shape)] = y >= 4 ? 1 : 0
        } } }
        let image = NIfTIVolume(header: h, data: Tensor(shape: shape, values: img))
        let label = NIfTIVolume(header: h, data: Tensor(shape: shape, values: lab))
        let pl = plan(.zScorePerImage(useNonzeroMask: true))
        let p = try pl.prepare(id: "lps", images: [image], label: label)
        #expect(p.geometry.crop == VoxelBox(start: [1, 2, 1], shape: [3, 4, 4]))
        // 2 mm along z resampled to 1 mm: 6 slices, x and y flipped to RAS.
        #expect(p.image.shape == [1, 6, 4, 4])
        let back = pl.restore(p.label!, to: p.geometry, interpolation: .nearest)
        #expect(back.shape == [1] + shape && back.array == lab)
        // Probabilities: (1 − label, label) on the prepared grid; outside the box (1, 0).
        let l = p.label!.array
        let probs = Tensor(shape: [2] + p.geometry.preparedShape, values: l.map { 1 - $0 } + l)
        let restored = pl.restoreProbabilities(probs, to: p.geometry).array
        let n = shape.reduce(1, *)
        for i in 0..<n {
            #expect(restored[i] + restored[n + i] == 1, "voxel \(i) sums to \(restored[i] + restored[n + i])")
            #expect(restored[n + i] == lab[i], "voxel \(i): brain probability \(restored[n + i]) against label \(lab[i])")
        }
    }

    /// An all-zero image has no nonzero region: nothing is cropped, and the z-score leaves it 0.
    @Test func emptyImageKeepsItsGrid() throws {
        let p = try plan(.zScorePerImage(useNonzeroMask: true)).prepare(id: "zero", images: [volume([3, 4, 5], [:])], label: nil)
        #expect(p.geometry.crop == VoxelBox(start: [0, 0, 0], shape: [3, 4, 5]) && p.image.array.allSatisfy { $0 == 0 })
    }

    /// Plans written before cropping decode as `.none` and keep their dataset-wide z-score.
    @Test func olderPlanWithoutCroppingDecodes() throws {
        let old = #"{"channelNames":["T1"],"channels":[{"zScore":{"mean":5,"std":2}}],"classCount":2,"labels":{"background":0,"x":1},"orientation":"RAS","spacing":[1,1,1]}"#
        let p = try #require(PreprocessingPlan(jsonString: old))
        #expect(p.cropping == nil && p.channels == [.zScore(mean: 5, std: 2)])
        let new = plan(.zScorePerImage(useNonzeroMask: true))
        #expect(PreprocessingPlan(jsonString: new.jsonString()) == new)
    }
}
