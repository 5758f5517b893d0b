// Label maps resampled as nnU-Net resamples segmentations: each class's one-hot trilinearly, then the class with the largest share.
import Foundation

public enum LabelResampling {
    /// Resamples the label map `label` (D, H, W) of integer class values on `from` onto `to`
    /// (D', H', W') as nnU-Net's `resample_data_or_seg(is_seg=True, order=1)`: each class present
    /// is resampled as its one-hot mask, trilinearly, and a target voxel takes the class with the
    /// largest share; a tie goes to the larger class value (for two classes: foreground where its
    /// share is ≥ 0.5, nnU-Net's `resized >= 0.5`). Beyond the source grid (where every share is
    /// 0) the label is 0.
    ///
    /// Nearest-voxel resampling is not the same thing: at an integer ratio (1 mm to 2 mm) every
    /// target centre falls half-way between two source voxels along an axis whose cropped size is
    /// even, the tie rounds one way, and the whole label map moves half a source voxel against the
    /// image (trilinear there); thin structures are also sampled at one point of the 2×2×2 block
    /// instead of by its majority.
    public static func resample(_ label: Tensor, from: VoxelGrid, to: VoxelGrid) -> Tensor {
        label.checkShape(from.shape, "LabelResampling.resample label")
        let src = label.data, n = label.count
        var values = Set<Int>()
        for i in 0..<n { values.insert(Int(src[i])) }
        let classes = values.sorted()
        let m = to.shape.reduce(1, *)
        let out = Tensor(shape: to.shape) // (D', H', W'), 0 = background
        guard classes.count > 1 else {
            // One class: the whole source grid holds it; beyond the grid, background.
            let one = classes.first ?? 0
            if one == 0 { return out }
            let inside = Resample.resample(Tensor(shape: from.shape, values: [Float](repeating: 1, count: n)), from: from, to: to, interpolation: .linear)
            for i in 0..<m where inside.data[i] > 0 { out.data[i] = Float(one) }
            return out
        }
        var best = [Float](repeating: 0, count: m)
        let onehot = Tensor(shape: from.shape)
        for c in classes {
            let v = Float(c)
            for i in 0..<n { onehot.data[i] = src[i] == v ? 1 : 0 }
            let share = Resample.resample(onehot, from: from, to: to, interpolation: .linear)
            let s = share.data
            // Ascending class values: `>=` gives a tie to the larger value; a share of 0 never wins.
            for i in 0..<m where s[i] > 0 && s[i] >= best[i] { best[i] = s[i]; out.data[i] = v }
        }
        return out
    }
}
