// PNGPreview: orthogonal slices (axial, coronal, sagittal) of several volumes side by side, written as an RGB PNG via libpng's simplified API.
//
// Layout: one column per panel (e.g. input, prediction, uncertainty), one row per view:
//   row 0 axial    (slice z = c.d): rows are y, top = high y (anterior); columns are x
//   row 1 coronal  (slice y = c.h): rows are z, top = high z (superior); columns are x
//   row 2 sagittal (slice x = c.w): rows are z, top = high z;            columns are y
// Each panel is scaled to its own value range (min–max over the whole volume unless given),
// so the three views of a panel share one scale. Cells are separated by `gap` black pixels.
import CPNG

public struct PNGPreviewError: Error, CustomStringConvertible {
    public let path: String
    public let reason: String
    public var description: String { "\(path): cannot write PNG preview: \(reason)" }
}

public enum PNGPreview {
    public enum Colormap: Sendable { case gray, hot }

    /// One column of the preview.
    public struct Panel {
        /// A volume whose last three dimensions are (D, H, W); leading dimensions must be 1.
        public var volume: Tensor
        public var colormap: Colormap
        /// Value range mapped to black…white; nil = the volume's min…max.
        public var range: ClosedRange<Float>?

        public init(_ volume: Tensor, colormap: Colormap = .gray, range: ClosedRange<Float>? = nil) {
            self.volume = volume; self.colormap = colormap; self.range = range
        }
    }

    /// An RGB image in memory: `pixels` is height·width·3 bytes, row-major.
    public struct Image {
        public let width: Int
        public let height: Int
        public var pixels: [UInt8]
    }

    /// The slice point (d, h, w) at the center of the volume.
    public static func center(of shape: [Int]) -> [Int] {
        let s = Array(shape.suffix(3))
        return [s[0] / 2, s[1] / 2, s[2] / 2]
    }

    /// The voxel of `mask` >= threshold ((…, D, H, W)) nearest the mask's centroid, or nil if empty.
    public static func centroid(of mask: Tensor, threshold: Float = 0.5) -> [Int]? {
        let (d, h, w) = dims(mask)
        var s = (0.0, 0.0, 0.0), n = 0.0
        var i = 0
        for z in 0..<d { for y in 0..<h { for x in 0..<w {
            if mask.data[i] >= threshold { s.0 += Double(z); s.1 += Double(y); s.2 += Double(x); n += 1 }
            i += 1
        } } }
        guard n > 0 else { return nil }
        let c = (s.0 / n, s.1 / n, s.2 / n)
        // The mask voxel nearest the centroid, so the slices cut a lesion even when several are apart.
        var best = [0, 0, 0], bestDistance = Double.infinity
        i = 0
        for z in 0..<d { for y in 0..<h { for x in 0..<w {
            if mask.data[i] >= threshold {
                let e = (Double(z) - c.0) * (Double(z) - c.0) + (Double(y) - c.1) * (Double(y) - c.1) + (Double(x) - c.2) * (Double(x) - c.2)
                if e < bestDistance { bestDistance = e; best = [z, y, x] }
            }
            i += 1
        } } }
        return best
    }

    /// Longest run of voxels shown along one axis of a view (longer axes are subsampled).
    public static let maxEdge = 512

    /// Renders the preview: all panels share one (D, H, W) and the slice point `at` (d, h, w),
    /// default the center; `scale` repeats each voxel scale×scale times. An axis longer than
    /// `maxEdge` voxels shows every ⌈n / maxEdge⌉-th voxel.
    public static func render(_ panels: [Panel], at point: [Int]? = nil, scale: Int = 1, gap: Int = 2) -> Image {
        precondition(!panels.isEmpty, "PNGPreview: no panels")
        precondition(scale >= 1 && gap >= 0, "PNGPreview: scale must be >= 1 and gap >= 0")
        let (d, h, w) = dims(panels[0].volume)
        for p in panels { precondition(dims(p.volume) == (d, h, w), "PNGPreview: panel shape \(p.volume.shape) differs from \(panels[0].volume.shape)") }
        let c = point ?? center(of: [d, h, w])
        precondition(c.count == 3 && (0..<d).contains(c[0]) && (0..<h).contains(c[1]) && (0..<w).contains(c[2]),
                     "PNGPreview: slice point \(c) outside (\(d), \(h), \(w))")
        // A volume longer than `maxEdge` voxels along an axis is shown every `step`-th voxel, so
        // the image stays within a few thousand pixels whatever the header claims.
        let step = (max(d, h, w) + maxEdge - 1) / maxEdge
        let (sd, sh, sw) = ((d + step - 1) / step, (h + step - 1) / step, (w + step - 1) / step)
        // Views as (rows, cols, voxel index of (row, col)), top row first; row and col in shown voxels.
        let views: [(rows: Int, cols: Int, index: (Int, Int) -> Int)] = [
            (sh, sw, { r, q in (c[0] * h + (h - 1 - r * step)) * w + q * step }),
            (sd, sw, { r, q in ((d - 1 - r * step) * h + c[1]) * w + q * step }),
            (sd, sh, { r, q in ((d - 1 - r * step) * h + q * step) * w + c[2] }),
        ]
        let cellW = max(sw, sh) * scale
        let width = panels.count * cellW + (panels.count + 1) * gap
        let height = views.reduce(0) { $0 + $1.rows * scale } + (views.count + 1) * gap
        var pixels = [UInt8](repeating: 0, count: width * height * 3)
        for (pi, panel) in panels.enumerated() {
            let range = panel.range ?? valueRange(panel.volume)
            // In Double: any finite Float range (wider than Float.greatestFiniteMagnitude, or
            // narrower than the smallest normal Float) has a finite, nonzero span and inverse there.
            let lo = Double(range.lowerBound), span = Double(range.upperBound) - Double(range.lowerBound)
            let inv = span > 0 && span.isFinite ? 1 / span : 0
            var top = gap
            for view in views {
                let left = gap + pi * (cellW + gap) + (cellW - view.cols * scale) / 2
                for r in 0..<(view.rows * scale) {
                    for q in 0..<(view.cols * scale) {
                        let v = panel.volume.data[view.index(r / scale, q / scale)]
                        let t = v.isFinite ? Float(min(max((Double(v) - lo) * inv, 0), 1)) : 0
                        let rgb = color(t, panel.colormap)
                        let o = ((top + r) * width + left + q) * 3
                        pixels[o] = rgb.0; pixels[o + 1] = rgb.1; pixels[o + 2] = rgb.2
                    }
                }
                top += view.rows * scale + gap
            }
        }
        return Image(width: width, height: height, pixels: pixels)
    }

