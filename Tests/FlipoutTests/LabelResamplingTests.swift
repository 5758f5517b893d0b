// Label maps brought to the training spacing stay where the image is: class centres in world mm before and after prepare, and nnU-Net's one-hot rule by hand.
import Testing
import Foundation
import Flipout3D
import TestSupport

private func index(_ z: Int, _ y: Int, _ x: Int, _ shape: [Int]) -> Int { (z * shape[1] + y) * shape[2] + x }

/// The world-mm centre of the voxels holding `value`, through `affine` (voxel (i, j, k) = (x, y, z) index).
private func centre(of value: Float, in data: [Float], shape: [Int], affine: Affine) -> [Double] {
    var sum = [0.0, 0, 0], count = 0
    for z in 0..<shape[0] { for y in 0..<shape[1] { for x in 0..<shape[2] where data[index(z, y, x, shape)] == value {
        let w = affine.apply([Double(x), Double(y), Double(z)])
        for a in 0..<3 { sum[a] += w[a] }
        count += 1
    } } }
    return sum.map { $0 / Double(max(count, 1)) }
}

@Suite struct LabelResamplingTests {
    /// 1 mm to 2 mm, every axis of even length: each 2 mm centre lies half-way between two 1 mm
    /// voxels. Two boxes of classes 1 and 2 (even extents, odd starts) must keep their world
    /// centres (hand: the boxes are symmetric about their centres, and so is the one-hot rule).
    /// Nearest-voxel resampling reads each 2 mm voxel 0.5 mm off its centre (the tie rounds up):
    /// these boxes then move 1 mm along every axis, and this test fails.
    @Test func labelKeepsItsWorldCentreAtAnIntegerSpacingRatio() throws {
        let shape = [16, 18, 20] // (D, H, W), 1 mm
        var img = [Float](repeating: 0, count: shape.reduce(1, *)), lab = img
        for z in 0..<shape[0] { for y in 0..<shape[1] { for x in 0..<shape[2] {
            let i = index(z, y, x, shape)
            img[i] = Float(100 + x + 2 * y + 3 * z)
            if (5...12).contains(z) && (3...10).contains(y) && (7...14).contains(x) { lab[i] = 1 }
            if (3...6).contains(z) && (13...16).contains(y) && (1...4).contains(x) { lab[i] = 2 }
        } } }
        let h = NIfTIHeader(shape: shape, spacing: [1, 1, 1])
        var plan = PreprocessingPlan(spacing: [2, 2, 2], channelNames: ["T1"], channels: [.zScorePerImage(useNonzeroMask: false)],
                                     labels: ["background": 0, "a": 1, "b": 2], classCount: 3)
        plan.cropping = .none
        let p = try plan.prepare(id: "even", images: [NIfTIVolume(header: h, data: Tensor(shape: shape, values: img))],
                                 label: NIfTIVolume(header: h, data: Tensor(shape: shape, values: lab)))
        #expect(p.geometry.preparedShape == [8, 9, 10])
        let prepared = p.label!.array
        for c: Float in [1, 2] {
            let before = centre(of: c, in: lab, shape: shape, affine: h.affine)
            let after = centre(of: c, in: prepared, shape: p.geometry.preparedShape, affine: p.geometry.preparedAffine)
            for a in 0..<3 {
                #expect(abs(after[a] - before[a]) < 0.05, "class \(c), world axis \(a): centre \(before[a]) mm moved to \(after[a]) mm")
            }
        }
    }

    /// nnU-Net's rule on a hand-made case: along one axis, voxels [0, 1, 1, 0] (1 mm) to 2 mm
    /// centres at source 0.5 and 2.5: shares 0.5 and 0.5, a tie, so foreground both (`>= 0.5`);
    /// [1, 1, 1, 0] with a third class at the last voxel: shares (bg 0, 1: 1) and (1: 0.5, 2: 0.5),
    /// the tie to the larger value 2.
    @Test func tiesGoToTheLargerClassAsNnUNetsThreshold() {
        let from = VoxelGrid(shape: [1, 1, 4], affine: Affine.identity)
        let to = from.reorientedToRAS(spacing: [1, 1, 2])
        #expect(to.shape == [1, 1, 2])
        #expect(LabelResampling.resample(Tensor(shape: [1, 1, 4], values: [0, 1, 1, 0]), from: from, to: to).array == [1, 1])
        #expect(LabelResampling.resample(Tensor(shape: [1, 1, 4], values: [1, 1, 1, 2]), from: from, to: to).array == [1, 2])
        #expect(LabelResampling.resample(Tensor(shape: [1, 1, 4], values: [0, 0, 0, 1]), from: from, to: to).array == [0, 1])
    }

    /// Beyond the source grid every share is 0: background, whatever classes are present.
    @Test func beyondTheSourceGridIsBackground() {
        let from = VoxelGrid(shape: [1, 1, 2], affine: Affine.identity)
        var m = Affine.identity.m
        m[0][3] = -3 // target voxel 0 at source x = -3 (outside), voxel 3 at x = 0
        let to = VoxelGrid(shape: [1, 1, 4], affine: Affine(m))
        #expect(LabelResampling.resample(Tensor(shape: [1, 1, 2], values: [2, 1]), from: from, to: to).array == [0, 0, 0, 2])
    }
}
