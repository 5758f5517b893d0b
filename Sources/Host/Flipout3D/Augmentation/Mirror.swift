// Mirroring of a patch along a set of its axes (batchgeneratorsv2 MirrorTransform), for training patches and test-time mirroring.
public enum Mirror {
    /// Reverses the (c, d, h, w) block at `x` in place along the axes in `axes` (0, 1, 2 = D, H, W).
    public static func apply(_ x: UnsafeMutablePointer<Float>, shape: [Int], axes: [Int]) {
        guard !axes.isEmpty else { return }
        let (c, d, h, w) = (shape[0], shape[1], shape[2], shape[3])
        let fz = axes.contains(0), fy = axes.contains(1), fx = axes.contains(2)
        var tmp = [Float](repeating: 0, count: d * h * w)
        for ch in 0..<c {
            let p = x + ch * d * h * w
            for i in 0..<(d * h * w) { tmp[i] = p[i] }
            for z in 0..<d { for y in 0..<h {
                let sz = fz ? d - 1 - z : z, sy = fy ? h - 1 - y : y
                for xx in 0..<w { p[(z * h + y) * w + xx] = tmp[(sz * h + sy) * w + (fx ? w - 1 - xx : xx)] }
            } }
        }
    }

    /// Test-time mirroring over the axes training mirrored (nnU-Net mirrors at inference along
    /// exactly those): every subset of `axes` as a bit mask (bit 0 = D, 1 = H, 2 = W, the
    /// convention of `SlidingWindow.flip`), the identity (0) first. [0, 1, 2] gives all 8.
    public static func testTimeCombinations(axes: [Int]) -> [Int] {
        let bits = Set(axes).sorted().map { 1 << $0 }
        return (0..<(1 << bits.count)).map { subset in
            bits.enumerated().reduce(0) { subset & (1 << $1.offset) != 0 ? $0 | $1.element : $0 }
        }
    }
}
