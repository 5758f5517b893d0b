// Additive Gaussian noise (batchgeneratorsv2 GaussianNoiseTransform): one standard deviation for every channel of a patch.
import Foundation

public enum GaussianNoise {
    /// Adds sd · N(0, 1) to every value of `x` (count values); the normals come from `rng`.
    public static func apply(_ x: UnsafeMutablePointer<Float>, count: Int, sd: Double, rng: inout RandomStream) {
        guard sd > 0 else { return }
        var noise = [Float](repeating: 0, count: count)
        noise.withUnsafeMutableBufferPointer { rng.fillNormal($0.baseAddress!, count: count) }
        let s = Float(sd)
        for i in 0..<count { x[i] += s * noise[i] }
    }
}
