// Resampling between voxel grids through their world affines (trilinear for images, nearest for
// labels), and the RAS-ordered grid that preprocessing resamples onto.
import Foundation

/// How values between voxel centres are computed.
public enum Interpolation: String, Codable, Sendable, CaseIterable {
    /// Trilinear: images, probability maps.
    case linear
    /// Nearest voxel centre (ties round away from zero): label maps.
    case nearest
}

/// A voxel grid in world space: shape (D, H, W) = (nz, ny, nx) and its voxel-to-RAS affine.
public struct VoxelGrid: Equatable, Sendable {
    public var shape: [Int]
    public var affine: Affine

    public init(shape: [Int], affine: Affine) {
        precondition(shape.count == 3 && shape.allSatisfy { $0 >= 1 }, "VoxelGrid: shape \(shape)")
        self.shape = shape; self.affine = affine
    }

    /// Voxel counts along (i, j, k) = (nx, ny, nz).
    var sizeIJK: [Int] { [shape[2], shape[1], shape[0]] }

    /// The grid `prepare` resamples a case onto: voxel axes permuted and flipped so that i, j, k
    /// run towards R, A, S (MONAI's `Orientationd(axcodes="RAS")`; an oblique affine keeps its
    /// rotation, as there), then voxel sizes set to `spacing` (D, H, W) = along (k, j, i) mm
    /// (MONAI's `Spacingd`). The field of view is kept: each axis gets
    /// max(1, round(n · old / new)) voxels, centred on the old field of view's centre.
    public func reorientedToRAS(spacing: [Double]) -> VoxelGrid {
        precondition(spacing.count == 3 && spacing.allSatisfy { $0 > 0 }, "reorientedToRAS: spacing \(spacing)")
        let o = AxisOrientation(affine)
        let n = sizeIJK, old = affine.spacing
        // Reoriented voxel axis w (0, 1, 2 = R, A, S) is source axis a with worldAxis[a] == w.
        var t = [[Double]](repeating: [0, 0, 0, 0], count: 4)
        t[3][3] = 1
        var sizeW = [0, 0, 0], oldW = [0.0, 0, 0]
        for a in 0..<3 {
            let w = o.worldAxis[a]
            sizeW[w] = n[a]; oldW[w] = old[a]
            // source index a = new index w (sign +) or n-1 - new index w (sign -).
            t[a][w] = Double(o.sign[a])
            t[a][3] = o.sign[a] > 0 ? 0 : Double(n[a] - 1)
        }
        let reoriented = affine.concatenating(Affine(t))
        // Resample: new index p along w sits at reoriented index c + (p - (m-1)/2) · new/old.
        let target = [spacing[2], spacing[1], spacing[0]] // along (i, j, k) = (R, A, S)
        var s = [[Double]](repeating: [0, 0, 0, 0], count: 4)
        s[3][3] = 1
        var m = [0, 0, 0]
        for w in 0..<3 {
            let size = max(1, (Double(sizeW[w]) * oldW[w] / target[w]).rounded())
            precondition(size <= Double(GeometryLimits.gridVoxels), "reorientedToRAS: \(size) voxels along an axis; callers check with checkedRASGrid first")
            m[w] = Int(size)
            let ratio = target[w] / oldW[w]
            s[w][w] = ratio
            s[w][3] = Double(sizeW[w] - 1) / 2 - Double(m[w] - 1) / 2 * ratio
        }
        return VoxelGrid(shape: [m[2], m[1], m[0]], affine: reoriented.concatenating(Affine(s)))
    }
}