    /// Renders and writes the preview to `path` atomically (temporary file, fsync, rename).
    @discardableResult
    public static func write(_ panels: [Panel], to path: String, at point: [Int]? = nil, scale: Int = 1, gap: Int = 2) throws -> Image {
        let image = render(panels, at: point, scale: scale, gap: gap)
        try write(image, to: path)
        return image
    }

    /// Encodes `image` as an 8-bit RGB PNG and writes it atomically.
    public static func write(_ image: Image, to path: String) throws {
        var png = png_image()
        png.version = UInt32(PNG_IMAGE_VERSION)
        png.width = UInt32(image.width)
        png.height = UInt32(image.height)
        png.format = 2 // PNG_FORMAT_RGB (PNG_FORMAT_FLAG_COLOR): 3 bytes per pixel
        let stride = Int32(image.width * 3)
        var size: png_alloc_size_t = 0
        // First call measures, second encodes (libpng >= 1.6.24).
        let measured = image.pixels.withUnsafeBytes { png_image_write_to_memory(&png, nil, &size, 0, $0.baseAddress, stride, nil) }
        guard measured != 0, size > 0 else {
            let reason = withUnsafeBytes(of: png.message) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            png_image_free(&png)
            throw PNGPreviewError(path: path, reason: "libpng: \(reason)")
        }
        var encoded = [UInt8](repeating: 0, count: Int(size))
        let ok = encoded.withUnsafeMutableBytes { out in
            image.pixels.withUnsafeBytes { png_image_write_to_memory(&png, out.baseAddress, &size, 0, $0.baseAddress, stride, nil) }
        }
        guard ok != 0 else {
            let reason = withUnsafeBytes(of: png.message) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            png_image_free(&png)
            throw PNGPreviewError(path: path, reason: "libpng: \(reason)")
        }
        png_image_free(&png)
        try FileIO.writeAtomically(Array(encoded.prefix(Int(size))), to: path)
    }

    /// Reads a PNG's width and height with libpng (for tests and checks).
    public static func readSize(_ path: String) throws -> (width: Int, height: Int) {
        var png = png_image()
        png.version = UInt32(PNG_IMAGE_VERSION)
        guard png_image_begin_read_from_file(&png, path) != 0 else {
            let reason = withUnsafeBytes(of: png.message) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            throw PNGPreviewError(path: path, reason: "cannot read: \(reason)")
        }
        defer { png_image_free(&png) }
        return (Int(png.width), Int(png.height))
    }

    static func dims(_ t: Tensor) -> (Int, Int, Int) {
        precondition(t.rank >= 3 && t.shape.dropLast(3).allSatisfy { $0 == 1 }, "PNGPreview: need (…, D, H, W) with leading 1s, got \(t.shape)")
        let s = t.shape.suffix(3).map { $0 }
        return (s[0], s[1], s[2])
    }

    static func valueRange(_ t: Tensor) -> ClosedRange<Float> {
        var lo = Float.infinity, hi = -Float.infinity
        for i in 0..<t.count where t.data[i].isFinite { lo = min(lo, t.data[i]); hi = max(hi, t.data[i]) }
        return lo <= hi ? lo...hi : 0...1
    }

    /// Gray, or "hot" (black → red → yellow → white) for uncertainty maps; t in [0, 1].
    static func color(_ t: Float, _ map: Colormap) -> (UInt8, UInt8, UInt8) {
        func byte(_ x: Float) -> UInt8 { x.isNaN ? 0 : UInt8(min(max(x, 0), 1) * 255 + 0.5) }
        switch map {
        case .gray: let g = byte(t); return (g, g, g)
        case .hot: return (byte(3 * t), byte(3 * t - 1), byte(3 * t - 2))
        }
    }
}
