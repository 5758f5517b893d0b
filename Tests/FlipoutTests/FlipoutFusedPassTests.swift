// Flipout's fused per-sub-range passes (noise, center, sample, kernel assembly; fold and posterior VJPs) against the unfused primitives and Double finite differences, on layers of several sub-ranges.
import Testing
import Foundation
import Flipout3D
import TestSupport

@Suite struct FlipoutFusedPassTests {
    /// 16 -> 16 channels, k = 3: 6912 weights, two 4096-scalar sub-ranges, and the (o, i) row of
    /// 27 taps at weights 4077..<4104 straddles the boundary between them.
    static func fixture(estimator: Estimator = .flipout, n: Int = 2) throws -> LayerFixture {
        try LayerFixture(estimator: estimator, n: n, cin: 16, cout: 16, size: [3, 3, 3])
    }

    /// The fused draw gives, bit for bit, what one sequential noise fill, the whole-layer center
    /// and sample calls give; and the layer's output is the two-convolution Flipout formula.
    @Test(arguments: [Estimator.flipout, .reparam])
    func fusedDrawEqualsTheSequentialPrimitives(_ estimator: Estimator) throws {
        let f = try Self.fixture(estimator: estimator)
        let ctx = StepContext(seed: 12, step: 4)
        let (y, saved) = try f.layer.forward(f.x, ctx)
        let draw = try #require(saved.draw)
        let e = f.layer.weightCount
        #expect(e > 4096 && e % 4096 != 0)

        var stream = RandomStream(seed: ctx.seed, layer: f.layer.index, step: ctx.step, purpose: .kernelNoise)
        let normals = Tensor(shape: [e])
        stream.fillNormal(normals.data, count: e)
        #expect(draw.noise[0].normals.array == normals.array, "noise filled per sub-range differs from one sequential fill")

        let center = Tensor(shape: f.layer.kernelShape), sample = Tensor(shape: f.layer.kernelShape)
        try f.layer.weights.center(into: center.data)
        try f.layer.weights.sample(draw.noise[0], into: sample.data)
        #expect(draw.center.array == center.array)
        #expect(draw.sample!.array == sample.array)

        if estimator == .flipout {
            let ref = try twoConvolutionFlipout(x: f.x, center: center, sample: sample, signsIn: draw.signsIn!, signsOut: draw.signsOut!,
                                                bias: f.layer.bias, geometry: f.g)
            assertClose(y.array, ref.array, rtol: 1e-4, atol: 1e-4, "fused flipout vs two-convolution formula")
        }
        // The stream advances past the draw as one sequential draw does: the next draw (per-example
        // rows draw one after another) starts where that one ended.
        var a = RandomStream(seed: 1, layer: 2, step: 3, purpose: .kernelNoise), b = a
        let z = f.layer.weights.drawNoise(&a)
        b.fillNormal(normals.data, count: e)
        #expect(z.normals.array == normals.array)
        #expect(a.block == b.block)
    }

