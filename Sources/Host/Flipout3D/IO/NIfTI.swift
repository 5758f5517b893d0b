// NIfTI-1 single-file (.nii, .nii.gz) reader and writer over zlib: header struct, typed errors, atomic writes.
//
// Axis order: NIfTI stores x fastest, data index = x + nx*(y + ny*z). In memory a volume is a
// Tensor of shape (D, H, W) = (nz, ny, nx), row-major, so the flat index is the same and no
// permutation happens: tensor[(z*ny + y)*nx + x] is voxel (i=x, j=y, k=z).
import CZlib

/// NIfTI-1 voxel datatypes this reader handles (the `datatype` header field's codes).
public enum NIfTIDatatype: Int16, Sendable, CaseIterable {
    case uint8 = 2
    case int16 = 4
    case int32 = 8
    case float32 = 16
    case float64 = 64
    case int8 = 256
    case uint16 = 512

    public var bytesPerVoxel: Int {
        switch self {
        case .uint8, .int8: return 1
        case .int16, .uint16: return 2
        case .int32, .float32: return 4
        case .float64: return 8
        }
    }
}

/// A NIfTI file that cannot be read or written, naming the file and what is wrong.
public enum NIfTIError: Error, CustomStringConvertible {
    case file(FileIOError)
    case truncated(path: String, expectedBytes: Int, actualBytes: Int)
    case badMagic(path: String, found: String)
    case badHeaderSize(path: String, found: Int32)
    case unsupportedDatatype(path: String, code: Int16)
    case notThreeD(path: String, dims: [Int])
    case compression(path: String, reason: String)
    case shapeMismatch(path: String, tensorShape: [Int], headerDims: [Int])
    /// A header field whose value cannot be right (or exceeds a stated cap), with what is allowed.
    case badField(path: String, field: String, value: String, allowed: String)
    /// Voxels that are NaN or ±inf (after scaling) under the `.refuse` policy.
    case nonFinite(path: String, count: Int, firstIndex: [Int], firstValue: Float)

    public var description: String {
        switch self {
        case .file(let e):
            return e.description
        case let .truncated(path, expected, actual):
            return "\(path): truncated NIfTI file: needs \(expected) bytes (header + voxels), has \(actual); the file is incomplete, copy or download it again"
        case let .badMagic(path, found):
            return "\(path): not a single-file NIfTI-1 volume: magic is \"\(found)\", expected \"n+1\" (.hdr/.img pairs and NIfTI-2 are not supported; convert with e.g. nifti_tool or FSL)"
        case let .badHeaderSize(path, found):
            return "\(path): not a NIfTI-1 file: sizeof_hdr is \(found), expected 348 (NIfTI-2 has 540 and is not supported)"
        case let .unsupportedDatatype(path, code):
            return "\(path): unsupported NIfTI datatype code \(code); supported: uint8 (2), int16 (4), int32 (8), float32 (16), float64 (64), int8 (256), uint16 (512)"
        case let .notThreeD(path, dims):
            return "\(path): expected a 3D volume, dims are \(dims); extract one 3D volume first (e.g. fslroi)"
        case let .compression(path, reason):
            return "\(path): gzip data is corrupt: \(reason); the file is damaged, copy or download it again"
        case let .shapeMismatch(path, shape, dims):
            return "\(path): tensor of shape \(shape) does not match the header's (nz, ny, nx) \(dims)"
        case let .badField(path, field, value, allowed):
            return "\(path): header field \(field) is \(value); \(allowed) (corrupt or not a NIfTI-1 file?)"
        case let .nonFinite(path, count, index, value):
            return "\(path): \(count) voxel\(count == 1 ? " is" : "s are") not finite (NaN or infinite after scl_slope/scl_inter), the first (\(index.count == 4 ? "i, j, k, t" : "i, j, k")) = (\(index.map(String.init).joined(separator: ", "))) is \(value); fix the file, or pass --nonfinite zero (NaN and inf become 0) or --nonfinite clip (NaN becomes 0, inf the volume's finite extreme)"
        }
    }
}

/// The NIfTI-1 header fields, by name. Geometry (dim, pixdim, qform, sform, xyzt_units) is kept
/// verbatim when a derived volume is written with the header of its input.
public struct NIfTIHeader: Sendable, Equatable {
    /// dim[0] is the rank; dim[1..3] are nx, ny, nz.
    public var dim: [Int16] = [3, 1, 1, 1, 1, 1, 1, 1]
    /// pixdim[0] is qfac (±1); pixdim[1..3] are voxel sizes along i, j, k.
    public var pixdim: [Float] = [1, 1, 1, 1, 0, 0, 0, 0]
    public var datatype: Int16 = NIfTIDatatype.float32.rawValue
    public var bitpix: Int16 = 32
    public var voxOffset: Float = 352
    public var sclSlope: Float = 1
    public var sclInter: Float = 0
    public var dimInfo: UInt8 = 0
    public var intentP1: Float = 0, intentP2: Float = 0, intentP3: Float = 0
    public var intentCode: Int16 = 0
    public var intentName: String = ""
    public var sliceStart: Int16 = 0, sliceEnd: Int16 = 0
    public var sliceCode: UInt8 = 0
    public var sliceDuration: Float = 0
    /// Spatial units in bits 0–2 (2 = mm), temporal in bits 3–5.
    public var xyztUnits: UInt8 = 2
    public var calMax: Float = 0, calMin: Float = 0
    public var toffset: Float = 0
    public var descrip: String = ""
    public var auxFile: String = ""
    public var qformCode: Int16 = 0
    public var sformCode: Int16 = 0
    public var quaternB: Float = 0, quaternC: Float = 0, quaternD: Float = 0
    public var qoffsetX: Float = 0, qoffsetY: Float = 0, qoffsetZ: Float = 0
    public var srowX: [Float] = [1, 0, 0, 0]
    public var srowY: [Float] = [0, 1, 0, 0]
    public var srowZ: [Float] = [0, 0, 1, 0]

