// The default training patch size: as large as the median case and a memory budget allow, isotropic in millimetres (nnU-Net's planner, simplified).
import Foundation

/// nnU-Net plans its patch from the median case shape and the GPU memory of a network estimate:
/// start from the median shape and shrink the axis that is largest in millimetres until the
/// estimate fits. We do the same against a CPU memory budget:
///
///   1. start from the median prepared shape, rounded up to a multiple of 2^(levels − 1), each
///      axis at most `maximumEdge` voxels;
///   2. while batch · patch voxels · `bytesPerVoxel` exceeds the budget, shrink by one multiple
///      the axis whose patch extent in mm (voxels · spacing) is largest.
public enum PatchSizePlan {
    /// Default activation budget of a training step: 1 GiB. With it a 256×256×160 two-channel
    /// case gets 60×64×64 patches (batch 2) and trains one epoch at a peak RSS of 1.07 GiB, data,
    /// binary and oneDNN included (scripts/peak-rss, OMP_NUM_THREADS=1, 2026-12-01): inside the
    /// issue's 3 GiB with room for larger datasets in memory.
    public static let defaultBudgetMiB = 1024
    /// Largest default patch edge: 128 voxels, nnU-Net's typical 3d_fullres edge.
    public static let maximumEdge = 128
    /// Safety factor over the float count for oneDNN's reorder buffers and backward's transients.
    /// Conservative: in the scripts/peak-rss run above the whole process (about 0.2 GiB of
    /// binary and oneDNN, 0.2 GiB of case data) peaked at 1.07 GiB for a 1 GiB estimate.
    static let overhead = 1.5

    /// Floats a training step keeps per patch voxel and example: per block (convolution, norm,
    /// ReLU) the convolution's copy of its input, its output, the norm's x̂ and output, the ReLU's
    /// output and mask, and backward's gradient of the block's output; level l counts 1/8^l.
    public static func floatsPerVoxel(_ shape: UNetConfig) -> Double {
        var total = 0.0
        for l in 0..<shape.levels {
            let c = Double(shape.channels(level: l)), cin = l == 0 ? Double(shape.inputChannels) : Double(shape.channels(level: l - 1))
            var level = (cin + 6 * c) + (c + 6 * c)                                        // encoder pair
            if l < shape.levels - 1 {
                let up = Double(shape.channels(level: l + 1))
                level += (2 * up + 6 * c) + (2 * c + 2 * c + 6 * c)                          // upsampled input, up conv, concat, dec conv
            }
            total += level / pow(8, Double(l))
        }
        return total + Double(shape.channels(level: 0) + 2 * shape.classCount) + 3 * Double(shape.classCount) // head, softmax, loss gradient
    }

    public static func bytesPerVoxel(_ shape: UNetConfig) -> Double { 4 * floatsPerVoxel(shape) * overhead }

    public static func patchSize(medianShape: [Int], spacing: [Double], shape: UNetConfig, batchSize: Int, budgetMiB: Int = defaultBudgetMiB) -> [Int] {
        let m = shape.sizeMultiple
        let edge = max(m, maximumEdge / m * m)
        var patch = medianShape.map { min(edge, max(m, ($0 + m - 1) / m * m)) }
        let budget = Double(budgetMiB) * 1_048_576
        func bytes() -> Double { Double(batchSize) * Double(patch.reduce(1, *)) * bytesPerVoxel(shape) }
        while bytes() > budget {
            let axes = (0..<3).filter { patch[$0] > m }
            guard let axis = axes.max(by: { Double(patch[$0]) * spacing[$0] < Double(patch[$1]) * spacing[$1] }) else { break }
            patch[axis] -= m
        }
        return patch
    }
}