    /// L = <y, r> + KL recomputed in Double, differenced centrally, at weights on both sides of
    /// the sub-range boundary (the fold of a row split between two sub-ranges) and at the ends.
    @Test func fusedBackwardMatchesFiniteDifferencesAcrossSubRanges() throws {
        let f = try Self.fixture()
        let ctx = StepContext(seed: 9, step: 1)
        let (y, saved) = try f.layer.forward(f.x, ctx)
        let r = testValues(y.count, seed: 78).map(Double.init)
        _ = try f.layer.backward(Tensor(shape: y.shape, values: r.map(Float.init)), saved)
        _ = try f.layer.kl(gradientScale: 1, ctx)
        f.layer.finishBackward()

        let e = f.layer.weightCount, n = f.g.batch, taps = 27, cin = f.g.inChannels, cout = f.g.outChannels
        let draw = try #require(saved.draw)
        let noise = draw.noise[0].normals.array.map(Double.init)
        let sIn = draw.signsIn!.array.map(Double.init), sOut = draw.signsOut!.array.map(Double.init)
        let ref = ReferenceConv3D(Conv3DGeometry(batch: 1, inChannels: cin, outChannels: cout, inputSize: f.g.inputSize, kernel: [3, 3, 3]))
        let x = f.x.array.map(Double.init), bias = f.layer.bias.array.map(Double.init)
        func loss(loc: [Double], rho: [Double]) -> Double {
            let s = rho.map(softplusD)
            var total = 0.0
            let xPer = x.count / n, yPer = y.count / n
            for b in 0..<n {
                let w = (0..<e).map { j -> Double in
                    let o = j / (cin * taps), i = (j / taps) % cin
                    return loc[j] + s[j] * noise[j] * sOut[b * cout + o] * sIn[b * cin + i]
                }
                let yb = ref.forwardDouble(x: Array(x[b * xPer..<(b + 1) * xPer]), w: w)
                let per = yb.count / cout
                for (k, v) in yb.enumerated() { total += (v + bias[k / per]) * r[b * yPer + k] }
            }
            for j in 0..<e { total += -log(s[j]) + (s[j] * s[j] + loc[j] * loc[j]) / 2 - 0.5 }   // KL to N(0, 1)
            return total
        }
        let loc = f.layer.weights.parameters[0].array.map(Double.init)
        let rho = f.layer.weights.parameters[1].array.map(Double.init)
        let h = 1e-4
        for j in [0, 4077, 4095, 4096, 4103, e - 1] {
            var lp = loc, lm = loc; lp[j] += h; lm[j] -= h
            let fdLoc = (loss(loc: lp, rho: rho) - loss(loc: lm, rho: rho)) / (2 * h)
            var rp = rho, rm = rho; rp[j] += h; rm[j] -= h
            let fdRho = (loss(loc: loc, rho: rp) - loss(loc: loc, rho: rm)) / (2 * h)
            let gLoc = Double(f.layer.weights.gradients[0][j]), gRho = Double(f.layer.weights.gradients[1][j])
            #expect(isClose(gLoc, fdLoc, rtol: 2e-3, atol: 2e-3), "dloc[\(j)] \(gLoc) vs \(fdLoc)")
            #expect(isClose(gRho, fdRho, rtol: 2e-3, atol: 2e-3), "drho[\(j)] \(gRho) vs \(fdRho)")
        }
    }
}

/// `train --data` gives the same checkpoint bits on 1 and 2 threads: every split pass (plugin
/// sub-ranges, noise fills, folds, refresh, Adam) has fixed sub-ranges. Width 8 makes layers of
/// 6912 weights, so the Flipout passes run over several sub-ranges.
@Suite(.serialized) struct ThreadCountBitIdentityTests {
    @Test func trainingIsBitIdenticalOnOneAndTwoThreads() throws {
        let dir = try Fixtures.temporaryDirectory("flipout-threads")
        defer { try? FileManager.default.removeItem(at: dir) }
        let data = try MPIRun.dataset(dir)
        var checkpoints: [Data] = []
        for threads in ["1", "2"] {
            var env = FlipoutCLI.hermeticEnvironment
            env["OMP_NUM_THREADS"] = threads
            let run = dir.appendingPathComponent("run\(threads)").path
            let r = try Subprocess.run(BuildProducts.flipout, ["train", "--data", data, "--epochs", "1", "--batch-size", "2", "--steps-per-epoch", "2",
                                                               "--patch", "16,16,16", "--width", "8", "--levels", "2", "--seed", "5", "--quiet", "--run", run],
                                       environment: env)
            try #require(r.status == 0, "train on \(threads) thread(s) failed: \(r.stderr)")
            checkpoints.append(try Data(contentsOf: URL(fileURLWithPath: run).appendingPathComponent("checkpoint.safetensors")))
        }
        #expect(checkpoints[0] == checkpoints[1], "the checkpoints of 1 and 2 threads differ")
    }
}
