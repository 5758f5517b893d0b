// Sliding-window Monte Carlo inference: windows of the training patch size, Gaussian-blended per sample, samples summed.
//
// Loop order: for each Monte Carlo sample t, every window (in batches), blended into p_t; then p_t
// (moved onto the output grid, if the caller resamples) enters the per-voxel sums. Memory is the
// input, one blended volume (K floats per voxel), the weight sums (1), the sample sums (K + 1 on
// the output grid) and one batch of windows: never a volume per sample.
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
    /// Per draw, the temperature its blended sample is tempered with (TemperatureScaling.swift);
    /// empty: none. With any temperature ≠ 1 the untempered mean is kept too.
    public var temperatures: [Double] = []
    /// The outputs are independent sigmoids (a region-based plan's regions), not a softmax: the
    /// entropies are sums of per-output binary entropies (`UncertaintySums`).
    public var sigmoidOutputs = false

    public init(window: [Int], overlap: Double = 0.5, batch: Int = 2, mirror: Bool = false) {
        self.window = window; self.overlap = overlap; self.batch = batch; self.mirror = mirror
    }
}

/// Where a prediction is: network calls done of all, for a progress line.
public struct SlidingWindowProgress {
    /// Windows done over all samples so far, of windows × draws.
    public var windowsDone: Int
    /// Windows per sample.
    public var windows: Int
    public var draws: Int
    public var total: Int { windows * draws }
}

public enum SlidingWindow {
    /// Predicts `image` (C, D, H, W) with `draws` Monte Carlo samples of `predictor`; `classes` = K.
    /// Each sample's windows are blended (Gaussian weights) into p_t before it is summed (see
    /// UncertaintySums.swift). `output`, if given, maps each blended p_t (K, D, H, W) onto the
    /// output grid (K, outputShape) before summation (e.g. resampling back to the source grid),
    /// so the entropies are taken per sample on the grid the maps are written on.
    public static func predict(_ image: Tensor, classes: Int, draws: Int, options o: SlidingWindowOptions,
                               output: (shape: [Int], map: (Tensor) -> Tensor)? = nil,
                               progress: (SlidingWindowProgress) -> Void = { _ in },
                               sampleHook: ((Int, Tensor) -> Void)? = nil,
                               predictor: WindowPredictor) throws -> PredictiveMaps {
        precondition(image.rank == 4, "SlidingWindow.predict: image must be (C, D, H, W), got \(image.shape)")
        precondition(draws >= 1 && o.batch >= 1, "SlidingWindow.predict: draws \(draws), batch \(o.batch)")
        let volume = Array(image.shape.dropFirst())
        let grid = WindowGrid(volume: volume, window: o.window, overlap: o.overlap)
        let weights = WindowGrid.gaussianWeights(o.window, sigmaScale: o.sigmaScale)
        let blend = WindowBlend(grid: grid, classes: classes, weights: weights)
        let outShape = output?.shape ?? volume
        precondition(o.temperatures.isEmpty || o.temperatures.count == draws, "SlidingWindow: \(o.temperatures.count) temperatures for \(draws) draws")
        let sums = UncertaintySums(shape: outShape, classes: classes, sigmoidOutputs: o.sigmoidOutputs)
        let untempered = o.temperatures.contains { $0 != 1 } ? Tensor(shape: [classes] + outShape) : nil
        let wn = o.window.reduce(1, *)
        var done = 0
        for t in 0..<draws {
            if t > 0 { blend.reset() }
            for first in stride(from: 0, to: grid.starts.count, by: o.batch) {
                let starts = Array(grid.starts[first..<min(first + o.batch, grid.starts.count)])
                let origins = starts.map { s in (0..<3).map { s[$0] - grid.padBefore[$0] } }
                let x = cut(image, origins: origins, window: o.window) // (B, C, d, h, w)
                let p = o.mirror ? try mirrored(x, t, predictor) : try predictor(x, t)
                p.checkShape([starts.count, classes] + o.window, "SlidingWindow: the predictor's output")
                for b in 0..<starts.count {
                    blend.add(p.data + b * classes * wn, window: o.window, origin: origins[b], weights: weights)
                }
                done += starts.count
                progress(SlidingWindowProgress(windowsDone: done, windows: grid.starts.count, draws: draws))
            }
            let sample = blend.finishSample() // (K, D, H, W) on the window grid
            func moved() -> Tensor {
                guard let output else { return sample }
                let m = output.map(sample)
                m.checkShape([classes] + output.shape, "SlidingWindow: the output map")
                return m
            }
            if let untempered {
                let raw = moved()
                sampleHook?(t, raw)
                for i in 0..<raw.count { untempered.data[i] += raw.data[i] / Float(draws) }
                TemperatureScaling.apply(sample, temperature: o.temperatures[t])
                sums.add(moved())
            } else {
                let m = moved()
                sampleHook?(t, m)
                sums.add(m)
            }
        }
        var maps = sums.finish(windows: grid.starts.count)
        maps.untemperedProbabilities = untempered
        return maps
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
