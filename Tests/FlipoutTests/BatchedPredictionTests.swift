// Monte Carlo draws batched per window give the maps of one draw per call; seeds reproduce; mirroring undone by index equals flipped copies.
import Foundation
import Testing
import Flipout3D
import TestSupport

/// x (N, C, d, h, w) reversed along d (bit 0 of `axes`), h (bit 1), w (bit 2): an independent copy-based reference.
private func flipped(_ x: Tensor, _ axes: Int) -> Tensor {
    let s = x.shape, (d, h, w) = (s[2], s[3], s[4]), planes = s[0] * s[1]
    let out = Tensor(shape: s)
    for p in 0..<planes { for z in 0..<d { for y in 0..<h { for i in 0..<w {
        let sz = axes & 1 != 0 ? d - 1 - z : z, sy = axes & 2 != 0 ? h - 1 - y : y, si = axes & 4 != 0 ? w - 1 - i : i
        out.data[((p * d + z) * h + y) * w + i] = x.data[((p * d + sz) * h + sy) * w + si]
    } } } }
    return out
}

private func maxDiff(_ a: Tensor, _ b: Tensor) -> Float { zip(a.array, b.array).map { abs($0 - $1) }.max()! }

@Suite struct BatchedPredictionTests {
    static func model(estimator: String = "auto", seed: UInt64 = 9) throws -> UNet {
        var (m, u, _, _) = SmallRun.configs(epochs: 1, seed: seed)
        m.estimator = estimator
        return try UNet(m, shape: u, registry: try SmallRun.registry(), seed: seed)
    }

    static let volume = Tensor(shape: [2, 16, 12, 20], values: TestNoise.normals(2 * 16 * 12 * 20, seed: 2))

    static func maps(_ p: ModelPredictor, batched: Bool, mirrorAxes: [Int] = [], batch: Int = 2,
                     hook: ((Int, Tensor) -> Void)? = nil) throws -> PredictiveMaps {
        let o = SlidingWindowOptions(window: [8, 8, 8], overlap: 0.5, batch: batch, mirrorAxes: mirrorAxes)
        return batched
            ? try SlidingWindow.predict(volume, classes: 3, draws: p.draws, options: o, sampleHook: hook, predictor: p)
            : try SlidingWindow.predict(volume, classes: 3, draws: p.draws, options: o, sampleHook: hook, predictor: p.callAsFunction)
    }

    /// Must show: the batched path (8 draws of a window per call, two weight groups for 10 samples)
    /// gives the maps of one draw per call (through the closure, and with drawsPerCall 1), within
    /// rounding of the batch size; MI is there.
    @Test(arguments: ["auto", "per-example", "reparam"])
    func batchedDrawsEqualOneDrawPerCall(estimator: String) throws {
        let p = ModelPredictor(unet: try Self.model(estimator: estimator), samples: 10, seed: 7, drawsPerCall: 8)
        let a = try Self.maps(p, batched: true), b = try Self.maps(p, batched: false, batch: 3)
        let one = try Self.maps(ModelPredictor(unet: try Self.model(estimator: estimator), samples: 10, seed: 7, drawsPerCall: 1), batched: true)
        #expect(maxDiff(one.probabilities, b.probabilities) < 2e-5 && maxDiff(one.mutualInformation, b.mutualInformation) < 2e-5)
        for (x, y) in [(a.probabilities, b.probabilities), (a.predictiveEntropy, b.predictiveEntropy),
                       (a.expectedEntropy, b.expectedEntropy), (a.mutualInformation, b.mutualInformation)] {
            #expect(maxDiff(x, y) < 2e-5, "\(estimator): batched and per-draw maps differ by \(maxDiff(x, y))")
        }
        #expect(a.mutualInformation.array.contains { $0 > 1e-4 }, "\(estimator): the samples should disagree")
        #expect(a.draws == 10 && a.windows == b.windows)
    }

