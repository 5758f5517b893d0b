// Voxel-to-world affines: arithmetic, the NIfTI header's affine (sform, else qform), orientation codes.
import Foundation

extension Affine {
    /// self · other (apply `other` first).
    public func concatenating(_ other: Affine) -> Affine {
        var r = [[Double]](repeating: [0, 0, 0, 0], count: 4)
        for i in 0..<4 { for j in 0..<4 { r[i][j] = (0..<4).reduce(0) { $0 + m[i][$1] * other.m[$1][j] } } }
        return Affine(r)
    }

    /// The inverse of an affine whose last row is (0, 0, 0, 1); traps on a singular 3×3 part
    /// (callers check `isInvertible` on user data first).
    public var inverse: Affine {
        let a = m
        let det = determinant3
        precondition(isInvertible, "Affine.inverse: singular matrix \(self)")
        var inv = [[Double]](repeating: [0, 0, 0, 0], count: 4)
        inv[0][0] = (a[1][1] * a[2][2] - a[1][2] * a[2][1]) / det
        inv[0][1] = (a[0][2] * a[2][1] - a[0][1] * a[2][2]) / det
        inv[0][2] = (a[0][1] * a[1][2] - a[0][2] * a[1][1]) / det
        inv[1][0] = (a[1][2] * a[2][0] - a[1][0] * a[2][2]) / det
        inv[1][1] = (a[0][0] * a[2][2] - a[0][2] * a[2][0]) / det
        inv[1][2] = (a[0][2] * a[1][0] - a[0][0] * a[1][2]) / det
        inv[2][0] = (a[1][0] * a[2][1] - a[1][1] * a[2][0]) / det
        inv[2][1] = (a[0][1] * a[2][0] - a[0][0] * a[2][1]) / det
        inv[2][2] = (a[0][0] * a[1][1] - a[0][1] * a[1][0]) / det
        for i in 0..<3 { inv[i][3] = -(0..<3).reduce(0) { $0 + inv[i][$1] * a[$1][3] } }
        inv[3] = [0, 0, 0, 1]
        return Affine(inv)
    }

    /// Determinant of the 3×3 linear part.
    public var determinant3: Double {
        let a = m
        return a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
            - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
            + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
    }

    /// Finite, with a nonsingular linear part and last row (0, 0, 0, 1).
    public var isInvertible: Bool {
        m.allSatisfy { $0.allSatisfy(\.isFinite) } && m[3] == [0, 0, 0, 1]
            && abs(determinant3) > 1e-12 * max(1, spacing.reduce(1, *))
    }

    /// The point self · (p, 1).
    public func apply(_ p: [Double]) -> [Double] {
        (0..<3).map { i in m[i][0] * p[0] + m[i][1] * p[1] + m[i][2] * p[2] + m[i][3] }
    }

    /// Voxel sizes along (i, j, k): the lengths of the first three columns.
    public var spacing: [Double] {
        (0..<3).map { (j: Int) -> Double in
            let x = m[0][j], y = m[1][j], z = m[2][j]
            return (x * x + y * y + z * z).squareRoot()
        }
    }

    /// Same grid up to `tolerance` mm on every entry (what "the label grid is the image grid" means).
    public func isClose(to other: Affine, tolerance: Double = 1e-3) -> Bool {
        (0..<3).allSatisfy { i in (0..<4).allSatisfy { j in abs(m[i][j] - other.m[i][j]) <= tolerance } }
    }
}

/// Which world axis each voxel axis runs along, and in which direction: nibabel's
/// `io_orientation` / `aff2axcodes`, for axis-aligned or oblique affines (each voxel axis takes
/// the world axis its direction is closest to; ties go to the first axis left).
public struct AxisOrientation: Equatable, Sendable, CustomStringConvertible {
    /// worldAxis[a] = 0, 1, 2 for x, y, z: the world axis voxel axis a (i, j, k) runs along.
    public let worldAxis: [Int]
    /// +1 when voxel axis a runs towards R, A or S; -1 towards L, P or I.
    public let sign: [Int]

    public init(_ affine: Affine) {
        var used = Set<Int>(), axes = [Int](repeating: 0, count: 3), signs = [Int](repeating: 1, count: 3)
        // Assign the voxel axis with the most dominant component first, as nibabel does.
        var remaining = [0, 1, 2]
        while !remaining.isEmpty {
            var best = (a: remaining[0], w: 0, v: -1.0)
            for a in remaining {
                let n = affine.spacing[a]
                for w in 0..<3 where !used.contains(w) {
                    let v = n > 0 ? abs(affine.m[w][a]) / n : 0
                    if v > best.v { best = (a, w, v) }
                }
            }
            axes[best.a] = best.w
            signs[best.a] = affine.m[best.w][best.a] < 0 ? -1 : 1
            used.insert(best.w)
            remaining.removeAll { $0 == best.a }
        }
        worldAxis = axes; sign = signs
    }

    /// Axis codes as nibabel prints them ("RAS", "LPS", "LAS", ...), one letter per voxel axis i, j, k.
    public var description: String {
        let letters: [[Character]] = [["L", "R"], ["P", "A"], ["I", "S"]]
        return String((0..<3).map { letters[worldAxis[$0]][sign[$0] > 0 ? 1 : 0] })
    }

    public var isRAS: Bool { worldAxis == [0, 1, 2] && sign == [1, 1, 1] }
}

extension NIfTIHeader {
    /// The voxel-to-world (RAS mm) affine by the NIfTI-1 rules: the sform if sform_code > 0, else
    /// the qform if qform_code > 0, else "method 1" (pixdim scaling only, origin at voxel 0).
    /// Spatial units other than mm (xyzt_units: 1 = m, 3 = µm) are converted to mm.
    public var affine: Affine {
        let rows: [[Double]]
        if sformCode > 0 {
            rows = sformMatrix.map { $0.map(Double.init) }
        } else if qformCode > 0 {
            rows = qformMatrix.map { $0.map(Double.init) }
        } else {
            rows = [[Double(pixdim[1]), 0, 0, 0], [0, Double(pixdim[2]), 0, 0], [0, 0, Double(pixdim[3]), 0]]
        }
        let unit: Double
        switch xyztUnits & 0x07 {
        case 1: unit = 1000 // metres
        case 3: unit = 0.001 // micrometres
        default: unit = 1 // mm, or unknown (taken as mm, as nibabel and ITK do)
        }
        return Affine(rows.map { $0.map { $0 * unit } } + [[0, 0, 0, 1]])
    }

    /// A header for a (D, H, W) grid whose voxel (i, j, k) sits at `affine` · (i, j, k, 1) mm:
    /// sform from the affine (code 1, scanner), qform derived from it (setQformFromSform).
    public init(shape: [Int], affine: Affine) {
        self.init(shape: shape)
        srowX = affine.m[0].map(Float.init)
        srowY = affine.m[1].map(Float.init)
        srowZ = affine.m[2].map(Float.init)
        sformCode = 1
        setQformFromSform()
    }
}
