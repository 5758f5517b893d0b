// Where the sliding windows go (MONAI's scan), and the Gaussian importance weights inside a window.
//
// MONAI `sliding_window_inference(..., overlap, mode="gaussian", sigma_scale=0.125)`:
// - a volume smaller than the window along an axis is padded (zeros, half before and half after);
// - the step along an axis is ⌊window·(1 − overlap)⌋ (at least 1; the whole window when the volume
//   equals it), windows start at 0, step, 2·step, … until one reaches the end, the last one shifted
//   back to end at the volume's edge (`dense_patch_slices`);
// - each window's output is weighted by w(x) = Π_axes exp(−(x − ⌊n/2⌋)² / (2 (σ n)²)), σ = sigma_scale,
//   maximum 1 at the center (`compute_importance_map`; MONAI and nnU-Net blur a delta, which is this
//   sampled Gaussian up to the blur's discretisation), and the sums are divided by the summed weights.
import Foundation

public struct WindowGrid: Sendable, Equatable {
    /// The volume's (D, H, W) and the padded size the windows scan (>= window on every axis).
    public let volume: [Int]
    public let padded: [Int]
    /// Zeros added before the volume along each axis (the rest goes after).
    public let padBefore: [Int]
    public let window: [Int]
    /// (d, h, w) of every window's first voxel in the padded grid, d slowest.
    public let starts: [[Int]]

    public init(volume: [Int], window: [Int], overlap: Double) {
        precondition(volume.count == 3 && window.count == 3 && window.allSatisfy { $0 >= 1 } && volume.allSatisfy { $0 >= 1 },
                     "WindowGrid: volume \(volume), window \(window)")
        precondition(overlap >= 0 && overlap < 1, "WindowGrid: overlap \(overlap) outside [0, 1)")
        self.volume = volume
        self.window = window
        padded = zip(volume, window).map { max($0, $1) }
        padBefore = zip(volume, window).map { max($1 - $0, 0) / 2 }
        var axes: [[Int]] = []
        for a in 0..<3 {
            let n = padded[a], w = window[a]
            let step = n == w ? w : max(Int(Double(w) * (1 - overlap)), 1)
            var s: [Int] = []
            var i = 0
            while true {
                let start = i * step
                s.append(start - max(start + w - n, 0))
                if start + w >= n { break }
                i += 1
            }
            axes.append(s)
        }
        starts = axes[0].flatMap { d in axes[1].flatMap { h in axes[2].map { w in [d, h, w] } } }
    }

    /// The Gaussian importance map of a window, (d, h, w) flattened, maximum 1.
    public static func gaussianWeights(_ window: [Int], sigmaScale: Double = 0.125) -> [Float] {
        precondition(sigmaScale > 0, "gaussianWeights: sigma_scale must be positive")
        let axis = window.map { n -> [Double] in
            let c = Double(n / 2), s = sigmaScale * Double(n)
            return (0..<n).map { i in let x = Double(i) - c; return Foundation.exp(-x * x / (2 * s * s)) }
        }
        var out: [Float] = []
        out.reserveCapacity(window.reduce(1, *))
        for a in axis[0] { for b in axis[1] { for c in axis[2] { out.append(Float(a * b * c)) } } }
        // MONAI clamps at the smallest nonzero value so no weight is 0 (no 0/0 at window corners).
        let floor = out.filter { $0 > 0 }.min() ?? 1
        return out.map { max($0, floor) }
    }
}
