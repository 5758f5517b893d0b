// Small PNG plots (line, scatter, bars) with axes, ticks and labels in a built-in 5×7 font, written through PNGPreview's libpng wrapper.

public struct PNGPlot {
    public typealias Color = (UInt8, UInt8, UInt8)
    public static let blue: Color = (31, 119, 180), orange: Color = (255, 127, 14), gray: Color = (150, 150, 150)
    public static let black: Color = (0, 0, 0), red: Color = (214, 39, 40), lightBlue: Color = (174, 199, 232)

    public let width: Int, height: Int
    public let x: ClosedRange<Double>, y: ClosedRange<Double>
    var pixels: [UInt8]
    // Plot area in pixels: left, top, right, bottom.
    let area: (Int, Int, Int, Int)

    /// A white canvas with a framed plot area, ticks at 5 steps, a title and axis labels.
    public init(title: String, xLabel: String, yLabel: String, x: ClosedRange<Double>, y: ClosedRange<Double>,
                width: Int = 520, height: Int = 400) {
        precondition(x.upperBound > x.lowerBound && y.upperBound > y.lowerBound, "PNGPlot: empty axis range \(x), \(y)")
        self.width = width; self.height = height; self.x = x; self.y = y
        pixels = [UInt8](repeating: 255, count: width * height * 3)
        area = (70, 34, width - 20, height - 50)
        let (l, t, r, b) = area
        text(title, x: width / 2 - title.count * 6, y: 8, scale: 2)
        text(xLabel, x: (l + r) / 2 - xLabel.count * 3, y: height - 18)
        for (i, ch) in yLabel.enumerated() { text(String(ch), x: 6, y: (t + b) / 2 - yLabel.count * 4 + i * 8) }
        for k in 0...5 {
            let fx = x.lowerBound + (x.upperBound - x.lowerBound) * Double(k) / 5
            let fy = y.lowerBound + (y.upperBound - y.lowerBound) * Double(k) / 5
            let px = self.px(fx), py = self.py(fy)
            line(px, b, px, b + 4, Self.black); line(l - 4, py, l, py, Self.black)
            let lx = Self.tick(fx), ly = Self.tick(fy)
            text(lx, x: px - lx.count * 3, y: b + 8)
            text(ly, x: l - 8 - ly.count * 6, y: py - 3)
        }
        rect(l, t, r, b, Self.black)
    }

    static func tick(_ v: Double) -> String {
        let a = abs(v)
        guard a < 1e9 else { return a.isFinite ? String(format: "%.2g", v) : String(v) }
        if a >= 100 { return String(Int(v.rounded())) }
        var s = String(Double(Int((v * 100).rounded())) / 100)
        if s.hasSuffix(".0") { s.removeLast(2) }
        return s
    }

    func px(_ v: Double) -> Int {
        let (l, _, r, _) = area
        return l + pixel((v - x.lowerBound) / (x.upperBound - x.lowerBound) * Double(r - l))
    }

    func py(_ v: Double) -> Int {
        let (_, t, _, b) = area
        return b - pixel((v - y.lowerBound) / (y.upperBound - y.lowerBound) * Double(b - t))
    }

    /// A pixel offset, clamped to a few canvas sizes (a point far off the axes, or an axis range
    /// wider than Double's, lands just off the canvas instead of trapping in the Int conversion).
    func pixel(_ d: Double) -> Int {
        let bound = Double(4 * (width + height))
        return d.isNaN ? 0 : Int(min(max(d, -bound), bound).rounded())
    }

    /// A polyline through data points (non-finite points break it).
    public mutating func line(_ points: [(Double, Double)], color: Color, thickness: Int = 2) {
        for (a, b) in zip(points, points.dropFirst()) where a.0.isFinite && a.1.isFinite && b.0.isFinite && b.1.isFinite {
            for o in 0..<thickness { line(px(a.0), py(a.1) + o, px(b.0), py(b.1) + o, color) }
        }
    }

    /// Filled squares of side 2·radius + 1 at data points.
    public mutating func points(_ points: [(Double, Double)], color: Color, radius: Int = 3) {
        for p in points where p.0.isFinite && p.1.isFinite {
            let cx = px(p.0), cy = py(p.1)
            for dy in -radius...radius { for dx in -radius...radius { set(cx + dx, cy + dy, color) } }
        }
    }

    /// A filled bar over [x0, x1] from y = y.lowerBound up to `top`.
    public mutating func bar(from x0: Double, to x1: Double, top: Double, color: Color) {
        let a = px(x0), b = px(x1), t = py(top), base = py(y.lowerBound)
        for yy in min(t, base)...max(t, base) { for xx in a...b { set(xx, yy, color) } }
    }

    /// A legend entry (colored square and text) in the plot area's upper left, row `row`.
    public mutating func legend(_ label: String, color: Color, row: Int) {
        let (l, t, _, _) = area
        let yy = t + 8 + row * 12
        for dy in 0..<7 { for dx in 0..<7 { set(l + 8 + dx, yy + dy, color) } }
        text(label, x: l + 20, y: yy)
    }

    public func write(to path: String) throws {
        try PNGPreview.write(PNGPreview.Image(width: width, height: height, pixels: pixels), to: path)
    }

