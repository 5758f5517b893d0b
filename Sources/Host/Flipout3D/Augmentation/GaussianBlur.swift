// Gaussian blur of one channel of a patch (batchgeneratorsv2 GaussianBlurTransform): separable, one sigma per axis, edges replicated.
import Foundation

public enum GaussianBlur {
    /// The normalised 1D kernel for `sigma` voxels, truncated at 4 sigma (scipy's default).
    public static func kernel(sigma: Double) -> [Float] {
        let r = max(1, Int((4 * sigma).rounded(.up)))
        let k = (-r...r).map { exp(-Double($0 * $0) / (2 * sigma * sigma)) }
        let s = k.reduce(0, +)
        return k.map { Float($0 / s) }
    }

    /// Blurs the (d, h, w) volume at `x` in place with sigmas (D, H, W); the value beyond an edge
    /// is the edge value (scipy's mode "nearest").
    public static func apply(_ x: UnsafeMutablePointer<Float>, shape: [Int], sigmas: [Double]) {
        let strides = [shape[1] * shape[2], shape[2], 1]
        var line = [Float]()
        for axis in 0..<3 {
            let k = kernel(sigma: sigmas[axis]), r = k.count / 2, n = shape[axis], st = strides[axis]
            line = [Float](repeating: 0, count: n)
            // Every line along `axis`: its start offsets are the voxels with coordinate 0 on it.
            let others = (0..<3).filter { $0 != axis }
            for a in 0..<shape[others[0]] { for b in 0..<shape[others[1]] {
                let base = a * strides[others[0]] + b * strides[others[1]]
                for i in 0..<n { line[i] = x[base + i * st] }
                for i in 0..<n {
                    var s: Float = 0
                    for t in -r...r { s += k[t + r] * line[min(max(i + t, 0), n - 1)] }
                    x[base + i * st] = s
                }
            } }
        }
    }
}
