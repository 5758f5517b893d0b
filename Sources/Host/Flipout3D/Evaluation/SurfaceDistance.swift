// Surface distances between two masks in mm: the 95th-percentile Hausdorff distance (HD95), as MONAI computes it.
//
// MONAI `compute_hausdorff_distance(percentile=95)`: the surface of a mask is its voxels with a
// 6-neighbour outside it (`mask ^ binary_erosion(mask)`, the volume's border counting as outside);
// the directed distances are the exact Euclidean distances (voxel spacing in mm) from every
// surface voxel of one mask to the nearest surface voxel of the other; HD95 is the larger of the
// two directed 95th percentiles (numpy's linear interpolation).

public enum SurfaceDistance {
    /// The surface voxels of a (D, H, W) mask.
    public static func surface(_ mask: [Bool], shape: [Int]) -> [Bool] {
        let (d, h, w) = (shape[0], shape[1], shape[2])
        var out = [Bool](repeating: false, count: mask.count)
        for z in 0..<d { for y in 0..<h { for x in 0..<w {
            let i = (z * h + y) * w + x
            guard mask[i] else { continue }
            out[i] = z == 0 || z == d - 1 || y == 0 || y == h - 1 || x == 0 || x == w - 1
                || !mask[i - 1] || !mask[i + 1] || !mask[i - w] || !mask[i + w] || !mask[i - h * w] || !mask[i + h * w]
        } } }
        return out
    }

    /// HD95 in the units of `spacing` (voxel size along (D, H, W)). Both masks empty: 0. One empty: nil
    /// (undefined; MONAI returns NaN), so that aggregates can say how many cases had it.
    public static func hd95(_ a: [Bool], _ b: [Bool], shape: [Int], spacing: [Double]) -> Double? {
        precondition(a.count == b.count, "SurfaceDistance.hd95: masks differ in size")
        let anyA = a.contains(true), anyB = b.contains(true)
        if !anyA && !anyB { return 0 }
        guard anyA && anyB else { return nil }
        let sa = surface(a, shape: shape), sb = surface(b, shape: shape)
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