    /// A deep ensemble pools its members' draws in order: batched (draw ranges across members)
    /// equals one draw per call, and member 1's draws are its own.
    @Test func ensembleDrawsSpanTheMembers() throws {
        let e = EnsemblePredictor([ModelPredictor(unet: try Self.model(seed: 9), samples: 3, seed: 7, drawsPerCall: 3),
                                   ModelPredictor(unet: try Self.model(seed: 10), samples: 2, seed: 7, drawsPerCall: 2)])
        let o = SlidingWindowOptions(window: [8, 8, 8], overlap: 0.5)
        var batched: [Int: Tensor] = [:], single: [Int: Tensor] = [:]
        let a = try SlidingWindow.predict(Self.volume, classes: 3, draws: e.draws, options: o, sampleHook: { batched[$0] = $1.copy() }, predictor: e)
        let b = try SlidingWindow.predict(Self.volume, classes: 3, draws: e.draws, options: o, sampleHook: { single[$0] = $1.copy() }, predictor: e.callAsFunction)
        #expect(a.draws == 5 && batched.count == 5 && single.count == 5)
        #expect(maxDiff(a.probabilities, b.probabilities) < 2e-5 && maxDiff(a.mutualInformation, b.mutualInformation) < 2e-5)
        let member1 = try SlidingWindow.predict(Self.volume, classes: 3, draws: 2, options: o, sampleHook: { t, p in
            #expect(maxDiff(p, batched[3 + t]!) < 2e-5, "ensemble draw \(3 + t) should be member 1's draw \(t)")
        }, predictor: e.members[1])
        #expect(member1.draws == 2)
    }

