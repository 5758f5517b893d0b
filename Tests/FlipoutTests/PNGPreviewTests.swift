// PNGPreview: layout size, orientation of the slices, atomic write read back with libpng.
import Foundation
import Testing
import Flipout3D

@Test func pngPreviewHasTheLayoutSizeAndOrientation() throws {
    let (d, h, w) = (8, 10, 12)
    let ramp = Tensor(shape: [1, d, h, w]) // value = x
    for i in 0..<ramp.count { ramp.data[i] = Float(i % w) }
    let zs = Tensor(shape: [d, h, w]) // value = z
    for i in 0..<zs.count { zs.data[i] = Float(i / (h * w)) }
    let panels = [PNGPreview.Panel(ramp), PNGPreview.Panel(zs), PNGPreview.Panel(ramp, colormap: .hot)]
    let image = PNGPreview.render(panels, scale: 2, gap: 2)
    // Columns: 3 cells of max(W, H)·2 = 24 plus 4 gaps; rows: (H + D + D)·2 plus 4 gaps.
    #expect(image.width == 3 * 24 + 4 * 2)
    #expect(image.height == (10 + 8 + 8) * 2 + 4 * 2)
    func px(_ r: Int, _ c: Int) -> [UInt8] { let o = (r * image.width + c) * 3; return Array(image.pixels[o..<(o + 3)]) }
    // Axial of panel 0 (x ramp, cell width 24 = W·2, no centering offset): left black, right white.
    #expect(px(2, 2) == [0, 0, 0])
    #expect(px(2, 2 + 23) == [255, 255, 255])
    // Coronal of panel 1 (z): top row is the highest z (white), bottom row z = 0 (black).
    let coronalTop = 2 + 20 + 2
    #expect(px(coronalTop, 26 + 5) == [255, 255, 255])
    #expect(px(coronalTop + 15, 26 + 5) == [0, 0, 0])
    // Hot colormap at the maximum is white, at the minimum black; the gap stays black.
    #expect(px(2, 54 + 23) == [255, 255, 255] && px(2, 54) == [0, 0, 0])
    #expect(px(0, 0) == [0, 0, 0])

    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("flipout-png-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let path = dir.appendingPathComponent("preview.png").path
    try PNGPreview.write(panels, to: path, scale: 2, gap: 2)
    let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
    #expect(Array(bytes.prefix(8)) == [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])
    // IHDR width and height, big-endian at bytes 16..<24.
    let ihdrW = bytes[16..<20].reduce(0) { $0 << 8 | Int($1) }, ihdrH = bytes[20..<24].reduce(0) { $0 << 8 | Int($1) }
    #expect(ihdrW == image.width && ihdrH == image.height)
    let size = try PNGPreview.readSize(path)
    #expect(size.width == image.width && size.height == image.height)
    #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["preview.png"]) // no temp left
}

@Test func pngCentroidAndUnwritableFolder() {
    let m = Tensor(shape: [4, 4, 4])
    m.data[(1 * 4 + 2) * 4 + 3] = 1
    #expect(PNGPreview.centroid(of: m) == [1, 2, 3])
    #expect(PNGPreview.centroid(of: Tensor(shape: [2, 2, 2])) == nil)
    // Two blobs apart: the centroid (1, 2, 1.5) is empty; the nearest mask voxel is returned.
    m.data[(1 * 4 + 2) * 4 + 0] = 1
    #expect(PNGPreview.centroid(of: m) == [1, 2, 0])
    #expect(throws: FileIOError.self) { try PNGPreview.write([PNGPreview.Panel(m)], to: "/nonexistent-folder/x.png") }
}
