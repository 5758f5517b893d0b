// Hostile NIfTI input: header lies (the crash inputs of issue 15, recreated), size bounds, non-finite
// voxels, and every input a fuzzer ever crashed on (Fuzz/regressions), read without a crash.
import Testing
import Foundation
import Flipout3D
import TestSupport

/// A valid little-endian 3D NIfTI-1 file (float32 unless `datatype`), with header fields overridden.
func niftiBytes(dims: [Int16] = [4, 4, 4], datatype: NIfTIDatatype = .float32, values: [Double]? = nil,
                edit: (inout [UInt8]) -> Void = { _ in }) throws -> [UInt8] {
    let n = Int(dims[0]) * Int(dims[1]) * Int(dims[2])
    let v = Tensor(shape: [Int(dims[2]), Int(dims[1]), Int(dims[0])], values: (values ?? (0..<n).map(Double.init)).map { Float($0) })
    let path = NSTemporaryDirectory() + "hostile-\(UUID().uuidString).nii"
    defer { unlink(path) }
    try NIfTI.write(v, header: NIfTIHeader(shape: v.shape), datatype: datatype, to: path)
    var b = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    edit(&b)
    return b
}

func setF32(_ b: inout [UInt8], _ offset: Int, _ v: Float) { withUnsafeBytes(of: v.bitPattern.littleEndian) { for i in 0..<4 { b[offset + i] = $0[i] } } }
func setI16(_ b: inout [UInt8], _ offset: Int, _ v: Int16) { withUnsafeBytes(of: v.littleEndian) { for i in 0..<2 { b[offset + i] = $0[i] } } }

func niftiRefusal(_ bytes: [UInt8], _ policy: NonFinitePolicy = .refuse) -> String {
    do { _ = try NIfTI.decode(bytes, path: "hostile.nii", nonFinite: policy); return "accepted" } catch { return "\(error)" }
}

/// The header lies of issue 15's crashes and their like, each with the field its refusal must name.
let headerLies: [(name: String, edit: (inout [UInt8]) -> Void, expected: String)] = [
    ("vox_offset 9.2e18", { setF32(&$0, 108, 9.2e18) }, "vox_offset is 9.2e+18"),
    ("vox_offset 3e19 (beyond Int)", { setF32(&$0, 108, 3e19) }, "vox_offset is 3e+19"),
    ("vox_offset past the end", { setF32(&$0, 108, 1e6) }, "vox_offset is 1000000"),
    ("vox_offset NaN", { setF32(&$0, 108, .nan) }, "vox_offset is nan"),
    ("vox_offset fractional", { setF32(&$0, 108, 352.5) }, "vox_offset is 352.5"),
    ("dims 32767^3 of float64", { setI16(&$0, 42, 32767); setI16(&$0, 44, 32767); setI16(&$0, 46, 32767); setI16(&$0, 70, 64) }, "dim[1...3] is 32767 x 32767 x 32767"),
    ("negative dim", { setI16(&$0, 44, -3) }, "dim[2] is -3"),
    ("rank 9", { setI16(&$0, 40, 9) }, "dim[0] (rank) is 9"),
    ("more voxels than data", { setI16(&$0, 42, 300); setI16(&$0, 44, 300); setI16(&$0, 46, 300) }, "truncated"),
    ("datatype 1 (binary)", { setI16(&$0, 70, 1) }, "datatype code 1"),
    ("NaN voxel size", { setF32(&$0, 80, .nan) }, "pixdim[1] is nan"),
]

@Suite struct HostileInputTests {
    @Test func headerLiesAreRefusedNamingTheField() throws {
        for lie in headerLies {
            let m = niftiRefusal(try niftiBytes(edit: lie.edit))
            #expect(m.contains(lie.expected) && m.contains("hostile.nii"), "\(lie.name): \(m)")
        }
    }

    @Test func nonFiniteVoxelsAreRefusedOrReplacedAsAsked() throws {
        let nan = try niftiBytes(dims: [2, 2, 2], values: [1, 2, .nan, 4, .infinity, 6, -.infinity, 8])
        let m = niftiRefusal(nan)
        #expect(m.contains("3 voxels are not finite") && m.contains("(i, j, k) = (0, 1, 0) is nan") && m.contains("--nonfinite"), "\(m)")
        #expect(try NIfTI.decode(nan, path: "n", nonFinite: .zero).data.array == [1, 2, 0, 4, 0, 6, 0, 8])
        let clipped = try NIfTI.decode(nan, path: "n", nonFinite: .clip)
        #expect(clipped.data.array == [1, 2, 0, 4, 8, 6, 1, 8] && clipped.nonFiniteReplaced == 3)
        // scl_slope overflowing Float, float64 beyond Float's range, and byte-swapped data: all caught.
        let slope = try niftiBytes(dims: [2, 1, 1], datatype: .int16, values: [100, 1]) { setF32(&$0, 112, 3e38) }
        #expect(niftiRefusal(slope).contains("1 voxel is not finite"))
        let f64 = try niftiBytes(dims: [2, 1, 1], datatype: .float64, values: [1e300, 1])
        #expect(niftiRefusal(f64).contains("1 voxel is not finite"))
        // 0x7FFF at the low end of a float reads as NaN when the header says big-endian data.
        let swapped = try niftiBytes(dims: [1, 1, 1], values: [Double(Float(bitPattern: 0x0000_FF7F))]) { b in
            setI16(&b, 252, 0); setI16(&b, 254, 0) // no qform/sform to swap
            b[0..<4].reverse()
            for o in stride(from: 40, to: 76, by: 2) { b[o..<(o + 2)].reverse() }   // dim, intent, datatype, bitpix, slice_start
            for o in stride(from: 76, to: 120, by: 4) { b[o..<(o + 4)].reverse() }  // pixdim, vox_offset, scl_slope, scl_inter
        }
        #expect(niftiRefusal(swapped).contains("not finite"), "\(niftiRefusal(swapped))")
    }

