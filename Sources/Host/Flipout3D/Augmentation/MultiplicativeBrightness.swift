// Multiplicative brightness (batchgeneratorsv2 MultiplicativeBrightnessTransform): one channel times a factor.
public enum MultiplicativeBrightness {
    public static func apply(_ x: UnsafeMutablePointer<Float>, count: Int, factor: Double) {
        let f = Float(factor)
        for i in 0..<count { x[i] *= f }
    }
}
