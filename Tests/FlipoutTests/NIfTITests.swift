// NIfTI: round trips (.nii, .nii.gz), header geometry kept, axis order, hand-built files, clear errors, Colin27 header.
import Foundation
import Testing
import Flipout3D
import TestSupport

private func tempDir() throws -> URL {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("flipout-nifti-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return dir
}

/// A header with a rotated, anisotropic, flipped grid and non-default fields everywhere.
private func oddHeader(shape: [Int]) -> NIfTIHeader {
    var h = NIfTIHeader(shape: shape, spacing: [0.9, 1.2, 2.5], origin: [-10, 20, -30])
    // Rotate 30° about z and flip the k axis.
    let c: Float = 0.8660254, s: Float = 0.5
    h.srowX = [0.9 * c, -1.2 * s, 0, -10]
    h.srowY = [0.9 * s, 1.2 * c, 0, 20]
    h.srowZ = [0, 0, -2.5, -30]
    h.sformCode = 4
    h.setQformFromSform()
    h.xyztUnits = 10 // mm + s
    h.descrip = "flipout test"
    h.intentName = "probe"
    return h
}

@Test func niftiRoundTripsFloat32KeepingGeometry() throws {
    let dir = try tempDir(); defer { try? FileManager.default.removeItem(at: dir) }
    let shape = [5, 4, 3] // (D, H, W) = (nz, ny, nx)
    let v = Tensor(shape: shape, values: testValues(60, seed: 11).map { $0 * 1000 })
    let h = oddHeader(shape: shape)
    for name in ["a.nii", "a.nii.gz"] {
        let path = dir.appendingPathComponent(name).path
        try NIfTI.write(v, header: h, to: path)
        let back = try NIfTI.read(path)
        #expect(back.data.shape == shape)
        #expect(back.data.array == v.array, "\(name): values differ")
        let g = back.header
        #expect(g.dim == [3, 3, 4, 5, 1, 1, 1, 1])
        #expect(g.pixdim == h.pixdim && g.srowX == h.srowX && g.srowY == h.srowY && g.srowZ == h.srowZ)
        #expect(g.qformCode == 4 && g.sformCode == 4 && g.xyztUnits == 10)
        #expect(g.quaternB == h.quaternB && g.quaternC == h.quaternC && g.quaternD == h.quaternD)
        #expect(g.qoffsetX == -10 && g.qoffsetY == 20 && g.qoffsetZ == -30)
        #expect(g.descrip == "flipout test" && g.intentName == "probe" && g.datatype == 16 && g.bitpix == 32)
    }
    // gzip really compresses and starts with the gzip magic.
    let gz = try Data(contentsOf: dir.appendingPathComponent("a.nii.gz"))
    #expect(gz[0] == 0x1f && gz[1] == 0x8b)
    #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() == ["a.nii", "a.nii.gz"]) // no temp files
}

@Test func niftiQformAgreesWithSform() {
    let h = oddHeader(shape: [2, 2, 2])
    #expect(h.pixdim[0] == -1) // the flip shows up as qfac
    for (q, s) in zip(h.qformMatrix, h.sformMatrix) {
        for k in 0..<4 { #expect(abs(q[k] - s[k]) < 1e-5, "qform \(h.qformMatrix) vs sform \(h.sformMatrix)") }
    }
    // Downsampling a 1 mm grid by 2: new voxel 0 is the mean of old voxels 0 and 1.
    var one = NIfTIHeader(shape: [4, 6, 8], origin: [-90, -125, -71])
    one.sformCode = 4
    let two = one.downsampled(by: 2, croppedShape: [4, 6, 8])
    #expect(two.dim[1] == 4 && two.dim[2] == 3 && two.dim[3] == 2)
    #expect(two.srowX == [2, 0, 0, -89.5] && two.srowY == [0, 2, 0, -124.5] && two.srowZ == [0, 0, 2, -70.5])
    #expect(two.pixdim[1] == 2 && two.qformCode == 4 && two.qoffsetX == -89.5)
}

@Test func niftiStoresXFastest() throws {
    let dir = try tempDir(); defer { try? FileManager.default.removeItem(at: dir) }
    let (nz, ny, nx) = (2, 3, 4)
    let v = Tensor(shape: [nz, ny, nx])
    for z in 0..<nz { for y in 0..<ny { for x in 0..<nx { v.data[(z * ny + y) * nx + x] = Float(x + 10 * y + 100 * z) } } }
    let path = dir.appendingPathComponent("axes.nii").path
    try NIfTI.write(v, header: NIfTIHeader(shape: [nz, ny, nx]), to: path)
    let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    #expect(bytes.count == 352 + 4 * 24)
    func i16(_ o: Int) -> Int { Int(Int16(bytes[o]) | Int16(bytes[o + 1]) << 8) }
    let dims: [Int] = [i16(42), i16(44), i16(46)]
    #expect(dims == [nx, ny, nz]) // dim[1..3]
    func f32(_ o: Int) -> Float { Float(bitPattern: UInt32(bytes[o]) | UInt32(bytes[o + 1]) << 8 | UInt32(bytes[o + 2]) << 16 | UInt32(bytes[o + 3]) << 24) }
    // Voxel (x=3, y=2, z=1) at data index x + nx·(y + ny·z).
    #expect(f32(352 + 4 * (3 + nx * (2 + ny * 1))) == 123)
    #expect(f32(352 + 4 * 1) == 1)
}

/// A minimal NIfTI-1 file built byte by byte (independent of the writer).
private func handMadeNIfTI(datatype: Int16, bitpix: Int16, dims: [Int16], slope: Float, inter: Float,
                           bigEndian: Bool = false, magic: [UInt8] = Array("n+1\0".utf8), payload: [UInt8]) -> [UInt8] {
    var b = [UInt8](repeating: 0, count: 352)
    func put<T: FixedWidthInteger>(_ o: Int, _ v: T) {
        let x = bigEndian ? v.bigEndian : v.littleEndian
        withUnsafeBytes(of: x) { for k in 0..<MemoryLayout<T>.size { b[o + k] = $0[k] } }
    }
    put(0, Int32(348))
    for (k, d) in dims.enumerated() { put(40 + 2 * k, d) }
    put(70, datatype); put(72, bitpix)
    for k in 0..<4 { put(76 + 4 * k, Float(1).bitPattern) }
    put(108, Float(352).bitPattern); put(112, slope.bitPattern); put(116, inter.bitPattern)
    for (k, m) in magic.enumerated() { b[344 + k] = m }
    return b + payload
}

@Test func niftiReadsHandMadeFilesWithScaling() throws {
    let dir = try tempDir(); defer { try? FileManager.default.removeItem(at: dir) }
    // int16 little-endian, 2×1×1 with a 4th dim of 1, slope 2, intercept 1: values −3, 7 → −5, 15.
    let le = handMadeNIfTI(datatype: 4, bitpix: 16, dims: [4, 2, 1, 1, 1, 1, 1, 1], slope: 2, inter: 1,
                           payload: [0xfd, 0xff, 0x07, 0x00])
    let p1 = dir.appendingPathComponent("le.nii").path
    try Data(le).write(to: URL(fileURLWithPath: p1))
    let v1 = try NIfTI.read(p1)
    #expect(v1.data.shape == [1, 1, 2] && v1.data.array == [-5, 15])
    // float64 big-endian, slope 0 (= no scaling): 1.5, −2.
    var payload: [UInt8] = []
    for d in [1.5, -2.0] { withUnsafeBytes(of: d.bitPattern.bigEndian) { payload += $0 } }
    let be = handMadeNIfTI(datatype: 64, bitpix: 64, dims: [3, 1, 2, 1, 1, 1, 1, 1], slope: 0, inter: 5, bigEndian: true, payload: payload)
    let p2 = dir.appendingPathComponent("be.nii").path
    try Data(be).write(to: URL(fileURLWithPath: p2))
    let v2 = try NIfTI.read(p2)
    #expect(v2.data.shape == [1, 2, 1] && v2.data.array == [1.5, -2])
    // uint8 and int32.
    let u8 = handMadeNIfTI(datatype: 2, bitpix: 8, dims: [3, 3, 1, 1, 1, 1, 1, 1], slope: 1, inter: 0, payload: [0, 128, 255])
    let p3 = dir.appendingPathComponent("u8.nii").path
    try Data(u8).write(to: URL(fileURLWithPath: p3))
    #expect(try NIfTI.read(p3).data.array == [0, 128, 255])
    let i32 = handMadeNIfTI(datatype: 8, bitpix: 32, dims: [3, 1, 1, 1, 1, 1, 1, 1], slope: 0.5, inter: 0, payload: [0x00, 0x00, 0x01, 0x00])
    let p4 = dir.appendingPathComponent("i32.nii").path
    try Data(i32).write(to: URL(fileURLWithPath: p4))
    #expect(try NIfTI.read(p4).data.array == [32768])
}

@Test func niftiWritesLabelMapsAsIntegers() throws {
    let dir = try tempDir(); defer { try? FileManager.default.removeItem(at: dir) }
    let v = Tensor(shape: [1, 1, 5], values: [0, 1, 0.6, 300, -2])
    let h = NIfTIHeader(shape: [1, 1, 5])
    let p8 = dir.appendingPathComponent("x_seg.nii.gz").path
    try NIfTI.write(v, header: h, datatype: .uint8, to: p8)
    let r8 = try NIfTI.read(p8)
    #expect(r8.header.datatype == 2 && r8.header.bitpix == 8 && r8.data.array == [0, 1, 1, 255, 0])
    let p16 = dir.appendingPathComponent("x16_seg.nii").path
    try NIfTI.write(v, header: h, datatype: .int16, to: p16)
    let r16 = try NIfTI.read(p16)
    #expect(r16.header.datatype == 4 && r16.data.array == [0, 1, 1, 300, -2])
    #expect(r16.header.calMin == -2 && r16.header.calMax == 300)
}

@Test func niftiErrorsNameTheFileAndTheProblem() throws {
    let dir = try tempDir(); defer { try? FileManager.default.removeItem(at: dir) }
    func message(_ path: String) -> String {
        do { _ = try NIfTI.read(path); return "no error" } catch { return "\(error)" }
    }
    let missing = dir.appendingPathComponent("missing.nii").path
    #expect(message(missing).contains(missing) && message(missing).contains("no such file"))

    let v = Tensor(shape: [4, 4, 4], values: testValues(64, seed: 3))
    let good = dir.appendingPathComponent("good.nii").path
    try NIfTI.write(v, header: NIfTIHeader(shape: [4, 4, 4]), to: good)
    let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: good)))

    let cut = dir.appendingPathComponent("cut.nii").path
    try Data(bytes.prefix(400)).write(to: URL(fileURLWithPath: cut))
    #expect(message(cut).contains(cut) && message(cut).contains("truncated") && message(cut).contains("needs 608 bytes"))
    let short = dir.appendingPathComponent("short.nii").path
    try Data(bytes.prefix(100)).write(to: URL(fileURLWithPath: short))
    #expect(message(short).contains("truncated"))

    var bad = bytes; bad[344] = 0x78 // "x+1"
    let badMagic = dir.appendingPathComponent("magic.nii").path
    try Data(bad).write(to: URL(fileURLWithPath: badMagic))
    #expect(message(badMagic).contains(badMagic) && message(badMagic).contains("magic"))

    var four = bytes; four[40] = 4; four[48] = 2 // dim[0] = 4, dim[4] = 2
    let fourD = dir.appendingPathComponent("4d.nii").path
    try Data(four).write(to: URL(fileURLWithPath: fourD))
    #expect(message(fourD).contains("expected a 3D volume") && message(fourD).contains("[4, 4, 4, 2]"))

    var type = bytes; type[70] = 128 // RGB24
    let rgb = dir.appendingPathComponent("rgb.nii").path
    try Data(type).write(to: URL(fileURLWithPath: rgb))
    #expect(message(rgb).contains("unsupported NIfTI datatype code 128"))

    let gzPath = dir.appendingPathComponent("good.nii.gz").path
    try NIfTI.write(v, header: NIfTIHeader(shape: [4, 4, 4]), to: gzPath)
    let gz = [UInt8](try Data(contentsOf: URL(fileURLWithPath: gzPath)))
    let cutGz = dir.appendingPathComponent("cut.nii.gz").path
    try Data(gz.prefix(gz.count / 2)).write(to: URL(fileURLWithPath: cutGz))
    #expect(message(cutGz).contains(cutGz) && message(cutGz).contains("truncated"))
    var flipped = gz; flipped[12] ^= 0xff; flipped[13] ^= 0xff
    let corrupt = dir.appendingPathComponent("corrupt.nii.gz").path
    try Data(flipped).write(to: URL(fileURLWithPath: corrupt))
    #expect(message(corrupt).contains(corrupt) && message(corrupt).contains("corrupt"), "\(message(corrupt))")

    // A write into a missing folder fails cleanly, naming the file.
    #expect(throws: NIfTIError.self) { try NIfTI.write(v, header: NIfTIHeader(shape: [4, 4, 4]), to: "/nonexistent-dir/o.nii") }
    // A tensor that does not match the header is refused.
    #expect(throws: NIfTIError.self) { try NIfTI.write(v, header: NIfTIHeader(shape: [4, 4, 5]), to: dir.appendingPathComponent("o.nii").path) }
}

private let colin27 = "/usr/share/mricron/templates/ch2.nii.gz"

@Test(.enabled(if: FileIO.exists(colin27), "mricron-data not installed"))
func niftiReadsColin27() throws {
    let v = try NIfTI.read(colin27)
    // From the header bytes (python3 gzip + struct): dim = (3, 181, 217, 181), datatype 2 (uint8),
    // pixdim 1 mm, qform_code 0, sform_code 4, srow offsets (-90, -125, -71), vox_offset 352.
    #expect(v.header.dim == [3, 181, 217, 181, 1, 1, 1, 1])
    #expect(v.data.shape == [181, 217, 181]) // (D, H, W) = (nz, ny, nx)
    #expect(v.header.datatype == 2 && v.header.spacing == [1, 1, 1])
    #expect(v.header.qformCode == 0 && v.header.sformCode == 4)
    #expect(v.header.srowX == [1, 0, 0, -90] && v.header.srowY == [0, 1, 0, -125] && v.header.srowZ == [0, 0, 1, -71])
    // Voxel histogram from python: 2957530 zeros, maximum 254.
    #expect(v.data.array.filter { $0 == 0 }.count == 2_957_530)
    #expect(v.data.array.max() == 254)
}