    // MARK: - Pixels

    mutating func set(_ xx: Int, _ yy: Int, _ c: Color) {
        guard xx >= 0 && xx < width && yy >= 0 && yy < height else { return }
        let o = (yy * width + xx) * 3
        pixels[o] = c.0; pixels[o + 1] = c.1; pixels[o + 2] = c.2
    }

    mutating func line(_ x0: Int, _ y0: Int, _ x1: Int, _ y1: Int, _ c: Color) {
        var x0 = x0, y0 = y0
        let dx = abs(x1 - x0), sx = x0 < x1 ? 1 : -1, dy = -abs(y1 - y0), sy = y0 < y1 ? 1 : -1
        var err = dx + dy
        while true {
            set(x0, y0, c)
            if x0 == x1 && y0 == y1 { break }
            let e2 = 2 * err
            if e2 >= dy { err += dy; x0 += sx }
            if e2 <= dx { err += dx; y0 += sy }
        }
    }

    mutating func rect(_ l: Int, _ t: Int, _ r: Int, _ b: Int, _ c: Color) {
        line(l, t, r, t, c); line(r, t, r, b, c); line(r, b, l, b, c); line(l, b, l, t, c)
    }

    /// Text in the 5×7 font (upper case; unknown characters are blank), top-left at (x, y).
    mutating func text(_ s: String, x: Int, y: Int, scale: Int = 1, color: Color = PNGPlot.black) {
        for (i, ch) in s.uppercased().enumerated() {
            guard let rows = Self.font[ch] else { continue }
            for (r, bits) in rows.enumerated() {
                for (cIndex, bit) in bits.enumerated() where bit == "1" {
                    for a in 0..<scale { for b in 0..<scale { set(x + (i * 6 + cIndex) * scale + a, y + r * scale + b, color) } }
                }
            }
        }
    }

    static let font: [Character: [String]] = {
        let glyphs: [(Character, String)] = [
            ("0", "01110 10001 10011 10101 11001 10001 01110"), ("1", "00100 01100 00100 00100 00100 00100 01110"),
            ("2", "01110 10001 00001 00010 00100 01000 11111"), ("3", "11111 00010 00100 00010 00001 10001 01110"),
            ("4", "00010 00110 01010 10010 11111 00010 00010"), ("5", "11111 10000 11110 00001 00001 10001 01110"),
            ("6", "00110 01000 10000 11110 10001 10001 01110"), ("7", "11111 00001 00010 00100 01000 01000 01000"),
            ("8", "01110 10001 10001 01110 10001 10001 01110"), ("9", "01110 10001 10001 01111 00001 00010 01100"),
            (".", "00000 00000 00000 00000 00000 01100 01100"), ("-", "00000 00000 00000 11111 00000 00000 00000"),
            ("(", "00010 00100 01000 01000 01000 00100 00010"), (")", "01000 00100 00010 00010 00010 00100 01000"),
            ("/", "00001 00010 00010 00100 01000 01000 10000"), ("=", "00000 00000 11111 00000 11111 00000 00000"),
            (",", "00000 00000 00000 00000 01100 00100 01000"), (":", "00000 01100 01100 00000 01100 01100 00000"),
            ("A", "01110 10001 10001 11111 10001 10001 10001"), ("B", "11110 10001 10001 11110 10001 10001 11110"),
            ("C", "01110 10001 10000 10000 10000 10001 01110"), ("D", "11100 10010 10001 10001 10001 10010 11100"),
            ("E", "11111 10000 10000 11110 10000 10000 11111"), ("F", "11111 10000 10000 11110 10000 10000 10000"),
            ("G", "01110 10001 10000 10111 10001 10001 01111"), ("H", "10001 10001 10001 11111 10001 10001 10001"),
            ("I", "01110 00100 00100 00100 00100 00100 01110"), ("J", "00111 00010 00010 00010 00010 10010 01100"),
            ("K", "10001 10010 10100 11000 10100 10010 10001"), ("L", "10000 10000 10000 10000 10000 10000 11111"),
            ("M", "10001 11011 10101 10101 10001 10001 10001"), ("N", "10001 10001 11001 10101 10011 10001 10001"),
            ("O", "01110 10001 10001 10001 10001 10001 01110"), ("P", "11110 10001 10001 11110 10000 10000 10000"),
            ("Q", "01110 10001 10001 10001 10101 10010 01101"), ("R", "11110 10001 10001 11110 10100 10010 10001"),
            ("S", "01111 10000 10000 01110 00001 00001 11110"), ("T", "11111 00100 00100 00100 00100 00100 00100"),
            ("U", "10001 10001 10001 10001 10001 10001 01110"), ("V", "10001 10001 10001 10001 10001 01010 00100"),
            ("W", "10001 10001 10001 10101 10101 10101 01010"), ("X", "10001 10001 01010 00100 01010 10001 10001"),
            ("Y", "10001 10001 10001 01010 00100 00100 00100"), ("Z", "11111 00001 00010 00100 01000 10000 11111"),
        ]
        var f: [Character: [String]] = [:]
        for (c, rows) in glyphs { f[c] = rows.split(separator: " ").map(String.init) }
        return f
    }()
}
