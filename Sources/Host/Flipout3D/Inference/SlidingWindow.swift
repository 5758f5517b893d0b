// Sliding-window Monte Carlo inference: windows of the training patch size, Gaussian-blended per sample, samples summed.
//
// Loop order: for each group of S Monte Carlo samples (S = the draws the predictor runs per call,
// 8 for a Flipout network, within `blendBudgetBytes`), every window (in batches) and every
// test-time mirroring: one network call gives the window's S draws, each blended straight into its
// own p_t (the mirroring undone by index, weights g / F, no flipped copies); then each p_t (moved
// onto the output grid, if the caller resamples) enters the per-voxel sums. Memory is the input,
// S blended volumes (K floats per voxel), the weight sums (1), the sample sums (K + 1 on the
// output grid) and one batch of windows: never a volume per sample beyond the S in flight.
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
    /// Windows per network call (for a predictor that batches windows; one that batches draws runs
    /// its draws of one window per call).
    public var batch: Int = 2
    /// Test-time mirroring along these window axes (0, 1, 2 = D, H, W; empty: none): every Monte
    /// Carlo sample's window prediction is the mean of the probabilities of the 2^|axes| mirrorings
    /// (each mirrored back), nnU-Net's convention (it averages the same flips, as logits). The flips
    /// thus pool into each sample before the sums: MI stays the disagreement between weight samples.
    public var mirrorAxes: [Int] = []
    /// Per draw, the temperature its blended sample is tempered with (TemperatureScaling.swift);
    /// empty: none. With any temperature ≠ 1 the untempered mean is kept too.
    public var temperatures: [Double] = []
    /// The outputs are independent sigmoids (a region-based plan's regions), not a softmax: the
    /// entropies are sums of per-output binary entropies (`UncertaintySums`).
    public var sigmoidOutputs = false

    /// Whether test-time mirroring is on; setting true mirrors all three axes.
    public var mirror: Bool {
        get { !mirrorAxes.isEmpty }
        set { mirrorAxes = newValue ? [0, 1, 2] : [] }
    }

    public init(window: [Int], overlap: Double = 0.5, batch: Int = 2, mirror: Bool = false) {
        self.window = window; self.overlap = overlap; self.batch = batch; self.mirror = mirror
    }

    public init(window: [Int], overlap: Double = 0.5, batch: Int = 2, mirrorAxes: [Int]) {
        precondition(mirrorAxes.allSatisfy { (0..<3).contains($0) }, "SlidingWindowOptions: mirror axes \(mirrorAxes)")
        self.window = window; self.overlap = overlap; self.batch = batch; self.mirrorAxes = Set(mirrorAxes).sorted()
    }
}

/// Where a prediction is: network calls done of all, for a progress line.
public struct SlidingWindowProgress {
    /// Window predictions done over all samples and mirrorings so far, of windows × draws × mirrorings.
    public var windowsDone: Int
    /// Windows per sample.
    public var windows: Int
    public var draws: Int
    /// Test-time mirrorings per window (1: none).
    public var mirrorings: Int = 1
    public var total: Int { windows * draws * mirrorings }
}

public enum SlidingWindow {
    /// At most this many bytes of blended samples (K floats per voxel each) are held at once; a
    /// predictor running 8 draws per call blends them side by side (8 × 3 × 4.9 M voxels = 472 MB
    /// for a 160×192×160 case with 3 classes), fewer on larger volumes.
    public static let blendBudgetBytes = 1 << 30

    /// Predicts `image` (C, D, H, W) with `draws` Monte Carlo samples of a per-draw `predictor`
    /// (one draw per call); see the generic `predict` for the rest.
    public static func predict(_ image: Tensor, classes: Int, draws: Int, options o: SlidingWindowOptions,
                               output: (shape: [Int], map: (Tensor) -> Tensor)? = nil,
                               progress: (SlidingWindowProgress) -> Void = { _ in },
                               sampleHook: ((Int, Tensor) -> Void)? = nil,
                               predictor: WindowPredictor) throws -> PredictiveMaps {
        try withoutActuallyEscaping(predictor) { run in
            try predict(image, classes: classes, draws: draws, options: o, output: output, progress: progress, sampleHook: sampleHook,
                        predictor: PerDrawPredictor(draws: draws, run))
        }
    }

