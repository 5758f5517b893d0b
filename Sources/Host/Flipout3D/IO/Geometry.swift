// Bounds on the geometry a volume may claim (voxel sizes, coordinates) and on the grid resampling
// makes of it, checked before anything is allocated; the same checks in `datasets check`, training and prediction.
import Foundation

public enum GeometryLimits {
    /// Voxel sizes accepted, mm (the lengths of the affine's columns, after xyzt_units). Below
    /// 1 µm is microscopy, not MRI or CT (and a plan stores spacings to 0.1 µm); above 100 mm a
    /// voxel is a hand wide, which means a wrong unit (xyzt_units metres on mm values gives 1000 mm)
    /// or a wrong scaling, never a scan.
    public static let voxelSize: ClosedRange<Double> = 1e-3...100
    /// Largest |world coordinate| of voxel (0, 0, 0) accepted, mm (1 km); scanner coordinates are within a few metres.
    public static let coordinate: Double = 1e6
    /// Largest grid resampling may create, voxels per channel: the reader's cap (`NIfTI.maxVoxels`).
    public static let gridVoxels = NIfTI.maxVoxels
}

/// A volume whose geometry is out of bounds, or whose resampled grid would be too large.
public struct VolumeGeometryError: Error, CustomStringConvertible, Equatable {
    public enum Kind: Sendable, Equatable {
        /// The file's own geometry (voxel size, coordinates, affine) cannot be right: a bad input file.
        case file
        /// The file is plausible, but resampled to the requested spacing it would exceed `GeometryLimits.gridVoxels`.
        case grid
    }
    public let kind: Kind
    public let path: String
    public let reason: String
    public var description: String { "\(path): \(reason)" }
}

extension VoxelGrid {
    /// Throws unless the affine is finite and invertible, every voxel size is within
    /// `GeometryLimits.voxelSize` and voxel (0, 0, 0) lies within `GeometryLimits.coordinate` mm.
    /// `header` (when given) adds what the header said (units) to the message.
    public func checkGeometry(path: String, header: NIfTIHeader? = nil) throws {
        func fail(_ s: String) -> VolumeGeometryError { VolumeGeometryError(kind: .file, path: path, reason: s) }
        let fix = "fix the header (sform/qform, pixdim, xyzt_units; e.g. with nibabel or fslorient)"
        guard affine.m.allSatisfy({ $0.allSatisfy(\.isFinite) }) else { throw fail("the voxel-to-world affine [\(affine)] is not finite; \(fix)") }
        let sizes = affine.spacing
        let axes = ["i", "j", "k"]
        for a in 0..<3 where !GeometryLimits.voxelSize.contains(sizes[a]) {
            var unit = ""
            if let h = header {
                switch h.xyztUnits & 0x07 {
                case 1: unit = " (xyzt_units says metres, so each header value is multiplied by 1000; if the values are mm, set xyzt_units to 2 = mm)"
                case 3: unit = " (xyzt_units says micrometres, so each header value is divided by 1000)"
                default: break
                }
            }
            throw fail("the voxel size along axis \(axes[a]) is \(String(format: "%.6g", sizes[a])) mm\(unit); voxel sizes must be from "
                       + "\(String(format: "%g", GeometryLimits.voxelSize.lowerBound)) to \(String(format: "%g", GeometryLimits.voxelSize.upperBound)) mm; \(fix)")
        }
        for r in 0..<3 where !(abs(affine.m[r][3]) <= GeometryLimits.coordinate) {
            throw fail("voxel (0, 0, 0) sits at \(["x", "y", "z"][r]) = \(String(format: "%.6g", affine.m[r][3])) mm; world coordinates beyond "
                       + "\(String(format: "%g", GeometryLimits.coordinate)) mm (1 km) cannot be a scan; \(fix)")
        }
        guard affine.isInvertible else { throw fail("the voxel-to-world affine [\(affine)] is singular (its voxel axes are not independent); \(fix)") }
    }

    /// The shape (D, H, W) of `reorientedToRAS(spacing:)`, computed in Double so no size can
    /// overflow; throws `VolumeGeometryError` (kind .grid) naming the axis and the spacings when the grid
    /// would exceed `GeometryLimits.gridVoxels`. `option` names what chose `spacing` (for the advice).
    public func checkedRASGrid(spacing: [Double], path: String, option: String = "--spacing") throws -> VoxelGrid {
        let sizes = rasSizes(spacing: spacing) // (D, H, W)
        let total = sizes.reduce(1, *)
        guard total <= Double(GeometryLimits.gridVoxels) else {
            let source = rasSourceGeometry
            let names = ["D (S)", "H (A)", "W (R)"]
            let worst = (0..<3).max { sizes[$0] / Double(source.shape[$0]) < sizes[$1] / Double(source.shape[$1]) }!
            let shown = sizes.map { String(format: "%.0f", $0) }.joined(separator: " x ")
            throw VolumeGeometryError(kind: .grid, path: path, reason:
                "resampled to spacing (D, H, W) = (\(spacing.map { String(format: "%g", $0) }.joined(separator: ", "))) mm the grid would be \(shown) = "
                + "\(String(format: "%.3g", total)) voxels, over the cap of \(GeometryLimits.gridVoxels); along axis \(names[worst]) the file has "
                + "\(source.shape[worst]) voxels of \(String(format: "%g", source.spacing[worst])) mm, resampled to \(String(format: "%g", spacing[worst])) mm; "
                + "check the file's voxel size (pixdim, sform, xyzt_units) or choose a coarser \(option)")
        }
        return reorientedToRAS(spacing: spacing)
    }

    /// Voxel counts (D, H, W) on the RAS grid at `spacing`, as `reorientedToRAS` makes them, in Double.
    func rasSizes(spacing: [Double]) -> [Double] {
        let source = rasSourceGeometry
        return (0..<3).map { a in max(1, (Double(source.shape[a]) * source.spacing[a] / spacing[a]).rounded()) }
    }

    /// The source grid's spacing and shape in RAS tensor order (D, H, W), before resampling.
    public var rasSourceGeometry: (spacing: [Double], shape: [Int]) {
        let o = AxisOrientation(affine), sp = affine.spacing, n = sizeIJK
        var s = [0.0, 0, 0], m = [0, 0, 0]
        for a in 0..<3 { s[o.worldAxis[a]] = sp[a]; m[o.worldAxis[a]] = n[a] }
        return ([s[2], s[1], s[0]], [m[2], m[1], m[0]])
    }
}