    @Test func fourDReadsAreCheckedTheSameWay() throws {
        // 16 floats as (T, D, H, W) = (2, 2, 2, 2): dim = [4, 2, 2, 2, 2].
        let four = try niftiBytes(dims: [2, 2, 4], values: (0..<16).map { $0 == 9 ? .nan : Double($0) }) { setI16(&$0, 40, 4); setI16(&$0, 46, 2); setI16(&$0, 48, 2) }
        let v = try NIfTI.decode(four, path: "4d.nii", allowFourD: true, nonFinite: .zero)
        #expect(v.data.shape == [2, 2, 2, 2] && v.data.array == (0..<16).map { $0 == 9 ? 0 : Float($0) })
        #expect(niftiRefusal(four).contains("expected a 3D volume"))
        let m = (try? NIfTI.decode(four, path: "4d.nii", allowFourD: true)).map { _ in "accepted" } ?? ""
        #expect(m.isEmpty)
        #expect { _ = try NIfTI.decode(four, path: "4d.nii", allowFourD: true) } throws: { "\($0)".contains("(i, j, k, t) = (1, 0, 0, 1)") }
        let huge = try niftiBytes(dims: [2, 2, 4]) { setI16(&$0, 40, 4); setI16(&$0, 42, 32767); setI16(&$0, 44, 32767); setI16(&$0, 46, 2); setI16(&$0, 48, 32767) }
        #expect { _ = try NIfTI.decode(huge, path: "4d.nii", allowFourD: true) } throws: { "\($0)".contains("dim[1...4] is 32767 x 32767 x 2 x 32767") }
    }

    @Test func aGzipBombCostsOnlyWhatItsHeaderClaims() throws {
        // 8 MiB of zeros after a 4x4x4 float32 volume: only the 608 bytes the header needs are inflated.
        var raw = try niftiBytes()
        raw += [UInt8](repeating: 0, count: 8 << 20)
        let gz = try gzipped(raw)
        #expect(gz.count < 64 << 10)
        let v = try NIfTI.decode(gz, path: "bomb.nii.gz")
        #expect(v.data.count == 64)
    }

    @Test func fifosDevicesAndFoldersAreRefusedWithoutBlocking() throws {
        let dir = try Fixtures.temporaryDirectory("hostile")
        let fifo = dir.appendingPathComponent("pipe.nii").path
        #expect(mkfifo(fifo, 0o600) == 0)
        for (path, expected) in [(fifo, "FIFO"), ("/dev/zero", "device"), (dir.path, "directory")] {
            #expect { _ = try NIfTI.read(path) } throws: { "\($0)".contains(expected) && "\($0)".contains(path) }
        }
    }

    @Test func everyFuzzRegressionInputIsReadWithoutACrash() throws {
        let root = Fixtures.packageRoot.appendingPathComponent("Fuzz")
        var count = 0
        for (target, read) in [("nifti", { (b: [UInt8]) in _ = try NIfTI.decode(b, path: "r") }),
                               ("safetensors", { (b: [UInt8]) in _ = try Checkpoint.decode(b, path: "r") }),
                               ("foreign-spec", { (b: [UInt8]) in _ = try ForeignPriorSpec(parsing: String(decoding: b, as: UTF8.self)) }),
                               ("json", { (b: [UInt8]) in _ = try StrictJSON.parse(b) })] as [(String, ([UInt8]) throws -> Void)] {
            for folder in ["regressions", "corpus"] {
                let dir = root.appendingPathComponent("\(folder)/\(target)")
                for name in (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? [] {
                    let bytes = [UInt8](try Data(contentsOf: dir.appendingPathComponent(name)))
                    try? read(bytes) // a refusal is fine; a crash fails the whole test run
                    count += 1
                }
            }
        }
        #expect(count >= 10)
    }
}

/// gzip of `bytes` through the system's gzip.
func gzipped(_ bytes: [UInt8]) throws -> [UInt8] {
    let path = NSTemporaryDirectory() + "gz-\(UUID().uuidString)"
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    let r = try Subprocess.run("/usr/bin/env", ["gzip", "-n", path])
    guard r.status == 0 else { throw FixtureError("gzip failed: \(r.stderr)") }
    defer { unlink(path + ".gz") }
    return [UInt8](try Data(contentsOf: URL(fileURLWithPath: path + ".gz")))
}
