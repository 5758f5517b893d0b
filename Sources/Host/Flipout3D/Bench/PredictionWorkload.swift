// The prediction workload P1: one 2-channel 160×192×160 case, 8 Monte Carlo samples, sliding windows of the training patch at overlap 0.5.
import Foundation

/// P1 (issue 23): `predict`'s sliding-window Monte Carlo inference of U1's network (width 8, 3
/// levels, 2 channels, 3 classes, Flipout on every convolution) over one 160×192×160 case, windows
/// of the 32³ training patch at overlap 0.5 with Gaussian weights, 8 samples, the maps (mean,
/// entropy, expected entropy, MI) computed. No test-time mirroring, as the peer
/// (`unet_step_peers.py --predict 160,192,160 --samples 8`: MONAI's `sliding_window_inference`
/// with sw_batch_size 2, once per sample) runs none.
public struct PredictionWorkload: Sendable, Equatable {
    public var name = "P1"
    public var network = UNetWorkload.u1
    /// (D, H, W) of the case.
    public var volume = [160, 192, 160]
    public var samples = 8
    public var overlap = 0.5
    /// Test-time mirroring axes (none in P1).
    public var mirrorAxes: [Int] = []
    /// Samples of one window per network call (`ModelPredictor.drawsPerCall`).
    public var drawsPerCall = ModelPredictor.defaultDrawsPerCall

    public static let p1 = PredictionWorkload()
    /// P1 with the 8 samples of a window in one call through the grouped (per-sample kernel) convolution.
    public static let p1Grouped = PredictionWorkload(name: "P1-grouped", drawsPerCall: 8)
    public static let all = [p1, p1Grouped]

    public var window: [Int] { [network.patch, network.patch, network.patch] }
}

/// One timed prediction: the median over repeats, and the work it did.
public struct PredictionBenchResult: Codable, Sendable {
    public var workload: String
    public var bayesian: Bool
    public var medianMs: Double
    public var minMs: Double
    public var repeats: Int
    public var windows: Int
    public var samples: Int
    /// Network evaluations of one window (windows × samples × mirrorings) per second.
    public var windowSamplesPerSecond: Double
    public var meanMutualInformation: Double
    public var peakRSSMiB: Double

    enum CodingKeys: String, CodingKey {
        case workload, bayesian, repeats, windows, samples
        case medianMs = "median_ms", minMs = "min_ms", windowSamplesPerSecond = "window_samples_per_second"
        case meanMutualInformation = "mean_mi", peakRSSMiB = "peak_rss_mib"
    }
}

extension Workloads {
    /// Times `w` through `SlidingWindow.predict` with the `ModelPredictor` that `predict` uses
    /// (the case's standard-normal voxels stand for a z-scored image; the network is freshly
    /// initialised, which costs the same as a trained one).
    public static func prediction(_ w: PredictionWorkload, bayesian: Bool = true, registry: PluginRegistry,
                                  repeats: Int, warmup: Int, progress: (String) -> Void = { _ in }) throws -> PredictionBenchResult {
        var m = ModelConfig(); m.bayesian = bayesian
        let model = try UNet(m, shape: w.network.shape, registry: registry, seed: 1)
        let predictor = ModelPredictor(unet: model, samples: w.samples, seed: 1, drawsPerCall: w.drawsPerCall)
        let image = Tensor(shape: [w.network.channels] + w.volume)
        var s = RandomStream(seed: 1, layer: 0, step: 0, purpose: .test)
        s.fillNormal(image.data, count: image.count)
        let options = SlidingWindowOptions(window: w.window, overlap: w.overlap, batch: 2, mirrorAxes: w.mirrorAxes)
        var maps: PredictiveMaps?
        var times: [Double] = []
        for i in 0..<(warmup + repeats) {
            let start = DispatchTime.now().uptimeNanoseconds
            maps = try SlidingWindow.predict(image, classes: w.network.classes, draws: predictor.draws, options: options, predictor: predictor)
            let ms = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
            if i >= warmup { times.append(ms) }
            progress(String(format: "%@ %@ %d/%d: %.0f ms", w.name, i < warmup ? "warm-up" : "run", i < warmup ? i + 1 : i - warmup + 1,
                            i < warmup ? warmup : repeats, ms))
        }
        let sorted = times.sorted(), median = sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
        let mi = maps!.mutualInformation
        let evaluations = Double(maps!.windows * maps!.draws * (1 << w.mirrorAxes.count))
        return PredictionBenchResult(workload: bayesian ? w.name : w.name + "-deterministic", bayesian: bayesian, medianMs: median,
                                     minMs: sorted.first!, repeats: repeats, windows: maps!.windows, samples: maps!.draws,
                                     windowSamplesPerSecond: evaluations / (median / 1e3),
                                     meanMutualInformation: mi.array.reduce(0.0) { $0 + Double($1) } / Double(mi.count),
                                     peakRSSMiB: BenchResult.peakRSSMiB())
    }
}
