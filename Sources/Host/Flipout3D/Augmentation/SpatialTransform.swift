// Rotation and scaling of a training patch: the patch is resampled from the whole case around its centre, so no empty border enters (nnU-Net's larger-patch-then-crop).
import Foundation

/// A linear map of patch offsets (voxels, (z, y, x) order) to case offsets: case position =
/// centre + matrix · (patch position − (size − 1)/2). Identity = a plain crop.
public struct SpatialTransform: Sendable, Equatable {
    /// 3×3, row-major, (z, y, x) order.
    public var matrix: [[Double]]

    public static let identity = SpatialTransform(matrix: [[1, 0, 0], [0, 1, 0], [0, 0, 1]])

    public init(matrix: [[Double]]) {
        precondition(matrix.count == 3 && matrix.allSatisfy { $0.count == 3 }, "SpatialTransform: 3×3 needed")
        self.matrix = matrix
    }

    /// R_d(angles[0]) · R_h(angles[1]) · R_w(angles[2]) · scale: rotations about the D, H and W axes
    /// (radians, right-handed in (z, y, x)), then one scale factor for every axis (> 1 takes a
    /// larger region of the case into the patch: the anatomy looks smaller, as batchgeneratorsv2's
    /// scaling of the sampling grid).
    public init(angles: [Double], scale: Double) {
        func rot(_ axis: Int, _ a: Double) -> [[Double]] {
            var m: [[Double]] = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
            let (i, j) = [(1, 2), (0, 2), (0, 1)][axis]
            m[i][i] = cos(a); m[i][j] = -sin(a); m[j][i] = sin(a); m[j][j] = cos(a)
            return m
        }
        var m = Self.multiply(Self.multiply(rot(0, angles[0]), rot(1, angles[1])), rot(2, angles[2]))
        for r in 0..<3 { for c in 0..<3 { m[r][c] *= scale } }
        self.init(matrix: m)
    }

    static func multiply(_ a: [[Double]], _ b: [[Double]]) -> [[Double]] {
        (0..<3).map { r in (0..<3).map { c in (0..<3).reduce(0) { $0 + a[r][$1] * b[$1][c] } } }
    }

    /// Resamples image (C, D, H, W) trilinearly and label (1, D, H, W) by nearest voxel into
    /// out (C, size) and outLabel (1, size); positions outside the case take 0 (image) and 0
    /// (background), as batchgeneratorsv2's constant borders. `centre` in case voxels (z, y, x).
    public func sample(image: Tensor, label: Tensor?, centre: [Double], size: [Int],
                       into out: UnsafeMutablePointer<Float>, labelInto outLabel: UnsafeMutablePointer<Float>?) {
        let (c, d, h, w) = (image.shape[0], image.shape[1], image.shape[2], image.shape[3])
        let plane = d * h * w, pv = size.reduce(1, *)
        let half = size.map { Double($0 - 1) / 2 }
        let m = matrix, src = image.data, lab = label?.data
        for z in 0..<size[0] { for y in 0..<size[1] {
            let oz = Double(z) - half[0], oy = Double(y) - half[1]
            for x in 0..<size[2] {
                let ox = Double(x) - half[2]
                let pz = centre[0] + m[0][0] * oz + m[0][1] * oy + m[0][2] * ox
                let py = centre[1] + m[1][0] * oz + m[1][1] * oy + m[1][2] * ox
                let px = centre[2] + m[2][0] * oz + m[2][1] * oy + m[2][2] * ox
                let o = (z * size[1] + y) * size[2] + x
                if let lab, let outLabel {
                    let (nz, ny, nx) = (Int(pz.rounded()), Int(py.rounded()), Int(px.rounded()))
                    outLabel[o] = nz >= 0 && nz < d && ny >= 0 && ny < h && nx >= 0 && nx < w ? lab[(nz * h + ny) * w + nx] : 0
                }
                // Trilinear with zero outside: each of the 8 corners contributes only if inside.
                let z0 = Int(pz.rounded(.down)), y0 = Int(py.rounded(.down)), x0 = Int(px.rounded(.down))
                let fz = pz - Double(z0), fy = py - Double(y0), fx = px - Double(x0)
                for ch in 0..<c { out[ch * pv + o] = 0 }
                guard z0 >= -1 && z0 < d && y0 >= -1 && y0 < h && x0 >= -1 && x0 < w else { continue }
                for dz in 0...1 { let zz = z0 + dz; guard zz >= 0 && zz < d else { continue }
                    let wz = dz == 0 ? 1 - fz : fz
                    for dy in 0...1 { let yy = y0 + dy; guard yy >= 0 && yy < h else { continue }
                        let wzy = wz * (dy == 0 ? 1 - fy : fy)
                        for dx in 0...1 { let xx = x0 + dx; guard xx >= 0 && xx < w else { continue }
                            let wt = Float(wzy * (dx == 0 ? 1 - fx : fx))
                            guard wt != 0 else { continue }
                            let s = (zz * h + yy) * w + xx
                            for ch in 0..<c { out[ch * pv + o] += wt * src[ch * plane + s] }
                        }
                    }
                }
            }
        } }
    }
}
