// Contrast (batchgeneratorsv2 ContrastTransform, preserve_range): one channel stretched about its mean, then clipped to its former range.
public enum Contrast {
    public static func apply(_ x: UnsafeMutablePointer<Float>, count: Int, factor: Double) {
        guard count > 0 else { return }
        var sum = 0.0, lo = x[0], hi = x[0]
        for i in 0..<count { sum += Double(x[i]); lo = min(lo, x[i]); hi = max(hi, x[i]) }
        let mean = Float(sum / Double(count)), f = Float(factor)
        for i in 0..<count { x[i] = min(max((x[i] - mean) * f + mean, lo), hi) }
    }
}
