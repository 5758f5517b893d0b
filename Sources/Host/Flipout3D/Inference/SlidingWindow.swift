// Sliding-window Monte Carlo inference: windows of the training patch size, Gaussian-weighted, sums of samples.
//
// Memory is the input, the sums ((K + 2) floats per voxel) and one batch of windows: never a copy of
// the volume per sample. Loop order: for each batch of windows, every draw (so a window is cut once).
import Foundation

/// One network evaluation: windows (B, C, d, h, w) and a draw index -> probabilities (B, K, d, h, w).
/// The draw keys the Monte Carlo sample (same draw = same weight sample across windows); an
/// ensemble maps draw indices onto its members.
public typealias WindowPredictor = (_ windows: Tensor, _ draw: Int) throws -> Tensor

public struct SlidingWindowOptions: Sendable {
    /// Window (d, h, w): the training patch size.
    public var window: [Int]
    public var overlap: Double = 0.5
    public var sigmaScale: Double = 0.125
    /// Windows per network call.
    public var batch: Int = 2
    /// Test-time mirroring: each draw is the mean of the 8 mirrorings along (D, H, W) (as nnU-Net).
    public var mirror = false

    public init(window: [Int], overlap: Double = 0.5, batch: Int = 2, mirror: Bool = false) {
        self.window = window; self.overlap = overlap; self.batch = batch; self.mirror = mirror
    }
}

/// Where a prediction is: windows done of all, for a progress line.
public struct SlidingWindowProgress {
    public var windowsDone: Int
    public var windows: Int
    public var draws: Int
}

public enum SlidingWindow {
    /// Predicts `image` (C, D, H, W) with `draws` draws of `predictor` per window; `classes` = K.
    public static func predict(_ image: Tensor, classes: Int, draws: Int, options o: SlidingWindowOptions,
                               progress: (SlidingWindowProgress) -> Void = { _ in },
                               predictor: WindowPredictor) throws -> PredictiveMaps {
        precondition(image.rank == 4, "SlidingWindow.predict: image must be (C, D, H, W), got \(image.shape)")
        precondition(draws >= 1 && o.batch >= 1, "SlidingWindow.predict: draws \(draws), batch \(o.batch)")
        let volume = Array(image.shape.dropFirst())
        let grid = WindowGrid(volume: volume, window: o.window, overlap: o.overlap)
        let weights = WindowGrid.gaussianWeights(o.window, sigmaScale: o.sigmaScale)
        let sums = UncertaintySums(shape: volume, classes: classes)
        let wn = o.window.reduce(1, *)
        var done = 0
        for first in stride(from: 0, to: grid.starts.count, by: o.batch) {
            let starts = Array(grid.starts[first..<min(first + o.batch, grid.starts.count)])
            let origins = starts.map { s in (0..<3).map { s[$0] - grid.padBefore[$0] } }
            let x = cut(image, origins: origins, window: o.window) // (B, C, d, h, w)
            for t in 0..<draws {
                let p = o.mirror ? try mirrored(x, t, predictor) : try predictor(x, t)
                p.checkShape([starts.count, classes] + o.window, "SlidingWindow: the predictor's output")
                for b in 0..<starts.count {
                    sums.add(p.data + b * classes * wn, window: o.window, origin: origins[b], weights: weights)
                }
            }
            done += starts.count
            progress(SlidingWindowProgress(windowsDone: done, windows: grid.starts.count, draws: draws))
        }
        return sums.finish(draws: draws, windows: grid.starts.count)
    }

    /// The windows at `origins` (volume coordinates; outside the volume is 0): (B, C, d, h, w).
    static func cut(_ image: Tensor, origins: [[Int]], window: [Int]) -> Tensor {
        let c = image.shape[0], wn = window.reduce(1, *)
        let x = Tensor(shape: [origins.count, c] + window)
        for (b, o) in origins.enumerated() { PatchSampler.crop(image, start: o, size: window, into: x.data + b * c * wn) }
        return x
    }

    /// The mean of the predictions of the 8 mirrorings (each mirrored back) of x.
    static func mirrored(_ x: Tensor, _ draw: Int, _ predictor: WindowPredictor) throws -> Tensor {
        var mean: Tensor?
        for axes in 0..<8 {
            let p = flip(try predictor(flip(x, axes), draw), axes)
            if let m = mean { for i in 0..<m.count { m.data[i] += p.data[i] } } else { mean = p }
        }
        let m = mean!
        for i in 0..<m.count { m.data[i] /= 8 }
        return m
    }

    /// x (N, C, d, h, w) reversed along d (bit 0 of `axes`), h (bit 1) and w (bit 2).
    static func flip(_ x: Tensor, _ axes: Int) -> Tensor {
        guard axes != 0 else { return x }
        let (d, h, w) = (x.shape[2], x.shape[3], x.shape[4]), planes = x.shape[0] * x.shape[1]
        let out = Tensor(uninitializedShape: x.shape)
        for p in 0..<planes { for z in 0..<d { for y in 0..<h {
            let sz = axes & 1 != 0 ? d - 1 - z : z, sy = axes & 2 != 0 ? h - 1 - y : y
            let src = x.data + ((p * d + sz) * h + sy) * w, dst = out.data + ((p * d + z) * h + y) * w
            if axes & 4 != 0 { for i in 0..<w { dst[i] = src[w - 1 - i] } } else { dst.update(from: src, count: w) }
        } } }
        return out
    }
}