    public init() {}

    /// A header for a (D, H, W) = (nz, ny, nx) grid with isotropic or given spacing (mm) whose
    /// voxel (0,0,0) sits at `origin`; qform and sform are both set (code 1, scanner) and agree.
    public init(shape: [Int], spacing: [Float] = [1, 1, 1], origin: [Float] = [0, 0, 0]) {
        precondition(shape.count == 3 && spacing.count == 3 && origin.count == 3, "NIfTIHeader(shape:): needs (D, H, W), 3 spacings, 3 origin values")
        dim = [3, Int16(shape[2]), Int16(shape[1]), Int16(shape[0]), 1, 1, 1, 1]
        pixdim = [1, spacing[0], spacing[1], spacing[2], 0, 0, 0, 0]
        srowX = [spacing[0], 0, 0, origin[0]]
        srowY = [0, spacing[1], 0, origin[1]]
        srowZ = [0, 0, spacing[2], origin[2]]
        sformCode = 1
        setQformFromSform()
    }

    public var nx: Int { Int(dim[1]) }
    public var ny: Int { Int(dim[2]) }
    public var nz: Int { Int(dim[3]) }
    /// The in-memory tensor shape (D, H, W) = (nz, ny, nx).
    public var shape: [Int] { [nz, ny, nx] }
    /// Voxel sizes along (i, j, k) = (x, y, z), in the file's spatial unit.
    public var spacing: [Float] { [pixdim[1], pixdim[2], pixdim[3]] }

    /// The sform affine as a 3×4 matrix (rows x, y, z): world = A · (i, j, k, 1).
    public var sformMatrix: [[Float]] { [srowX, srowY, srowZ] }

    /// b² + c² + d² of the qform quaternion, in Double (at most 1 for a rotation).
    public var quaternionNorm2: Double {
        let b = Double(quaternB), c = Double(quaternC), d = Double(quaternD)
        return b * b + c * c + d * d
    }

    /// The qform affine as a 3×4 matrix, from the quaternion, pixdim and qfac (NIfTI-1 method 2).
    public var qformMatrix: [[Float]] {
        let b = Double(quaternB), c = Double(quaternC), d = Double(quaternD)
        let a = (max(0, 1 - (b * b + c * c + d * d))).squareRoot()
        let qfac: Double = pixdim[0] < 0 ? -1 : 1
        let dx = Double(pixdim[1]), dy = Double(pixdim[2]), dz = Double(pixdim[3]) * qfac
        let r: [[Double]] = [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ]
        let off = [qoffsetX, qoffsetY, qoffsetZ]
        return (0..<3).map { i in
            [Float(r[i][0] * dx), Float(r[i][1] * dy), Float(r[i][2] * dz), off[i]]
        }
    }

    /// Sets the qform (quaternion, offsets, qfac in pixdim[0], code = sform code or 1) from the
    /// sform, so both agree (viewers differ in which one they use). The sform's columns must be
    /// orthogonal (rotation times scaling, possibly with a flip); shears are projected away.
    public mutating func setQformFromSform() {
        var m = (0..<3).map { i in (0..<3).map { j in Double(sformMatrix[i][j]) } }
        // Column norms are the voxel sizes.
        var size = [Double](repeating: 1, count: 3)
        for j in 0..<3 {
            let n = (m[0][j] * m[0][j] + m[1][j] * m[1][j] + m[2][j] * m[2][j]).squareRoot()
            size[j] = n > 0 ? n : 1
            for i in 0..<3 { m[i][j] = n > 0 ? m[i][j] / n : (i == j ? 1 : 0) }
        }
        let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
        let qfac: Double = det < 0 ? -1 : 1
        if qfac < 0 { for i in 0..<3 { m[i][2] = -m[i][2] } }
        // Quaternion from a proper rotation matrix (as nifti_mat44_to_quatern).
        var a = 1 + m[0][0] + m[1][1] + m[2][2], b: Double, c: Double, d: Double
        if a > 0.5 {
            a = 0.5 * a.squareRoot()
            b = 0.25 * (m[2][1] - m[1][2]) / a
            c = 0.25 * (m[0][2] - m[2][0]) / a
            d = 0.25 * (m[1][0] - m[0][1]) / a
        } else {
            let xd = 1 + m[0][0] - (m[1][1] + m[2][2])
            let yd = 1 + m[1][1] - (m[0][0] + m[2][2])
            let zd = 1 + m[2][2] - (m[0][0] + m[1][1])
            if xd > 1 {
                b = 0.5 * xd.squareRoot(); c = 0.25 * (m[0][1] + m[1][0]) / b
                d = 0.25 * (m[0][2] + m[2][0]) / b; a = 0.25 * (m[2][1] - m[1][2]) / b
            } else if yd > 1 {
                c = 0.5 * yd.squareRoot(); b = 0.25 * (m[0][1] + m[1][0]) / c
                d = 0.25 * (m[1][2] + m[2][1]) / c; a = 0.25 * (m[0][2] - m[2][0]) / c
            } else {
                d = 0.5 * zd.squareRoot(); b = 0.25 * (m[0][2] + m[2][0]) / d
                c = 0.25 * (m[1][2] + m[2][1]) / d; a = 0.25 * (m[1][0] - m[0][1]) / d
            }
            if a < 0 { a = -a; b = -b; c = -c; d = -d }
        }
        quaternB = Float(b); quaternC = Float(c); quaternD = Float(d)
        qoffsetX = srowX[3]; qoffsetY = srowY[3]; qoffsetZ = srowZ[3]
        pixdim[0] = Float(qfac)
        pixdim[1] = Float(size[0]); pixdim[2] = Float(size[1]); pixdim[3] = Float(size[2])
        qformCode = sformCode > 0 ? sformCode : 1
        if sformCode == 0 { sformCode = 1 }
    }

