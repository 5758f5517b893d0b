// ECE restricted to a region of interest: the dilated union of label and prediction, per volume.
//
// Whole-volume ECE of a segmentation is dominated by the many easy background voxels (p ≈ 0,
// label 0), so every model looks calibrated. Restricting it to the voxels near the structure (the
// union of the label and the thresholded prediction, dilated by a few voxels) measures calibration
// where the decisions are made. Convention: a cube of side 2·radius + 1 (Chebyshev distance), per
// volume of a (N, C, D, H, W) tensor, independently for each of the N·C volumes.

extension Metrics {
    /// Default dilation: 3 voxels, about half the smallest lesion radius of the synthetic default
    /// (3–6.5 voxels at 32³), so the region holds the boundary band on both sides of a lesion.
    public static let regionOfInterestRadius = 3

    /// The region of interest of p, y (N, C, D, H, W): voxels within `radius` (Chebyshev) of a voxel
    /// that is foreground in the label (y >= 0.5) or in the prediction (p >= threshold).
    public static func regionOfInterest(probabilities p: Tensor, labels y: Tensor, radius: Int = regionOfInterestRadius,
                                        threshold: Float = 0.5) -> [Bool] {
        p.checkShape(y.shape, "Metrics.regionOfInterest")
        precondition(p.shape.count >= 3 && radius >= 0, "Metrics.regionOfInterest: needs (..., D, H, W) and radius >= 0, got \(p.shape), \(radius)")
        let dims = Array(p.shape.suffix(3)), per = dims.reduce(1, *)
        var mask = [Bool](repeating: false, count: p.count)
        for i in 0..<p.count { mask[i] = p.data[i] >= threshold || y.data[i] >= 0.5 }
        let strides = [dims[1] * dims[2], dims[2], 1]
        var line = [Bool]()
        for start in stride(from: 0, to: p.count, by: per) {
            // Separable dilation: a running window max along each axis in turn.
            for axis in 0..<3 {
                let n = dims[axis], s = strides[axis]
                line = [Bool](repeating: false, count: n)
                for base in 0..<per where (base / s) % n == 0 {
                    for j in 0..<n { line[j] = mask[start + base + j * s] }
                    var last = -radius - 1 // index of the last foreground voxel seen going forward
                    var out = [Bool](repeating: false, count: n)
                    for j in 0..<n { if line[j] { last = j }; out[j] = j - last <= radius }
                    var next = Int.max / 2
                    for j in stride(from: n - 1, through: 0, by: -1) { if line[j] { next = j }; if next - j <= radius { out[j] = true } }
                    for j in 0..<n { mask[start + base + j * s] = out[j] }
                }
            }
        }
        return mask
    }

    /// `ece` over the voxels of `regionOfInterest` only; 0 when the region is empty.
    public static func roiECE(probabilities p: Tensor, labels y: Tensor, radius: Int = regionOfInterestRadius, bins: Int = 15) -> Double {
        let mask = regionOfInterest(probabilities: p, labels: y, radius: radius)
        let picked = mask.indices.filter { mask[$0] }
        guard !picked.isEmpty else { return 0 }
        let q = Tensor(shape: [picked.count]), l = Tensor(shape: [picked.count])
        for (k, i) in picked.enumerated() { q.data[k] = p.data[i]; l.data[k] = y.data[i] }
        return ece(probabilities: q, labels: l, bins: bins)
    }
}
