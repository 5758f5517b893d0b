// Simulated low resolution (batchgeneratorsv2 SimulateLowResolutionTransform): one channel downsampled by nearest voxel, then upsampled trilinearly.
import Foundation

public enum LowResolution {
    /// The coarse shape for `scale` (0.5–1): round(n · scale), at least 1.
    public static func coarseShape(_ shape: [Int], scale: Double) -> [Int] {
        shape.map { max(1, Int((Double($0) * scale).rounded())) }
    }

    /// Replaces the (d, h, w) volume at `x` with its nearest-voxel downsampling to `coarseShape`,
    /// upsampled back trilinearly; both maps align voxel edges (PyTorch's align_corners=False).
    public static func apply(_ x: UnsafeMutablePointer<Float>, shape: [Int], scale: Double) {
        let small = coarseShape(shape, scale: scale)
        guard small != shape else { return }
        // Source position of a target voxel centre: (i + 0.5) · n / m − 0.5.
        func coord(_ i: Int, _ from: Int, _ to: Int) -> Double { (Double(i) + 0.5) * Double(from) / Double(to) - 0.5 }
        let (d, h, w) = (shape[0], shape[1], shape[2]), (sd, sh, sw) = (small[0], small[1], small[2])
        var coarse = [Float](repeating: 0, count: sd * sh * sw)
        for z in 0..<sd { for y in 0..<sh { for xx in 0..<sw {
            // Nearest: PyTorch's "nearest-exact" picks floor((i + 0.5) · n / m).
            let iz = min(d - 1, Int((Double(z) + 0.5) * Double(d) / Double(sd)))
            let iy = min(h - 1, Int((Double(y) + 0.5) * Double(h) / Double(sh)))
            let ix = min(w - 1, Int((Double(xx) + 0.5) * Double(w) / Double(sw)))
            coarse[(z * sh + y) * sw + xx] = x[(iz * h + iy) * w + ix]
        } } }
        func corners(_ i: Int, _ n: Int, _ m: Int) -> (Int, Int, Float) {
            let c = min(max(coord(i, m, n), 0), Double(m - 1))
            let lo = min(Int(c), m - 1)
            return (lo, min(lo + 1, m - 1), Float(c - Double(lo)))
        }
        for z in 0..<d {
            let (z0, z1, fz) = corners(z, d, sd)
            for y in 0..<h {
                let (y0, y1, fy) = corners(y, h, sh)
                for xx in 0..<w {
                    let (x0, x1, fx) = corners(xx, w, sw)
                    func v(_ a: Int, _ b: Int, _ c: Int) -> Float { coarse[(a * sh + b) * sw + c] }
                    let a0 = v(z0, y0, x0) + (v(z0, y0, x1) - v(z0, y0, x0)) * fx, a1 = v(z0, y1, x0) + (v(z0, y1, x1) - v(z0, y1, x0)) * fx
                    let b0 = v(z1, y0, x0) + (v(z1, y0, x1) - v(z1, y0, x0)) * fx, b1 = v(z1, y1, x0) + (v(z1, y1, x1) - v(z1, y1, x0)) * fx
                    let a = a0 + (a1 - a0) * fy, b = b0 + (b1 - b0) * fy
                    x[(z * h + y) * w + xx] = a + (b - a) * fz
                }
            }
        }
    }
}