    /// The header of this grid downsampled by an integer `factor` along every axis after cropping
    /// to `croppedShape` (D, H, W), voxel (0,0,0) of the crop being voxel (0,0,0) of this grid:
    /// each new voxel is the block of factor³ old voxels, so its center moves by (factor-1)/2 old
    /// voxels. Both sform and qform are updated and agree.
    public func downsampled(by factor: Int, croppedShape: [Int]) -> NIfTIHeader {
        precondition(factor >= 1 && croppedShape.count == 3 && croppedShape.allSatisfy { $0 % factor == 0 },
                     "NIfTIHeader.downsampled: shape \(croppedShape) not divisible by \(factor)")
        var h = self
        if h.sformCode == 0 {
            // Only a qform (or nothing): take it as the sform so the geometry carries over.
            let q = qformCode > 0 ? qformMatrix
                : [[pixdim[1], 0, 0, 0], [0, pixdim[2], 0, 0], [0, 0, pixdim[3], 0]]
            h.srowX = q[0]; h.srowY = q[1]; h.srowZ = q[2]
            h.sformCode = max(qformCode, 1)
        }
        let f = Float(factor), shift = (f - 1) / 2
        var rows = [h.srowX, h.srowY, h.srowZ]
        for r in 0..<3 {
            rows[r][3] += (rows[r][0] + rows[r][1] + rows[r][2]) * shift
            for c in 0..<3 { rows[r][c] *= f }
        }
        h.srowX = rows[0]; h.srowY = rows[1]; h.srowZ = rows[2]
        h.dim[0] = 3
        h.dim[1] = Int16(croppedShape[2] / factor); h.dim[2] = Int16(croppedShape[1] / factor); h.dim[3] = Int16(croppedShape[0] / factor)
        for i in 4..<8 { h.dim[i] = 1 }
        h.setQformFromSform()
        return h
    }
}

/// A 3D volume read from a NIfTI file: scaled voxel values and the header.
public struct NIfTIVolume {
    public var header: NIfTIHeader
    /// (D, H, W) = (nz, ny, nx), with scl_slope / scl_inter applied.
    public var data: Tensor
    /// Voxels that were NaN or infinite and were replaced under `NonFinitePolicy.zero` or `.clip`.
    public var nonFiniteReplaced = 0
}

/// What reading does with voxels that are NaN or ±inf (in the file, or after scl_slope/scl_inter,
/// or a float64 beyond Float's range): refuse the file (the default), or replace them.
public enum NonFinitePolicy: String, CaseIterable, Sendable {
    /// Throw `NIfTIError.nonFinite` naming the count and the first voxel.
    case refuse
    /// NaN, +inf and -inf become 0.
    case zero
    /// NaN becomes 0, +inf the largest finite voxel value, -inf the smallest (0 if none is finite).
    case clip
}

/// NIfTI-1 single-file reading and writing.
public enum NIfTI {
    static let headerSize = 348

    /// Largest volume read, in voxels (1 GiB of Float, 645³): a header claiming more is refused before any allocation.
    public static let maxVoxels = 1 << 28
    /// Largest vox_offset accepted (header plus extensions), in bytes.
    public static let maxVoxOffset = 1 << 28
    /// Largest file read (compressed or not), in bytes: zlib takes at most UInt32.max input bytes per call.
    public static let maxFileBytes = Int(UInt32.max)
    /// Decompressed bytes a .nii.gz may hold beyond what its header needs (they are inflated, to
    /// reach and check the gzip trailer, and discarded): 64 MiB inflates in well under a second.
    /// A stream longer than that is refused (a gzip bomb, or a header that understates the data).
    public static let maxGzipSlack = 1 << 26
    /// How far b² + c² + d² of a qform quaternion may exceed 1: nibabel's threshold (3 float32 ulps),
    /// beyond which it refuses the file; within it, a = 0 (as nibabel and nifti1_io).
    public static let quaternionTolerance = 3 * Double(Float.ulpOfOne)