public enum Resample {
    /// Resamples `source` ((D, H, W) or (C, D, H, W) on `from`) onto `to`: each target voxel
    /// centre is mapped through to.affine, then from.affine⁻¹, to a continuous source index and
    /// interpolated there. A point within half a voxel outside the source grid takes the edge
    /// value (the edge voxel covers it); farther out it takes `outside`.
    /// Returns (D', H', W') or (C, D', H', W') like the input.
    public static func resample(_ source: Tensor, from: VoxelGrid, to: VoxelGrid,
                                interpolation: Interpolation, outside: Float = 0) -> Tensor {
        let channels: Int
        if source.rank == 3 {
            source.checkShape(from.shape, "Resample.resample source")
            channels = 1
        } else {
            precondition(source.rank == 4 && Array(source.shape.dropFirst()) == from.shape,
                         "Resample.resample: source \(source.shape) is not (C, \(from.shape))")
            channels = source.shape[0]
        }
        let out = Tensor(uninitializedShape: source.rank == 3 ? to.shape : [channels] + to.shape)
        // target voxel (i, j, k) -> source continuous index.
        let map = from.affine.inverse.concatenating(to.affine).m
        let (nx, ny, nz) = (from.shape[2], from.shape[1], from.shape[0])
        let (tx, ty, tz) = (to.shape[2], to.shape[1], to.shape[0])
        let srcPlane = nx * ny * nz, dstPlane = tx * ty * tz
        let src = source.data, dst = out.data
        let limit = [Double(nx) - 0.5, Double(ny) - 0.5, Double(nz) - 0.5]

        DispatchQueue.concurrentPerform(iterations: tz) { k in
            for j in 0..<ty {
                // Continuous source index of target (0, j, k), and its step along i.
                let base = (0..<3).map { r in map[r][1] * Double(j) + map[r][2] * Double(k) + map[r][3] }
                let step = (0..<3).map { r in map[r][0] }
                for i in 0..<tx {
                    let x = base[0] + step[0] * Double(i), y = base[1] + step[1] * Double(i), z = base[2] + step[2] * Double(i)
                    let o = (k * ty + j) * tx + i
                    // Written so that a NaN index (never expected: affines are checked finite) counts as outside.
                    if !(x >= -0.5 && y >= -0.5 && z >= -0.5 && x <= limit[0] && y <= limit[1] && z <= limit[2]) {
                        for c in 0..<channels { dst[c * dstPlane + o] = outside }
                        continue
                    }
                    switch interpolation {
                    case .nearest:
                        let xi = min(max(Int(x.rounded()), 0), nx - 1)
                        let yi = min(max(Int(y.rounded()), 0), ny - 1)
                        let zi = min(max(Int(z.rounded()), 0), nz - 1)
                        let s = (zi * ny + yi) * nx + xi
                        for c in 0..<channels { dst[c * dstPlane + o] = src[c * srcPlane + s] }
                    case .linear:
                        let cx = min(max(x, 0), Double(nx - 1)), cy = min(max(y, 0), Double(ny - 1)), cz = min(max(z, 0), Double(nz - 1))
                        let x0 = min(Int(cx), max(nx - 2, 0)), y0 = min(Int(cy), max(ny - 2, 0)), z0 = min(Int(cz), max(nz - 2, 0))
                        let fx = Float(cx - Double(x0)), fy = Float(cy - Double(y0)), fz = Float(cz - Double(z0))
                        let x1 = min(x0 + 1, nx - 1), y1 = min(y0 + 1, ny - 1), z1 = min(z0 + 1, nz - 1)
                        let i000 = (z0 * ny + y0) * nx + x0, i001 = (z0 * ny + y0) * nx + x1
                        let i010 = (z0 * ny + y1) * nx + x0, i011 = (z0 * ny + y1) * nx + x1
                        let i100 = (z1 * ny + y0) * nx + x0, i101 = (z1 * ny + y0) * nx + x1
                        let i110 = (z1 * ny + y1) * nx + x0, i111 = (z1 * ny + y1) * nx + x1
                        for c in 0..<channels {
                            let p = src + c * srcPlane
                            let a00 = p[i000] + (p[i001] - p[i000]) * fx, a01 = p[i010] + (p[i011] - p[i010]) * fx
                            let a10 = p[i100] + (p[i101] - p[i100]) * fx, a11 = p[i110] + (p[i111] - p[i110]) * fx
                            let b0 = a00 + (a01 - a00) * fy, b1 = a10 + (a11 - a10) * fy
                            dst[c * dstPlane + o] = b0 + (b1 - b0) * fz
                        }
                    }
                }
            }
        }
        return out
    }
}
