// nnU-Net's crop_to_nonzero: the nonzero mask of a case (any channel ≠ 0, holes filled), its bounding box, and cropping to it.
import Foundation

/// A box of voxels on a (D, H, W) grid: `start` (z, y, x) and `shape` (d, h, w), both in tensor order.
public struct VoxelBox: Codable, Sendable, Equatable {
    public var start: [Int]
    public var shape: [Int]

    public init(start: [Int], shape: [Int]) {
        precondition(start.count == 3 && shape.count == 3 && shape.allSatisfy { $0 >= 1 } && start.allSatisfy { $0 >= 0 },
                     "VoxelBox: start \(start), shape \(shape)")
        self.start = start; self.shape = shape
    }

    /// The grid of the box's voxels: same voxel axes and spacing, origin moved to `start`.
    public func grid(in source: VoxelGrid) -> VoxelGrid {
        var t = Affine.identity.m
        // (i, j, k) of the box is (i + x0, j + y0, k + z0) of the source.
        t[0][3] = Double(start[2]); t[1][3] = Double(start[1]); t[2][3] = Double(start[0])
        return VoxelGrid(shape: shape, affine: source.affine.concatenating(Affine(t)))
    }
}

/// What nnU-Net's `crop_to_nonzero` computes (nnunetv2/preprocessing/cropping/cropping.py): the
/// mask of voxels that are nonzero in any channel, with enclosed holes filled (scipy's
/// `binary_fill_holes`, face connectivity), and the mask's bounding box. The mask is also the
/// region a per-image z-score uses when cropping shrank the image (`ZScoreNormalization`'s
/// `use_mask_for_norm`).
public struct NonzeroRegion {
    /// (D, H, W) of the grid.
    public let shape: [Int]
    /// 1 inside the filled nonzero mask, 0 outside; D·H·W values.
    public let mask: [UInt8]
    /// The mask's bounding box; the whole grid when the mask is empty (nothing to crop to).
    public let box: VoxelBox

    /// channels: volumes (D, H, W) of one grid, or one (C, D, H, W) tensor's channels.
    public init(channels: [Tensor]) {
        precondition(!channels.isEmpty && channels.allSatisfy { Array($0.shape.suffix(3)) == Array(channels[0].shape.suffix(3)) },
                     "NonzeroRegion: channels of different shapes \(channels.map(\.shape))")
        let shape = Array(channels[0].shape.suffix(3))
        let n = shape.reduce(1, *)
        var m = [UInt8](repeating: 0, count: n)
        for c in channels {
            let p = c.data
            for i in 0..<n where p[i] != 0 { m[i] = 1 }
        }
        withExtendedLifetime(channels) {}
        self.shape = shape
        mask = Self.fillHoles(m, shape: shape)
        box = Self.boundingBox(mask, shape: shape) ?? VoxelBox(start: [0, 0, 0], shape: shape)
    }

    /// Fraction of the grid's voxels inside the bounding box (nnU-Net compares the median of this
    /// over the training cases with 3/4 to decide `use_mask_for_norm`).
    public var boxFraction: Double { Double(box.shape.reduce(1, *)) / Double(shape.reduce(1, *)) }

    /// Zero voxels not connected to the grid's border through zero voxels (6-connectivity) become 1.
    static func fillHoles(_ mask: [UInt8], shape: [Int]) -> [UInt8] {
        let (d, h, w) = (shape[0], shape[1], shape[2])
        // 2 marks outside: zero voxels reached from the border.
        var m = mask
        var stack: [Int] = []
        func push(_ i: Int) { if m[i] == 0 { m[i] = 2; stack.append(i) } }
        for z in 0..<d { for y in 0..<h { for x in 0..<w where z == 0 || z == d - 1 || y == 0 || y == h - 1 || x == 0 || x == w - 1 {
            push((z * h + y) * w + x)
        } } }
        while let i = stack.popLast() {
            let x = i % w, y = (i / w) % h, z = i / (w * h)
            if x > 0 { push(i - 1) }; if x < w - 1 { push(i + 1) }
            if y > 0 { push(i - w) }; if y < h - 1 { push(i + w) }
            if z > 0 { push(i - w * h) }; if z < d - 1 { push(i + w * h) }
        }
        return m.map { $0 == 2 ? 0 : 1 }
    }

    /// The smallest box holding every 1 of `mask`; nil when there is none.
    static func boundingBox(_ mask: [UInt8], shape: [Int]) -> VoxelBox? {
        let (h, w) = (shape[1], shape[2])
        var lo = [Int.max, Int.max, Int.max], hi = [-1, -1, -1]
        for i in mask.indices where mask[i] != 0 {
            let c = [i / (w * h), (i / w) % h, i % w]
            for a in 0..<3 { lo[a] = min(lo[a], c[a]); hi[a] = max(hi[a], c[a]) }
        }
        guard hi[0] >= 0 else { return nil }
        return VoxelBox(start: lo, shape: (0..<3).map { hi[$0] - lo[$0] + 1 })
    }

    /// The box of `volume` ((D, H, W) or (C, D, H, W)): same rank, box-shaped.
    public static func crop(_ volume: Tensor, to box: VoxelBox) -> Tensor {
        let c = volume.rank == 4 ? volume.shape[0] : 1
        let out = Tensor(uninitializedShape: volume.rank == 4 ? [c] + box.shape : box.shape)
        PatchSampler.crop(volume.rank == 4 ? volume : volume.reshaped([1] + volume.shape), start: box.start, size: box.shape, into: out.data)
        return out
    }

    /// `maps` (C, d, h, w) on `box` placed into a (C, D, H, W) tensor of `shape`; outside the box,
    /// channel c takes `outside[c]` (e.g. probability 1 for background, 0 for the other classes).
    public static func paste(_ maps: Tensor, from box: VoxelBox, into shape: [Int], outside: [Float]) -> Tensor {
        precondition(maps.rank == 4 && Array(maps.shape.dropFirst()) == box.shape && outside.count == maps.shape[0],
                     "NonzeroRegion.paste: maps \(maps.shape), box \(box.shape), \(outside.count) fill values")
        let c = maps.shape[0], (d, h, w) = (shape[0], shape[1], shape[2]), (bd, bh, bw) = (box.shape[0], box.shape[1], box.shape[2])
        let out = Tensor(uninitializedShape: [c] + shape)
        for ch in 0..<c {
            (out.data + ch * d * h * w).update(repeating: outside[ch], count: d * h * w)
            for z in 0..<bd { for y in 0..<bh {
                let dst = out.data + ((ch * d + box.start[0] + z) * h + box.start[1] + y) * w + box.start[2]
                dst.update(from: maps.data + ((ch * bd + z) * bh + y) * bw, count: bw)
            } }
        }
        return out
    }
}