    /// Reads a 3D `.nii` or `.nii.gz` (gzip detected from the content, not the name).
    /// Dimensions beyond the third must be 1. Values come back as Float with scl_slope and
    /// scl_inter applied (when scl_slope is nonzero and finite, as the standard says); voxels that
    /// are then not finite are handled by `nonFinite`. Every header claim is checked against the
    /// file (and `maxVoxels`) before anything is allocated; a .nii.gz is inflated only up to the
    /// bytes its header needs, so a gzip bomb costs no more than the volume it claims.
    public static func read(_ path: String, nonFinite: NonFinitePolicy = .refuse) throws -> NIfTIVolume {
        try read(path, allowFourD: false, nonFinite: nonFinite)
    }

    /// Reads a 3D or 4D `.nii`/`.nii.gz` (e.g. per-class probabilities): data (T, D, H, W), T = dim[4]
    /// (1 for a 3D file). Dimensions beyond the fourth must be 1. Checked as `read` is.
    public static func read4D(_ path: String, nonFinite: NonFinitePolicy = .refuse) throws -> NIfTIVolume {
        try read(path, allowFourD: true, nonFinite: nonFinite)
    }

    static func read(_ path: String, allowFourD: Bool, nonFinite: NonFinitePolicy) throws -> NIfTIVolume {
        let raw: [UInt8]
        do { raw = try FileIO.read(path, limit: maxFileBytes) } catch let e as FileIOError { throw NIfTIError.file(e) }
        return try decode(raw, path: path, allowFourD: allowFourD, nonFinite: nonFinite)
    }