    /// Predicts `image` (C, D, H, W) with draws 0..<`draws` of `predictor`; `classes` = K.
    /// Each sample's windows (each the mean over the test-time mirrorings) are blended (Gaussian
    /// weights) into p_t before it is summed (see UncertaintySums.swift). `output`, if given, maps
    /// each blended p_t (K, D, H, W) onto the output grid (K, outputShape) before summation (e.g.
    /// resampling back to the source grid), so the entropies are taken per sample on the grid the
    /// maps are written on. Draws are taken `drawsPerCall` at a time (within the blend budget):
    /// every window runs those draws in its calls and each is blended into its own p_t, so the
    /// maps do not depend on the batching (only on the predictor's probabilities per draw).
    public static func predict<P: MonteCarloWindowPredictor>(_ image: Tensor, classes: Int, draws: Int, options o: SlidingWindowOptions,
                                                             output: (shape: [Int], map: (Tensor) -> Tensor)? = nil,
                                                             progress: (SlidingWindowProgress) -> Void = { _ in },
                                                             sampleHook: ((Int, Tensor) -> Void)? = nil,
                                                             predictor: P) throws -> PredictiveMaps {
        precondition(image.rank == 4, "SlidingWindow.predict: image must be (C, D, H, W), got \(image.shape)")
        precondition(draws >= 1 && draws <= predictor.draws && o.batch >= 1,
                     "SlidingWindow.predict: draws \(draws) of the predictor's \(predictor.draws), batch \(o.batch)")
        let volume = Array(image.shape.dropFirst())
        let grid = WindowGrid(volume: volume, window: o.window, overlap: o.overlap)
        let weights = WindowGrid.gaussianWeights(o.window, sigmaScale: o.sigmaScale)
        let flips = Mirror.testTimeCombinations(axes: o.mirrorAxes)
        // Each flip's prediction enters with g / F: the blend of the flips' mean.
        let flipWeights = flips.count == 1 ? weights : weights.map { $0 / Float(flips.count) }
        let outShape = output?.shape ?? volume
        precondition(o.temperatures.isEmpty || o.temperatures.count == draws, "SlidingWindow: \(o.temperatures.count) temperatures for \(draws) draws")
        let sampleBytes = classes * volume.reduce(1, *) * MemoryLayout<Float>.size
        let side = max(1, min(draws, predictor.drawsPerCall, blendBudgetBytes / max(sampleBytes, 1)))
        let blend = WindowBlend(grid: grid, classes: classes, weights: weights, samples: side)
        let sums = UncertaintySums(shape: outShape, classes: classes, sigmoidOutputs: o.sigmoidOutputs)
        let untempered = o.temperatures.contains { $0 != 1 } ? Tensor(shape: [classes] + outShape) : nil
        var done = 0
        for first in stride(from: 0, to: draws, by: side) {
            let chunk = first..<min(first + side, draws)
            blend.reset(chunk.count)
            for wFirst in stride(from: 0, to: grid.starts.count, by: o.batch) {
                let starts = grid.starts[wFirst..<min(wFirst + o.batch, grid.starts.count)]
                let origins = starts.map { s in (0..<3).map { s[$0] - grid.padBefore[$0] } }
                for f in flips {
                    let x = cut(image, origins: origins, window: o.window, flip: f) // (B, C, d, h, w), mirrored by f
                    var delivered = 0
                    try predictor.predict(x, draws: chunk) { p, rows in
                        p.checkShape([rows.count, classes] + o.window, "SlidingWindow: the predictor's output")
                        blend.add(p.data, window: o.window, rows: rows.map { (sample: $0.draw - first, origin: origins[$0.window]) }, flip: f, weights: flipWeights)
                        delivered += rows.count
                    }
                    precondition(delivered == origins.count * chunk.count, "SlidingWindow: the predictor delivered \(delivered) of \(origins.count * chunk.count) predictions")
                    done += origins.count * chunk.count
                    progress(SlidingWindowProgress(windowsDone: done, windows: grid.starts.count, draws: draws, mirrorings: flips.count))
                }
            }
            for t in chunk {
                let sample = blend.finishSample(t - first) // (K, D, H, W) on the window grid
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
                    TemperatureScaling.apply(sample, temperature: o.temperatures[t], sigmoidOutputs: o.sigmoidOutputs)
                    sums.add(moved())
                } else {
                    let m = moved()
                    sampleHook?(t, m)
                    sums.add(m)
                }
            }
        }
        var maps = sums.finish(windows: grid.starts.count)
        maps.untemperedProbabilities = untempered
        return maps
    }

    /// The windows at `origins` (volume coordinates; outside the volume is 0), each mirrored by
    /// `flip` (bit 0 = D, 1 = H, 2 = W) as it is read: (B, C, d, h, w).
    static func cut(_ image: Tensor, origins: [[Int]], window: [Int], flip: Int = 0) -> Tensor {
        let c = image.shape[0], (d, h, w) = (window[0], window[1], window[2]), wn = d * h * w
        let (D, H, W) = (image.shape[1], image.shape[2], image.shape[3])
        let x = Tensor(shape: [origins.count, c] + window)
        for (b, o) in origins.enumerated() {
            let x0 = max(0, -o[2]), x1 = min(w, W - o[2])
            guard x0 < x1 else { continue }
            for ch in 0..<c { for z in 0..<d {
                let gz = o[0] + z
                guard gz >= 0 && gz < D else { continue }
                let tz = flip & 1 != 0 ? d - 1 - z : z
                for y in 0..<h {
                    let gy = o[1] + y
                    guard gy >= 0 && gy < H else { continue }
                    let ty = flip & 2 != 0 ? h - 1 - y : y
                    let src = image.data + ((ch * D + gz) * H + gy) * W + o[2]
                    let dst = x.data + b * c * wn + ((ch * d + tz) * h + ty) * w
                    if flip & 4 != 0 {
                        for i in x0..<x1 { dst[w - 1 - i] = src[i] }
                    } else {
                        (dst + x0).update(from: src + x0, count: x1 - x0)
                    }
                }
            } }
        }
        return x
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