    /// Same seed, identical maps (bit for bit); another seed, other maps; sample t is the same weight
    /// draw whatever --samples is (the first 3 of 10 equal the 3 of 3), and differs from sample t + 1.
    @Test func seedsReproduceAndDrawsDoNotDependOnTheSampleCount() throws {
        let unet = try Self.model()
        let a = try Self.maps(ModelPredictor(unet: unet, samples: 10, seed: 7, drawsPerCall: 8), batched: true)
        let b = try Self.maps(ModelPredictor(unet: unet, samples: 10, seed: 7, drawsPerCall: 8), batched: true)
        let c = try Self.maps(ModelPredictor(unet: unet, samples: 10, seed: 8, drawsPerCall: 8), batched: true)
        #expect(a.probabilities.array == b.probabilities.array && a.mutualInformation.array == b.mutualInformation.array)
        #expect(maxDiff(a.probabilities, c.probabilities) > 1e-4)
        var ten: [Int: Tensor] = [:], three: [Int: Tensor] = [:]
        _ = try Self.maps(ModelPredictor(unet: unet, samples: 10, seed: 7, drawsPerCall: 8), batched: true) { t, p in ten[t] = p.copy() }
        _ = try Self.maps(ModelPredictor(unet: unet, samples: 3, seed: 7, drawsPerCall: 3), batched: true) { t, p in three[t] = p.copy() }
        #expect(ten.count == 10 && three.count == 3)
        for t in 0..<3 { #expect(maxDiff(ten[t]!, three[t]!) < 2e-5, "sample \(t) moved with --samples: \(maxDiff(ten[t]!, three[t]!))") }
        for t in 0..<9 { #expect(maxDiff(ten[t]!, ten[t + 1]!) > 1e-4, "samples \(t) and \(t + 1) should be different weight draws") }
    }

    /// Mirroring read into the window and undone by index while blending equals predicting flipped
    /// copies and flipping the outputs back (the mean over the flips per draw), at padded borders too.
    @Test func mirroringUndoneByIndexEqualsFlippedCopies() throws {
        // Not flip-equivariant: the logits depend on the position inside the window.
        let positional: WindowPredictor = { x, draw in
            let s = x.shape, (d, h, w) = (s[2], s[3], s[4]), wn = d * h * w
            let p = Tensor(shape: [s[0], 3, d, h, w])
            for b in 0..<s[0] { for z in 0..<d { for y in 0..<h { for i in 0..<w {
                let v = (z * h + y) * w + i, a = x.data[b * s[1] * wn + v]
                let l: [Float] = [a + 0.3 * Float(z) - 0.1 * Float(draw), -a + 0.2 * Float(i), 0.5 * a * Float(y) / Float(h)]
                let m = l.max()!, e = l.map { exp($0 - m) }, sum = e.reduce(0, +)
                for k in 0..<3 { p.data[(b * 3 + k) * wn + v] = e[k] / sum }
            } } } }
            return p
        }
        let x = Tensor(shape: [1, 13, 11, 9], values: TestNoise.normals(13 * 11 * 9, seed: 5))
        for axes in [[0, 2], [1], [0, 1, 2]] {
            let flips = Mirror.testTimeCombinations(axes: axes)
            let reference: WindowPredictor = { w, draw in
                var mean: Tensor?
                for f in flips {
                    let p = flipped(try positional(flipped(w, f), draw), f)
                    if let m = mean { for i in 0..<m.count { m.data[i] += p.data[i] } } else { mean = p }
                }
                for i in 0..<mean!.count { mean!.data[i] /= Float(flips.count) }
                return mean!
            }
            let window = [6, 6, 4]
            let ours = try SlidingWindow.predict(x, classes: 3, draws: 2, options: SlidingWindowOptions(window: window, overlap: 0.5, batch: 3, mirrorAxes: axes),
                                                 predictor: positional)
            let copies = try SlidingWindow.predict(x, classes: 3, draws: 2, options: SlidingWindowOptions(window: window, overlap: 0.5, batch: 3),
                                                   predictor: reference)
            let plain = try SlidingWindow.predict(x, classes: 3, draws: 2, options: SlidingWindowOptions(window: window, overlap: 0.5, batch: 3),
                                                  predictor: positional)
            #expect(maxDiff(ours.probabilities, copies.probabilities) < 1e-6, "axes \(axes): \(maxDiff(ours.probabilities, copies.probabilities))")
            #expect(maxDiff(ours.mutualInformation, copies.mutualInformation) < 1e-6)
            #expect(maxDiff(ours.probabilities, plain.probabilities) > 1e-2, "axes \(axes): mirroring should change this predictor's output")
        }
        // A window larger than the volume (padded on every side) and mirrored.
        let big = try SlidingWindow.predict(x, classes: 3, draws: 1, options: SlidingWindowOptions(window: [16, 12, 12], mirrorAxes: [0, 1, 2]), predictor: positional)
        let bigRef = try SlidingWindow.predict(x, classes: 3, draws: 1, options: SlidingWindowOptions(window: [16, 12, 12])) { w, t in
            let mean = Tensor(shape: [1, 3, 16, 12, 12])
            for f in 0..<8 { let p = flipped(try positional(flipped(w, f), t), f); for i in 0..<p.count { mean.data[i] += p.data[i] / 8 } }
            return mean
        }
        #expect(maxDiff(big.probabilities, bigRef.probabilities) < 1e-6)
    }

    /// With test-time mirroring along every axis, a Bayesian network's window predictions are
    /// equivariant: one window covering the volume, the flipped input gives the flipped maps.
    @Test func fullMirroringMakesTheUNetFlipEquivariant() throws {
        let p = ModelPredictor(unet: try Self.model(), samples: 4, seed: 3)
        let x = Tensor(shape: [1, 2, 16, 16, 16], values: TestNoise.normals(2 * 4096, seed: 4))
        let o = SlidingWindowOptions(window: [16, 16, 16], mirrorAxes: [0, 1, 2])
        let image = x.reshaped([2, 16, 16, 16])
        for f in [1, 5, 6] {
            let xf = flipped(x, f).reshaped([2, 16, 16, 16])
            let a = try SlidingWindow.predict(image, classes: 3, draws: 4, options: o, predictor: p)
            let b = try SlidingWindow.predict(xf, classes: 3, draws: 4, options: o, predictor: p)
            let back = flipped(b.probabilities.reshaped([1, 3, 16, 16, 16]), f).reshaped([3, 16, 16, 16])
            #expect(maxDiff(a.probabilities, back) < 1e-5, "flip \(f): \(maxDiff(a.probabilities, back))")
            let miBack = flipped(b.mutualInformation.reshaped([1, 1, 16, 16, 16]), f).reshaped([16, 16, 16])
            #expect(maxDiff(a.mutualInformation, miBack) < 1e-5)
            // Without mirroring the network alone is not equivariant.
            let c = try SlidingWindow.predict(xf, classes: 3, draws: 4, options: SlidingWindowOptions(window: [16, 16, 16]), predictor: p)
            let d = try SlidingWindow.predict(image, classes: 3, draws: 4, options: SlidingWindowOptions(window: [16, 16, 16]), predictor: p)
            let cBack = flipped(c.probabilities.reshaped([1, 3, 16, 16, 16]), f).reshaped([3, 16, 16, 16])
            #expect(maxDiff(d.probabilities, cBack) > 1e-3)
        }
    }
}