    /// `read` (or `read4D` when `allowFourD`) on a file's bytes (gzip or not); `path` only names the file in errors.
    public static func decode(_ raw: [UInt8], path: String, allowFourD: Bool = false, nonFinite: NonFinitePolicy = .refuse) throws -> NIfTIVolume {
        let isGzip = raw.count >= 2 && raw[0] == 0x1f && raw[1] == 0x8b
        let head = isGzip ? try gunzip(raw, path: path, maxOutput: headerSize) : raw
        let (header, swapped) = try parseHeader(head, path: path, allowFourD: allowFourD)
        let type = NIfTIDatatype(rawValue: header.datatype)!
        let frames = allowFourD ? Int(header.dim[4]) : 1
        let count = header.nx * header.ny * header.nz * frames // bounded by parseHeader
        let offset = Int(header.voxOffset)                     // bounded by parseHeader
        let needed = offset + count * type.bytesPerVoxel
        // The whole gzip stream is inflated, so its CRC-32 and length trailer are checked; bytes past
        // `needed` are discarded as they come, and at most `maxGzipSlack` of them are inflated.
        let bytes = isGzip ? try gunzip(raw, path: path, maxOutput: needed, verify: true) : raw
        guard bytes.count >= offset else {
            throw NIfTIError.badField(path: path, field: "vox_offset", value: "\(offset)",
                                      allowed: "the file holds only \(bytes.count) bytes\(isGzip ? " decompressed" : "")")
        }
        guard bytes.count >= needed else {
            throw NIfTIError.truncated(path: path, expectedBytes: needed, actualBytes: bytes.count)
        }
        let t = Tensor(shape: allowFourD ? [frames] + header.shape : header.shape) // (T, D, H, W) or (D, H, W)
        let out = t.data
        bytes.withUnsafeBytes { raw in
            let base = raw.baseAddress! + offset
            @inline(__always) func u16(_ i: Int) -> UInt16 {
                let v = base.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self); return swapped ? v.byteSwapped : v
            }
            @inline(__always) func u32(_ i: Int) -> UInt32 {
                let v = base.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self); return swapped ? v.byteSwapped : v
            }
            @inline(__always) func u64(_ i: Int) -> UInt64 {
                let v = base.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self); return swapped ? v.byteSwapped : v
            }
            switch type {
            case .uint8: for i in 0..<count { out[i] = Float(base.load(fromByteOffset: i, as: UInt8.self)) }
            case .int8: for i in 0..<count { out[i] = Float(base.load(fromByteOffset: i, as: Int8.self)) }
            case .int16: for i in 0..<count { out[i] = Float(Int16(bitPattern: u16(i))) }
            case .uint16: for i in 0..<count { out[i] = Float(u16(i)) }
            case .int32: for i in 0..<count { out[i] = Float(Int32(bitPattern: u32(i))) }
            case .float32: for i in 0..<count { out[i] = Float(bitPattern: u32(i)) }
            // Beyond Float's range becomes ±inf, which the non-finite policy below then sees.
            case .float64: for i in 0..<count { out[i] = Float(Double(bitPattern: u64(i))) }
            }
        }
        if header.sclSlope != 0 && header.sclSlope.isFinite && header.sclInter.isFinite
            && (header.sclSlope != 1 || header.sclInter != 0) {
            // In Double, so only the final value can overflow Float (to ±inf, seen below).
            let s = Double(header.sclSlope), b = Double(header.sclInter)
            for i in 0..<count { out[i] = Float(Double(out[i]) * s + b) }
        }
        let replaced = try applyNonFinitePolicy(nonFinite, t, header: header, path: path)
        return NIfTIVolume(header: header, data: t, nonFiniteReplaced: replaced)
    }

    /// Finds the voxels that are NaN or ±inf and refuses or replaces them; returns how many were replaced.
    static func applyNonFinitePolicy(_ policy: NonFinitePolicy, _ t: Tensor, header: NIfTIHeader, path: String) throws -> Int {
        let v = t.buffer
        var bad = 0, first = -1, lo = Float.infinity, hi = -Float.infinity
        for i in 0..<v.count {
            if v[i].isFinite { lo = min(lo, v[i]); hi = max(hi, v[i]) } else { bad += 1; if first < 0 { first = i } }
        }
        guard bad > 0 else { return 0 }
        switch policy {
        case .refuse:
            let x = first % header.nx, y = (first / header.nx) % header.ny, z = (first / (header.nx * header.ny)) % header.nz
            let frame = first / (header.nx * header.ny * header.nz)
            throw NIfTIError.nonFinite(path: path, count: bad, firstIndex: [x, y, z] + (frame > 0 ? [frame] : []), firstValue: v[first])
        case .zero:
            for i in 0..<v.count where !v[i].isFinite { v[i] = 0 }
        case .clip:
            if lo > hi { lo = 0; hi = 0 }
            for i in 0..<v.count where !v[i].isFinite { v[i] = v[i].isNaN ? 0 : v[i] > 0 ? hi : lo }
        }
        return bad
    }

    /// Reads only the header (of a .nii.gz, only its first 348 bytes are inflated), checked as `read` checks it.
    public static func readHeader(_ path: String) throws -> NIfTIHeader {
        let raw: [UInt8]
        do { raw = try FileIO.read(path, limit: maxFileBytes) } catch let e as FileIOError { throw NIfTIError.file(e) }
        let isGzip = raw.count >= 2 && raw[0] == 0x1f && raw[1] == 0x8b
        return try parseHeader(isGzip ? try gunzip(raw, path: path, maxOutput: headerSize) : raw, path: path).header
    }

    /// Writes `volume` (D, H, W) = (nz, ny, nx) with `header`'s geometry (dim[1..3] must match the
    /// shape; dims beyond 3 are reset to 1) as `datatype`. A (T, D, H, W) volume with T > 1 is written
    /// as a 4D file (dim[4] = T, e.g. one volume per class). Writes `.nii.gz` when `path` ends in
    /// `.gz`, else `.nii`. scl_slope/scl_inter are reset to 1/0 and cal_min/cal_max to the data
    /// range; integer types round to nearest and clamp (NaN becomes 0). Atomic: nothing is left
    /// half-written at `path`.
    public static func write(_ volume: Tensor, header: NIfTIHeader, datatype: NIfTIDatatype = .float32,
                             to path: String) throws {
        let frames = volume.shape.count == 4 ? volume.shape[0] : 1
        let shape = volume.shape.count == 4 ? Array(volume.shape.dropFirst()) : volume.shape
        guard shape == header.shape, frames >= 1 && frames <= Int(Int16.max) else {
            throw NIfTIError.shapeMismatch(path: path, tensorShape: volume.shape, headerDims: header.shape)
        }
        let h = outputHeader(header, frames: frames, datatype: datatype)
        let count = volume.count
        var lo = Float.infinity, hi = -Float.infinity
        for i in 0..<count where volume.data[i].isFinite { lo = min(lo, volume.data[i]); hi = max(hi, volume.data[i]) }
        if lo > hi { lo = 0; hi = 0 }
        var bytes = encodeHeader(h)
        bytes.append(contentsOf: [0, 0, 0, 0]) // no extensions
        let dataStart = bytes.count
        bytes.append(contentsOf: repeatElement(0, count: count * datatype.bytesPerVoxel))
        let src = volume.data
        func integer(_ v: Float, _ lo: Float, _ hi: Float) -> Float { v.isNaN ? 0 : min(max(v.rounded(), lo), hi) }
        bytes.withUnsafeMutableBytes { raw in
            let base = raw.baseAddress! + dataStart
            switch datatype {
            case .float32: for i in 0..<count { base.storeBytes(of: src[i].bitPattern.littleEndian, toByteOffset: i * 4, as: UInt32.self) }
            case .float64: for i in 0..<count { base.storeBytes(of: Double(src[i]).bitPattern.littleEndian, toByteOffset: i * 8, as: UInt64.self) }
            case .uint8: for i in 0..<count { base.storeBytes(of: UInt8(integer(src[i], 0, 255)), toByteOffset: i, as: UInt8.self) }
            case .int8: for i in 0..<count { base.storeBytes(of: Int8(integer(src[i], -128, 127)), toByteOffset: i, as: Int8.self) }
            case .int16: for i in 0..<count { base.storeBytes(of: Int16(integer(src[i], -32768, 32767)).littleEndian, toByteOffset: i * 2, as: Int16.self) }
            case .uint16: for i in 0..<count { base.storeBytes(of: UInt16(integer(src[i], 0, 65535)).littleEndian, toByteOffset: i * 2, as: UInt16.self) }
            case .int32: for i in 0..<count {
                let v = src[i].isNaN ? 0 : Int32(min(max(Double(src[i]).rounded(), -2147483648), 2147483647))
                base.storeBytes(of: v.littleEndian, toByteOffset: i * 4, as: Int32.self)
            }
            }
        }
        // cal_min / cal_max: the display range, from the values actually stored.
        let isInteger = datatype != .float32 && datatype != .float64
        let calMin = isInteger ? lo.rounded() : lo, calMax = isInteger ? hi.rounded() : hi
        bytes.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: calMax.bitPattern.littleEndian, toByteOffset: 124, as: UInt32.self)
            raw.storeBytes(of: calMin.bitPattern.littleEndian, toByteOffset: 128, as: UInt32.self)
        }
        let output = path.hasSuffix(".gz") ? try gzip(bytes, path: path) : bytes
        do { try FileIO.writeAtomically(output, to: path) } catch let e as FileIOError { throw NIfTIError.file(e) }
    }

    /// The header `write` stores for `header`'s geometry: rank 3 (or 4 with `frames` > 1), the
    /// datatype, vox_offset 352, no scaling. An unused qform (qform_code 0) or sform (sform_code 0)
    /// is copied verbatim unless it is not a rotation or not finite: then the identity, so that
    /// other tools (nibabel refuses b²+c²+d² > 1) can open the output.
    static func outputHeader(_ header: NIfTIHeader, frames: Int, datatype: NIfTIDatatype) -> NIfTIHeader {
        var h = header
        if h.qformCode == 0 && !(h.quaternionNorm2 <= 1 + quaternionTolerance
                                 && [h.qoffsetX, h.qoffsetY, h.qoffsetZ].allSatisfy(\.isFinite)) {
            h.quaternB = 0; h.quaternC = 0; h.quaternD = 0; h.qoffsetX = 0; h.qoffsetY = 0; h.qoffsetZ = 0
        }
        if h.sformCode == 0 && !(h.srowX + h.srowY + h.srowZ).allSatisfy(\.isFinite) {
            h.srowX = [1, 0, 0, 0]; h.srowY = [0, 1, 0, 0]; h.srowZ = [0, 0, 1, 0]
        }
        h.dim[0] = frames > 1 ? 4 : 3
        for i in 4..<8 { h.dim[i] = 1 }
        h.dim[4] = Int16(frames)
        h.datatype = datatype.rawValue
        h.bitpix = Int16(datatype.bytesPerVoxel * 8)
        h.voxOffset = 352
        h.sclSlope = 1; h.sclInter = 0
        return h
    }

    // MARK: - Bytes

    /// Parses the 348-byte header; returns it and whether the file is big-endian.
    static func parseHeader(_ bytes: [UInt8], path: String, allowFourD: Bool = false) throws -> (header: NIfTIHeader, swapped: Bool) {
        guard bytes.count >= headerSize else {
            throw NIfTIError.truncated(path: path, expectedBytes: headerSize, actualBytes: bytes.count)
        }
        let sizeLE = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 0, as: Int32.self) }
        let swapped: Bool
        if sizeLE == 348 { swapped = false } else if sizeLE.byteSwapped == 348 { swapped = true } else {
            throw NIfTIError.badHeaderSize(path: path, found: sizeLE)
        }
        let magic = Array(bytes[344..<348])
        guard magic == [0x6e, 0x2b, 0x31, 0x00] else { // "n+1\0"
            let shown = String(decoding: magic.prefix { $0 != 0 }.map { (32...126).contains($0) ? $0 : 0x3f }, as: UTF8.self)
            throw NIfTIError.badMagic(path: path, found: shown)
        }
        let r = Reader(bytes: bytes, swapped: swapped)
        var h = NIfTIHeader()
        h.dimInfo = r.u8(39)
        h.dim = (0..<8).map { r.i16(40 + 2 * $0) }
        h.intentP1 = r.f32(56); h.intentP2 = r.f32(60); h.intentP3 = r.f32(64)
        h.intentCode = r.i16(68)
        h.datatype = r.i16(70); h.bitpix = r.i16(72)
        h.sliceStart = r.i16(74)
        h.pixdim = (0..<8).map { r.f32(76 + 4 * $0) }
        h.voxOffset = r.f32(108)
        h.sclSlope = r.f32(112); h.sclInter = r.f32(116)
        h.sliceEnd = r.i16(120); h.sliceCode = r.u8(122); h.xyztUnits = r.u8(123)
        h.calMax = r.f32(124); h.calMin = r.f32(128)
        h.sliceDuration = r.f32(132); h.toffset = r.f32(136)
        h.descrip = r.string(148, 80); h.auxFile = r.string(228, 24)
        h.qformCode = r.i16(252); h.sformCode = r.i16(254)
        h.quaternB = r.f32(256); h.quaternC = r.f32(260); h.quaternD = r.f32(264)
        h.qoffsetX = r.f32(268); h.qoffsetY = r.f32(272); h.qoffsetZ = r.f32(276)
        h.srowX = (0..<4).map { r.f32(280 + 4 * $0) }
        h.srowY = (0..<4).map { r.f32(296 + 4 * $0) }
        h.srowZ = (0..<4).map { r.f32(312 + 4 * $0) }
        h.intentName = r.string(328, 16)

        try validate(h, path: path, allowFourD: allowFourD)
        for i in (Int(h.dim[0]) + 1)..<8 { h.dim[i] = 1 }
        return (h, swapped)
    }

    /// Checks every header claim the reader relies on, with checked arithmetic: rank and dims,
    /// the datatype, vox_offset (finite, whole, from 348 to `maxVoxOffset`), the voxel
    /// count (at most `maxVoxels`) and the finite geometry. Errors name the field and its value.
    static func validate(_ h: NIfTIHeader, path: String, allowFourD: Bool = false) throws {
        func bad(_ field: String, _ value: Any, _ allowed: String) -> NIfTIError {
            NIfTIError.badField(path: path, field: field, value: "\(value)", allowed: allowed)
        }
        let rank = Int(h.dim[0])
        guard (1...7).contains(rank) else { throw bad("dim[0] (rank)", rank, "it must be 1 to 7") }
        let dims = (0..<8).map { Int(h.dim[$0]) }
        for i in 1...rank where dims[i] < 1 { throw bad("dim[\(i)]", dims[i], "every size up to dim[0] must be at least 1") }
        let sizes = (1...rank).map { dims[$0] }
        guard rank >= 3, sizes.dropFirst(allowFourD ? 4 : 3).allSatisfy({ $0 == 1 }) else {
            throw NIfTIError.notThreeD(path: path, dims: sizes)
        }
        guard NIfTIDatatype(rawValue: h.datatype) != nil else {
            throw NIfTIError.unsupportedDatatype(path: path, code: h.datatype)
        }
        let frames = allowFourD && rank >= 4 ? dims[4] : 1
        let (xy, o1) = dims[1].multipliedReportingOverflow(by: dims[2])
        let (xyz, o2) = xy.multipliedReportingOverflow(by: dims[3])
        let (count, o3) = xyz.multipliedReportingOverflow(by: frames)
        guard !o1, !o2, !o3, count <= maxVoxels else {
            throw bad(allowFourD ? "dim[1...4]" : "dim[1...3]", "\(dims[1]) x \(dims[2]) x \(dims[3])" + (allowFourD ? " x \(frames)" : ""),
                      "at most \(maxVoxels) voxels are read")
        }
        // Float comparisons first: converting 9.2e18 or NaN to Int would trap or overflow later.
        guard h.voxOffset.isFinite, h.voxOffset >= Float(headerSize), h.voxOffset <= Float(maxVoxOffset),
              h.voxOffset == h.voxOffset.rounded(.towardZero) else {
            throw bad("vox_offset", h.voxOffset, "it must be a whole number of bytes from \(headerSize) to \(maxVoxOffset) and within the file")
        }
        for i in 1...3 where !h.pixdim[i].isFinite { throw bad("pixdim[\(i)]", h.pixdim[i], "voxel sizes must be finite") }
        if h.sformCode > 0 {
            for (name, row) in [("srow_x", h.srowX), ("srow_y", h.srowY), ("srow_z", h.srowZ)] where !row.allSatisfy(\.isFinite) {
                throw bad(name, row, "the sform must be finite")
            }
        }
        if h.qformCode > 0 {
            let q = [h.quaternB, h.quaternC, h.quaternD, h.qoffsetX, h.qoffsetY, h.qoffsetZ]
            guard q.allSatisfy(\.isFinite) else { throw bad("quatern_b/c/d, qoffset_x/y/z", q, "the qform must be finite") }
            let norm2 = h.quaternionNorm2
            guard norm2 <= 1 + quaternionTolerance else {
                throw bad("quatern_b/c/d", "(\(h.quaternB), \(h.quaternC), \(h.quaternD)) with b²+c²+d² = \(norm2)",
                          "a unit quaternion needs b²+c²+d² <= 1 (nibabel refuses this file too); rewrite the qform, e.g. nibabel's img.set_qform(img.affine)")
            }
        }
    }

    struct Reader {
        let bytes: [UInt8]
        let swapped: Bool
        func u8(_ o: Int) -> UInt8 { bytes[o] }
        func i16(_ o: Int) -> Int16 {
            let v = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: o, as: Int16.self) }; return swapped ? v.byteSwapped : v
        }
        func f32(_ o: Int) -> Float {
            let v = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: o, as: UInt32.self) }
            return Float(bitPattern: swapped ? v.byteSwapped : v)
        }
        func string(_ o: Int, _ n: Int) -> String {
            String(decoding: bytes[o..<(o + n)].prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    /// The 348 header bytes, little-endian.
    static func encodeHeader(_ h: NIfTIHeader) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: headerSize)
        func i32(_ o: Int, _ v: Int32) { withUnsafeBytes(of: v.littleEndian) { for k in 0..<4 { b[o + k] = $0[k] } } }
        func i16(_ o: Int, _ v: Int16) { withUnsafeBytes(of: v.littleEndian) { for k in 0..<2 { b[o + k] = $0[k] } } }
        func f32(_ o: Int, _ v: Float) { withUnsafeBytes(of: v.bitPattern.littleEndian) { for k in 0..<4 { b[o + k] = $0[k] } } }
        func str(_ o: Int, _ n: Int, _ s: String) { for (k, c) in s.utf8.prefix(n - 1).enumerated() { b[o + k] = c } }
        i32(0, 348)
        b[38] = 0x72 // regular = 'r'
        b[39] = h.dimInfo
        for k in 0..<8 { i16(40 + 2 * k, h.dim[k]) }
        f32(56, h.intentP1); f32(60, h.intentP2); f32(64, h.intentP3)
        i16(68, h.intentCode); i16(70, h.datatype); i16(72, h.bitpix); i16(74, h.sliceStart)
        for k in 0..<8 { f32(76 + 4 * k, h.pixdim[k]) }
        f32(108, h.voxOffset); f32(112, h.sclSlope); f32(116, h.sclInter)
        i16(120, h.sliceEnd); b[122] = h.sliceCode; b[123] = h.xyztUnits
        f32(124, h.calMax); f32(128, h.calMin); f32(132, h.sliceDuration); f32(136, h.toffset)
        str(148, 80, h.descrip); str(228, 24, h.auxFile)
        i16(252, h.qformCode); i16(254, h.sformCode)
        f32(256, h.quaternB); f32(260, h.quaternC); f32(264, h.quaternD)
        f32(268, h.qoffsetX); f32(272, h.qoffsetY); f32(276, h.qoffsetZ)
        for k in 0..<4 { f32(280 + 4 * k, h.srowX[k]); f32(296 + 4 * k, h.srowY[k]); f32(312 + 4 * k, h.srowZ[k]) }
        str(328, 16, h.intentName)
        b[344] = 0x6e; b[345] = 0x2b; b[346] = 0x31; b[347] = 0
        return b
    }

    // MARK: - zlib

    /// Inflates gzip (or zlib) data, including concatenated gzip members, keeping at most
    /// `maxOutput` bytes, so no more memory than that is ever used. Without `verify` it stops
    /// there (the rest is not inflated). With `verify` it inflates on to the end of the last member,
    /// discarding, so zlib checks every member's CRC-32 and length; a stream that ends early, or
    /// that holds more than `maxGzipSlack` bytes beyond `maxOutput`, is refused.
    static func gunzip(_ input: [UInt8], path: String, maxOutput: Int = Int.max, verify: Bool = false) throws -> [UInt8] {
        var total = 0 // bytes inflated, kept or not
        var out = [UInt8]()
        // ISIZE (last 4 bytes) is the uncompressed size mod 2^32: a capacity hint only, and bounded.
        if input.count >= 18 {
            let n = input.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: input.count - 4, as: UInt32.self) }
            out.reserveCapacity(min(Int(UInt32(littleEndian: n)) + 16, maxOutput, 1 << 30))
        }
        var stream = z_stream()
        guard czlib_inflate_init_auto(&stream) == Z_OK else { throw NIfTIError.compression(path: path, reason: "inflateInit failed") }
        defer { inflateEnd(&stream) }
        var chunk = [UInt8](repeating: 0, count: min(1 << 18, max(verify ? 1 << 18 : maxOutput, 1 << 12)))
        try input.withUnsafeBufferPointer { inBuf in
            stream.next_in = UnsafeMutablePointer(mutating: inBuf.baseAddress!)
            stream.avail_in = UInt32(inBuf.count)
            while true {
                let status: Int32 = chunk.withUnsafeMutableBufferPointer { c in
                    stream.next_out = c.baseAddress
                    stream.avail_out = UInt32(c.count)
                    let s = inflate(&stream, Z_NO_FLUSH)
                    let produced = c.count - Int(stream.avail_out)
                    total += produced
                    out.append(contentsOf: c[0..<min(produced, maxOutput - out.count)])
                    return s
                }
                if out.count >= maxOutput && !verify { return }
                if verify && total - out.count > maxGzipSlack {
                    throw NIfTIError.compression(path: path, reason: "it decompresses to more than \(maxGzipSlack) bytes beyond the \(maxOutput) its header describes (a gzip bomb, or a wrong header)")
                }
                if status == Z_STREAM_END {
                    // Another gzip member may follow.
                    if stream.avail_in >= 2 && stream.next_in[0] == 0x1f && stream.next_in[1] == 0x8b {
                        inflateReset(&stream); continue
                    }
                    return
                }
                if status == Z_OK { continue }
                if status == Z_BUF_ERROR && stream.avail_in == 0 {
                    throw NIfTIError.compression(path: path, reason: "compressed data ends early after \(out.count) decompressed bytes (truncated file)")
                }
                let msg = stream.msg.map { String(cString: $0) } ?? "zlib error \(status)"
                throw NIfTIError.compression(path: path, reason: msg)
            }
        }
        return out
    }

    /// Deflates into a gzip stream (level 6).
    static func gzip(_ input: [UInt8], path: String, level: Int32 = 6) throws -> [UInt8] {
        var stream = z_stream()
        guard czlib_deflate_init_gzip(&stream, level) == Z_OK else {
            throw NIfTIError.compression(path: path, reason: "deflateInit failed")
        }
        defer { deflateEnd(&stream) }
        var out = [UInt8]()
        out.reserveCapacity(Int(deflateBound(&stream, UInt(input.count))))
        var chunk = [UInt8](repeating: 0, count: 1 << 18)
        try input.withUnsafeBufferPointer { inBuf in
            stream.next_in = UnsafeMutablePointer(mutating: inBuf.baseAddress!)
            stream.avail_in = UInt32(inBuf.count)
            while true {
                let status: Int32 = chunk.withUnsafeMutableBufferPointer { c in
                    stream.next_out = c.baseAddress
                    stream.avail_out = UInt32(c.count)
                    let s = deflate(&stream, Z_FINISH)
                    out.append(contentsOf: c[0..<(c.count - Int(stream.avail_out))])
                    return s
                }
                if status == Z_STREAM_END { return }
                if status != Z_OK && status != Z_BUF_ERROR {
                    throw NIfTIError.compression(path: path, reason: "deflate failed with zlib status \(status)")
                }
            }
        }
        return out
    }
}
