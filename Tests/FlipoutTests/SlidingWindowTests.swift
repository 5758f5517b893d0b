// Sliding-window inference: MONAI's window scan, Gaussian weights, agreement with whole-volume prediction,
// and uncertainty from samples blended across windows first (not from (window, sample) pairs or averaged per-window maps).
import Foundation
import Testing
import Flipout3D
import TestSupport

/// A predictor whose output at a voxel depends only on the input value there and the draw: any
/// window layout must give the whole-volume answer. K = 3.
private func pointwise(_ x: Tensor, _ draw: Int) -> Tensor {
    let b = x.shape[0], wn = x.count / b / x.shape[1]
    let p = Tensor(shape: [b, 3] + Array(x.shape.suffix(3)))
    for i in 0..<b { for v in 0..<wn {
        let a = x.data[i * x.shape[1] * wn + v], s = Float(draw) * 0.3
        let l = [a + s, -a, 0.5 * a * a - s]
        let m = l.max()!, e = l.map { exp($0 - m) }, z = e.reduce(0, +)
        for c in 0..<3 { p.data[(i * 3 + c) * wn + v] = e[c] / z }
    } }
    return p
}

private func volume(_ shape: [Int], seed: UInt64) -> Tensor {
    Tensor(shape: shape, values: TestNoise.normals(shape.reduce(1, *), seed: seed))
}

@Suite struct SlidingWindowTests {
    @Test func windowStartsFollowMONAIsScan() {
        // Step ⌊4·0.5⌋ = 2: 0, 2, 4, 6 (6 + 4 reaches 10). Volume 11: the last start 8 shifts back to 7.
        #expect(WindowGrid(volume: [10, 11, 4], window: [4, 4, 4], overlap: 0.5).starts.map { $0[0] }.uniqued == [0, 2, 4, 6])
        #expect(WindowGrid(volume: [11, 4, 4], window: [4, 4, 4], overlap: 0.5).starts.map { $0[0] } == [0, 2, 4, 6, 7])
        // Overlap 0.25: step 3: 0, 3, 6 (6 + 4 = 10 >= 9 -> shifted to 5).
        #expect(WindowGrid(volume: [9, 4, 4], window: [4, 4, 4], overlap: 0.25).starts.map { $0[0] } == [0, 3, 5])
        // Smaller than the window: padded, half the padding before.
        let g = WindowGrid(volume: [3, 4, 1], window: [6, 4, 4], overlap: 0.5)
        #expect(g.padded == [6, 4, 4] && g.padBefore == [1, 0, 1] && g.starts == [[0, 0, 0]])
        #expect(WindowGrid(volume: [10, 11, 4], window: [4, 4, 4], overlap: 0.5).starts.count == 4 * 5 * 1)
    }

    @Test func gaussianWeightsAreMONAIsSampledGaussian() {
        let w = WindowGrid.gaussianWeights([8, 4, 5])
        // Center (4, 2, 2) is 1; sigma = 0.125·n per axis.
        #expect(w[(4 * 4 + 2) * 5 + 2] == 1)
        let expected = exp(-1 / (2 * 1.0)) * exp(-4 / (2 * 0.25)) * exp(-1 / (2 * 0.625 * 0.625))
        #expect(abs(Double(w[(3 * 4 + 0) * 5 + 1]) - expected) < 1e-7)
        #expect(w.allSatisfy { $0 > 0 })
    }

    @Test func windowLayoutDoesNotChangeAPointwisePrediction() throws {
        let x = volume([2, 13, 10, 9], seed: 1) // (C, D, H, W); the predictor reads channel 0
        let whole = try SlidingWindow.predict(x, classes: 3, draws: 3, options: SlidingWindowOptions(window: [13, 10, 9]), predictor: pointwise)
        for opts in [SlidingWindowOptions(window: [4, 6, 4], overlap: 0.5, batch: 3),
                     SlidingWindowOptions(window: [8, 8, 8], overlap: 0.25, batch: 1),
                     SlidingWindowOptions(window: [16, 4, 12], overlap: 0.5, batch: 2, mirror: true)] {
            let s = try SlidingWindow.predict(x, classes: 3, draws: 3, options: opts, predictor: pointwise)
            #expect(s.windows > 1 || opts.window[0] > 13)
            for (a, b) in [(s.probabilities, whole.probabilities), (s.predictiveEntropy, whole.predictiveEntropy),
                           (s.expectedEntropy, whole.expectedEntropy), (s.mutualInformation, whole.mutualInformation)] {
                let worst = zip(a.array, b.array).map { abs($0 - $1) }.max()!
                #expect(worst < 2e-6, "window \(opts.window) overlap \(opts.overlap): differs by \(worst)")
            }
        }
        #expect(whole.mutualInformation.array.contains { $0 > 0.01 })
    }

