// The exact Euclidean distance transform on an anisotropic 3D grid (Felzenszwalb–Huttenlocher, separable).
//
// Felzenszwalb & Huttenlocher, "Distance Transforms of Sampled Functions" (Theory of Computing
// 2012): the squared distance transform is separable, one 1D lower envelope of parabolas per
// line and axis, O(n) per line. Positions along an axis are q · spacing, so anisotropic voxels
// come out in mm. Same answer as scipy's `distance_transform_edt(~features, sampling=spacing)`.

public enum DistanceTransform {
    /// Distance (in the units of `spacing`) from every voxel of a (D, H, W) grid to the nearest
    /// voxel where `features` is true; 0 on features, +infinity everywhere if there is none.
    /// - Parameter spacing: voxel size along (D, H, W).
    public static func euclidean(features: [Bool], shape: [Int], spacing: [Double]) -> [Double] {
        precondition(shape.count == 3 && spacing.count == 3 && features.count == shape.reduce(1, *),
                     "DistanceTransform: \(features.count) voxels, shape \(shape), spacing \(spacing)")
        precondition(spacing.allSatisfy { $0 > 0 && $0.isFinite }, "DistanceTransform: spacing must be positive, got \(spacing)")
        var f = features.map { $0 ? 0.0 : Double.infinity } // squared distances so far
        let (d, h, w) = (shape[0], shape[1], shape[2])
        let n = max(d, max(h, w))
        var line = [Double](repeating: 0, count: n), out = [Double](repeating: 0, count: n)
        var v = [Int](repeating: 0, count: n), z = [Double](repeating: 0, count: n + 1)
        // One pass per axis: (length, stride, the first index of every line).
        let passes: [(Int, Int, [Int])] = [
            (w, 1, (0..<(d * h)).map { $0 * w }),
            (h, w, (0..<d).flatMap { zz in (0..<w).map { zz * h * w + $0 } }),
            (d, h * w, Array(0..<(h * w))),
        ]
        for (axis, (length, stride, starts)) in passes.enumerated() {
            let s = spacing[2 - axis]
            for start in starts {
                for q in 0..<length { line[q] = f[start + q * stride] }
                lowerEnvelope(line, length, s, &out, &v, &z)
                for q in 0..<length { f[start + q * stride] = out[q] }
            }
        }
        return f.map { $0.squareRoot() }
    }

    /// out[q] = min_p (f[p] + ((q − p)·s)²) over p with finite f[p] (infinity if none).
    static func lowerEnvelope(_ f: [Double], _ n: Int, _ s: Double, _ out: inout [Double], _ v: inout [Int], _ z: inout [Double]) {
        var k = -1
        for q in 0..<n where f[q].isFinite {
            let xq = Double(q) * s
            var cross = -Double.infinity
            while k >= 0 {
                let xp = Double(v[k]) * s
                cross = ((f[q] + xq * xq) - (f[v[k]] + xp * xp)) / (2 * (xq - xp))
                if cross <= z[k] { k -= 1 } else { break }
            }
            k += 1
            v[k] = q
            z[k] = k == 0 ? -Double.infinity : cross
            z[k + 1] = .infinity
        }
        guard k >= 0 else {
            for q in 0..<n { out[q] = .infinity }
            return
        }
        var j = 0
        for q in 0..<n {
            let xq = Double(q) * s
            while z[j + 1] < xq { j += 1 }
            let dx = xq - Double(v[j]) * s
            out[q] = dx * dx + f[v[j]]
        }
    }
}
