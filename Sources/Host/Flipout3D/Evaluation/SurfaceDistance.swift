// Surface distances between two masks in mm: the 95th-percentile Hausdorff distance (HD95), as MONAI computes it.
//
// MONAI `compute_hausdorff_distance(percentile=95)`: the surface of a mask is its voxels with a
// 6-neighbour outside it (`mask ^ binary_erosion(mask)`, the volume's border counting as outside);
// the directed distances are the exact Euclidean distances (voxel spacing in mm) from every
// surface voxel of one mask to the nearest surface voxel of the other; HD95 is the larger of the
// two directed 95th percentiles (numpy's linear interpolation).
//
// Voxels `excluded` (a dataset's ignore label: their true class is unknown) take no part: they are
// never surface voxels, and a neighbour there does not make a voxel a surface voxel, so neither the
// edge of an ignored region nor a prediction inside it enters the distances. Without exclusions this
// is MONAI's definition unchanged.

public enum SurfaceDistance {
    /// The surface voxels of a (D, H, W) mask: voxels of the mask, not excluded, with a 6-neighbour
    /// outside the mask and not excluded, or on the volume's border.
    public static func surface(_ mask: [Bool], shape: [Int], excluded: [Bool]? = nil) -> [Bool] {
        let (d, h, w) = (shape[0], shape[1], shape[2])
        precondition(mask.count == d * h * w && (excluded?.count ?? mask.count) == mask.count, "SurfaceDistance.surface: sizes differ from \(shape)")
        var out = [Bool](repeating: false, count: mask.count)
        // A neighbour at j makes i a surface voxel when it is outside the mask and takes part.
        func outside(_ j: Int) -> Bool { !mask[j] && !(excluded?[j] ?? false) }
        for z in 0..<d { for y in 0..<h { for x in 0..<w {
            let i = (z * h + y) * w + x
            guard mask[i], !(excluded?[i] ?? false) else { continue }
            out[i] = z == 0 || z == d - 1 || y == 0 || y == h - 1 || x == 0 || x == w - 1
                || outside(i - 1) || outside(i + 1) || outside(i - w) || outside(i + w) || outside(i - h * w) || outside(i + h * w)
        } } }
        return out
    }

    /// HD95 in the units of `spacing` (voxel size along (D, H, W)), `excluded` voxels taking no part.
    /// Both masks empty (outside the excluded voxels): 0. One empty: nil (undefined; MONAI returns
    /// NaN), so that aggregates can say how many cases had it.
    public static func hd95(_ a: [Bool], _ b: [Bool], shape: [Int], spacing: [Double], excluded: [Bool]? = nil) -> Double? {
        precondition(a.count == b.count && (excluded?.count ?? a.count) == a.count, "SurfaceDistance.hd95: masks differ in size")
        let kept = { (i: Int) in !(excluded?[i] ?? false) }
        let anyA = a.indices.contains { a[$0] && kept($0) }, anyB = b.indices.contains { b[$0] && kept($0) }
        if !anyA && !anyB { return 0 }
        guard anyA && anyB else { return nil }
        let sa = surface(a, shape: shape, excluded: excluded), sb = surface(b, shape: shape, excluded: excluded)
        // A mask whose kept voxels all touch only excluded ones has no surface to measure from.
        guard sa.contains(true) && sb.contains(true) else { return nil }
        let toB = DistanceTransform.euclidean(features: sb, shape: shape, spacing: spacing)
        let toA = DistanceTransform.euclidean(features: sa, shape: shape, spacing: spacing)
        var ab: [Double] = [], ba: [Double] = []
        for i in 0..<a.count {
            if sa[i] { ab.append(toB[i]) }
            if sb[i] { ba.append(toA[i]) }
        }
        return max(percentile(ab, 95), percentile(ba, 95))
    }

    /// numpy's default percentile: linear interpolation between the order statistics at rank (n − 1)·q/100.
    public static func percentile(_ values: [Double], _ q: Double) -> Double {
        precondition(!values.isEmpty && (0...100).contains(q), "percentile of \(values.count) values at \(q)")
        let s = values.sorted()
        let r = Double(s.count - 1) * q / 100
        let lo = Int(r.rounded(.down)), hi = min(lo + 1, s.count - 1)
        return s[lo] + (s[hi] - s[lo]) * (r - Double(lo))
    }
}