    /// Must show: with the window covering the volume, sliding-window prediction of the U-Net
    /// (2 channels, 3 classes) equals its whole-case tiled prediction.
    @Test func slidingWindowEqualsWholeVolumeForTheUNet() throws {
        var shape = UNetConfig()
        shape.inputChannels = 2; shape.classCount = 3; shape.width = 4
        var config = ModelConfig()
        config.width = 4
        let unet = try UNet(config, shape: shape, registry: try SmallRun.registry(), seed: 5)
        let x = volume([2, 8, 12, 16], seed: 4)
        let whole = try TiledPrediction.probabilities(unet, image: x, patchSize: [8, 12, 16], samples: 3, seed: 9)
        let s = try SlidingWindow.predict(x, classes: 3, draws: 3, options: SlidingWindowOptions(window: [8, 12, 16])) { w, draw in
            try unet.probabilities(w, StepContext.prediction(seed: 9, draw: draw))
        }
        let worst = zip(s.probabilities.array, whole.array).map { abs($0 - $1) }.max()!
        #expect(worst < 2e-6, "U-Net sliding window vs whole case: \(worst)")
        #expect(s.mutualInformation.array.contains { $0 > 1e-5 })
    }

    /// Windows blend, samples aggregate: each draw's windows are blended with the Gaussian weights
    /// into p_t, then the maps come from the samples p_t. Checked against a per-voxel reference,
    /// and shown to differ from pooling every (window, draw) pair as a sample.
    @Test func samplesAreBlendedAcrossWindowsBeforeEntropies() throws {
        let shape = [1, 6, 5, 7]
        let x = volume(shape, seed: 3)
        // Depends on the whole window (its mean) and the draw: overlapping windows disagree.
        let predictor: WindowPredictor = { w, draw in
            let b = w.shape[0], wn = w.count / b
            let p = Tensor(shape: [b, 2] + Array(w.shape.suffix(3)))
            for i in 0..<b {
                var mean: Float = 0
                for v in 0..<wn { mean += w.data[i * wn + v] }
                mean /= Float(wn)
                for v in 0..<wn {
                    let q = 1 / (1 + exp(-(w.data[i * wn + v] + 4 * mean + Float(draw) - 1)))
                    p.data[(i * 2 + 1) * wn + v] = q; p.data[i * 2 * wn + v] = 1 - q
                }
            }
            return p
        }
        let opts = SlidingWindowOptions(window: [4, 4, 4], overlap: 0.5, batch: 2)
        let maps = try SlidingWindow.predict(x, classes: 2, draws: 2, options: opts, predictor: predictor)
        // Reference: every voxel's list of (weight, draw, p) from each window and draw.
        let grid = WindowGrid(volume: [6, 5, 7], window: [4, 4, 4], overlap: 0.5)
        let wts = WindowGrid.gaussianWeights([4, 4, 4])
        var samples = [[(Double, Int, Double)]](repeating: [], count: 6 * 5 * 7)
        func h(_ q: Double) -> Double { -(q > 0 ? q * log(q) : 0) - (q < 1 ? (1 - q) * log(1 - q) : 0) }
        for s in grid.starts {
            let o = (0..<3).map { s[$0] - grid.padBefore[$0] }
            let win = Tensor(shape: [1, 1, 4, 4, 4])
            for z in 0..<4 { for y in 0..<4 { for xx in 0..<4 {
                let g = [o[0] + z, o[1] + y, o[2] + xx]
                if (0..<3).allSatisfy({ g[$0] >= 0 && g[$0] < [6, 5, 7][$0] }) {
                    win.data[(z * 4 + y) * 4 + xx] = x.data[(g[0] * 5 + g[1]) * 7 + g[2]]
                }
            } } }
            let ps = try (0..<2).map { try predictor(win, $0) }
            for z in 0..<4 { for y in 0..<4 { for xx in 0..<4 {
                let g = [o[0] + z, o[1] + y, o[2] + xx]
                guard (0..<3).allSatisfy({ g[$0] >= 0 && g[$0] < [6, 5, 7][$0] }) else { continue }
                let v = (g[0] * 5 + g[1]) * 7 + g[2], wv = (z * 4 + y) * 4 + xx, wt = Double(wts[wv])
                for t in 0..<2 { samples[v].append((wt, t, Double(ps[t].data[64 + wv]))) }
            } } }
        }
        var maxGap = 0.0
        for v in samples.indices {
            // p_t = Σ_w g q / Σ_w g per draw, then the Monte Carlo maps over the two samples.
            let pt = (0..<2).map { t in
                let mine = samples[v].filter { $0.1 == t }
                return mine.reduce(0.0) { $0 + $1.0 * $1.2 } / mine.reduce(0.0) { $0 + $1.0 }
            }
            let mean = pt.reduce(0, +) / 2, eh = pt.map(h).reduce(0, +) / 2
            #expect(abs(Double(maps.probabilities.data[6 * 5 * 7 + v]) - mean) < 1e-5)
            #expect(abs(Double(maps.expectedEntropy.data[v]) - eh) < 1e-5)
            #expect(abs(Double(maps.mutualInformation.data[v]) - max(h(mean) - eh, 0)) < 1e-5)
            // Pooling every (window, draw) pair as a sample counts window disagreement as MI.
            let w = samples[v].reduce(0.0) { $0 + $1.0 }
            let pooledEH = samples[v].reduce(0.0) { $0 + $1.0 * h($1.2) } / w
            maxGap = max(maxGap, abs((h(mean) - pooledEH) - Double(maps.mutualInformation.data[v])))
        }
        #expect(maxGap > 1e-2, "pooling (window, draw) pairs should differ from blending per sample here (gap \(maxGap))")
    }
}

extension Array where Element: Hashable {
    var uniqued: [Element] { var seen = Set<Element>(); return filter { seen.insert($0).inserted } }
}
