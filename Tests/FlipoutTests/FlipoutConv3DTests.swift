// The Flipout layer: one-convolution equals two-convolution, every backward against Double finite
// differences, and output moments against the directly sampled layer's closed form.
import Testing
import Foundation
import Flipout3D
import TestSupport

/// A small Flipout layer with Normal posterior and Normal(0, 1) prior.
struct LayerFixture {
    let layer: FlipoutConv3D
    let x: Tensor
    let g: Conv3DGeometry
    init(estimator: Estimator, n: Int = 3, cin: Int = 2, cout: Int = 3, size: [Int] = [5, 4, 6], seed: UInt64 = 7) throws {
        let normal = try PluginLibrary.load(BuildProducts.plugin("FlipoutNormal")).families[0]
        layer = try FlipoutConv3D(name: "test", index: 1, inChannels: cin, outChannels: cout, kernel: 3,
                                  estimator: estimator, posterior: try normal.instantiate(), prior: try normal.instantiate(),
                                  priorValues: ["scale": 1], seed: seed)
        // Larger posterior scales than the default so the perturbation is visible.
        let rho = layer.weights.parameters[1]
        for i in 0..<rho.count { rho[i] = -1 + 0.3 * Float(sin(Double(i))) }
        for i in 0..<layer.bias.count { layer.bias[i] = 0.1 * Float(i) - 0.05 }
        layer.weights.refresh()
        g = Conv3DGeometry(batch: n, inChannels: cin, outChannels: cout, inputSize: size, kernel: [3, 3, 3])
        x = Tensor(shape: g.xShape, values: testValues(g.xShape.reduce(1, *), seed: seed + 1))
    }
}

@Suite struct FlipoutConv3DTests {
    @Test(arguments: [1, 3])
    func oneConvolutionEqualsTwoConvolutionFormula(_ n: Int) throws {
        let f = try LayerFixture(estimator: .flipout, n: n)
        let (y, saved) = try f.layer.forward(f.x, StepContext(seed: 3, step: 5))
        let draw = try #require(saved.draw)
        let ref = try twoConvolutionFlipout(x: f.x, center: draw.center, sample: draw.sample!,
                                            signsIn: draw.signsIn!, signsOut: draw.signsOut!, bias: f.layer.bias, geometry: f.g)
        assertClose(y.array, ref.array, rtol: 1e-5, atol: 1e-5, "one-conv vs two-conv flipout")
        // Signs are +-1, never 0, and not all equal.
        let signs = draw.signsIn!.array + draw.signsOut!.array
        #expect(signs.allSatisfy { $0 == 1 || $0 == -1 })
        if n > 1 { #expect(Set(signs).count == 2) }
    }

    @Test func sameSeedIsBitIdentical() throws {
        let a = try LayerFixture(estimator: .flipout), b = try LayerFixture(estimator: .flipout)
        let (ya, sa) = try a.layer.forward(a.x, StepContext(seed: 11, step: 2))
        let (yb, sb) = try b.layer.forward(b.x, StepContext(seed: 11, step: 2))
        #expect(ya.array == yb.array)
        let dy = Tensor(shape: ya.shape, values: testValues(ya.count, seed: 5))
        let dxa = try a.layer.backward(dy, sa), dxb = try b.layer.backward(dy, sb)
        a.layer.finishBackward(); b.layer.finishBackward()
        #expect(dxa.array == dxb.array)
        #expect(a.layer.weights.gradients[1].array == b.layer.weights.gradients[1].array)
        let yc = try a.layer.forward(a.x, StepContext(seed: 11, step: 3)).y
        #expect(yc.array != ya.array)
    }

    /// Backward takes forward's saved value: later forwards (of this layer and of another with the
    /// same geometry) and in-place changes to x change nothing, bit for bit.
    @Test(arguments: [Estimator.flipout, .reparam, .perExample])
    func backwardDependsOnlyOnItsSavedValue(_ estimator: Estimator) throws {
        let clean = try LayerFixture(estimator: estimator), busy = try LayerFixture(estimator: estimator)
        let other = try LayerFixture(estimator: estimator, seed: 8)
        let ctx = StepContext(seed: 4, step: 1)
        let dy = Tensor(shape: clean.g.yShape, values: testValues(clean.g.yShape.reduce(1, *), seed: 6))
        let (_, s0) = try clean.layer.forward(clean.x, ctx)
        let dx0 = try clean.layer.backward(dy, s0)
        clean.layer.finishBackward()

        let x = busy.x.copy()
        let (_, saved) = try busy.layer.forward(x, ctx)
        _ = try busy.layer.forward(other.x, StepContext(seed: 4, step: 2))
        _ = try other.layer.forward(x, ctx)
        for i in 0..<x.count { x.data[i] *= -3 }
        let dx = try busy.layer.backward(dy, saved)
        busy.layer.finishBackward()
        #expect(dx.array == dx0.array)
        for k in 0..<2 { #expect(busy.layer.weights.gradients[k].array == clean.layer.weights.gradients[k].array) }
        #expect(busy.layer.biasGradient.array == clean.layer.biasGradient.array)
    }

    /// L = <y, r> + KL, recomputed entirely in Double from the textbook formulas, differenced centrally.
    @Test(arguments: [(Estimator.flipout, 3), (.reparam, 3), (.perExample, 3), (.flipout, 1), (.perExample, 1)])
    func backwardMatchesFiniteDifferences(_ estimator: Estimator, _ batch: Int) throws {
        let f = try LayerFixture(estimator: estimator, n: batch)
        let ctx = StepContext(seed: 9, step: 1)
        let (y, saved) = try f.layer.forward(f.x, ctx)
        let r = testValues(y.count, seed: 77).map(Double.init)
        let dx = try f.layer.backward(Tensor(shape: y.shape, values: r.map(Float.init)), saved)
        _ = try f.layer.kl(gradientScale: 1, ctx)
        f.layer.finishBackward()

        let e = f.layer.weightCount, n = f.g.batch
        let draw = try #require(saved.draw)
        let noise: [[Double]] = draw.noise.map { $0.normals.array.map(Double.init) }
        let sIn = draw.signsIn?.array.map(Double.init), sOut = draw.signsOut?.array.map(Double.init)
        let ref = ReferenceConv3D(Conv3DGeometry(batch: 1, inChannels: f.g.inChannels, outChannels: f.g.outChannels, inputSize: f.g.inputSize, kernel: [3, 3, 3]))
        let taps = 27, cin = f.g.inChannels, cout = f.g.outChannels

        func loss(loc: [Double], rho: [Double], bias: [Double], x: [Double]) -> Double {
            let s = rho.map(softplusD)
            var total = 0.0
            let xPer = x.count / n, yPer = y.count / n
            for b in 0..<n {
                var w = [Double](repeating: 0, count: e)
                for j in 0..<e {
                    let o = j / (cin * taps), i = (j / taps) % cin
                    switch estimator {
                    case .flipout: w[j] = loc[j] + s[j] * noise[0][j] * sOut![b * cout + o] * sIn![b * cin + i]
                    case .reparam: w[j] = loc[j] + s[j] * noise[0][j]
                    default: w[j] = loc[j] + s[j] * noise[b][j]
                    }
                }
                let yb = ref.forwardDouble(x: Array(x[b * xPer..<(b + 1) * xPer]), w: w)
                let per = yb.count / cout
                for (k, v) in yb.enumerated() { total += (v + bias[k / per]) * r[b * yPer + k] }
            }
            // KL(N(loc, s^2) || N(0, 1)) summed.
            for j in 0..<e { total += -log(s[j]) + (s[j] * s[j] + loc[j] * loc[j]) / 2 - 0.5 }
            return total
        }
        let loc = f.layer.weights.parameters[0].array.map(Double.init)
        let rho = f.layer.weights.parameters[1].array.map(Double.init)
        let bias = f.layer.bias.array.map(Double.init)
        let x = f.x.array.map(Double.init)
        let h = 1e-4
        for j in [0, 7, 31, e - 1] {
            var lp = loc, lm = loc; lp[j] += h; lm[j] -= h
            let fdLoc = (loss(loc: lp, rho: rho, bias: bias, x: x) - loss(loc: lm, rho: rho, bias: bias, x: x)) / (2 * h)
            var rp = rho, rm = rho; rp[j] += h; rm[j] -= h
            let fdRho = (loss(loc: loc, rho: rp, bias: bias, x: x) - loss(loc: loc, rho: rm, bias: bias, x: x)) / (2 * h)
            #expect(isClose(Double(f.layer.weights.gradients[0][j]), fdLoc, rtol: 2e-3, atol: 2e-3), "\(estimator) dloc[\(j)] \(f.layer.weights.gradients[0][j]) vs \(fdLoc)")
            #expect(isClose(Double(f.layer.weights.gradients[1][j]), fdRho, rtol: 2e-3, atol: 2e-3), "\(estimator) drho[\(j)] \(f.layer.weights.gradients[1][j]) vs \(fdRho)")
        }
        for o in 0..<cout {
            var bp = bias, bm = bias; bp[o] += h; bm[o] -= h
            let fd = (loss(loc: loc, rho: rho, bias: bp, x: x) - loss(loc: loc, rho: rho, bias: bm, x: x)) / (2 * h)
            #expect(isClose(Double(f.layer.biasGradient[o]), fd, rtol: 2e-3, atol: 2e-3), "\(estimator) dbias[\(o)]")
        }
        for j in [0, 13, x.count / 2, x.count - 1] {
            var xp = x, xm = x; xp[j] += h; xm[j] -= h
            let fd = (loss(loc: loc, rho: rho, bias: bias, x: xp) - loss(loc: loc, rho: rho, bias: bias, x: xm)) / (2 * h)
            #expect(isClose(Double(dx[j]), fd, rtol: 2e-3, atol: 2e-3), "\(estimator) dx[\(j)] \(dx[j]) vs \(fd)")
        }
    }

    /// Over many steps, example 0's output at one voxel has the mean conv(x, loc) and the variance
    /// sum_taps x^2 scale^2 of the directly sampled layer (independent Normal weights).
    @Test(arguments: [Estimator.flipout, .reparam, .perExample])
    func outputMomentsMatchDirectSampling(_ estimator: Estimator) throws {
        let f = try LayerFixture(estimator: estimator, n: 4, cin: 2, cout: 2, size: [4, 4, 4])
        let loc = f.layer.weights.parameters[0].array.map(Double.init)
        let s = f.layer.weights.parameters[1].array.map { softplusD(Double($0)) }
        let ref = ReferenceConv3D(Conv3DGeometry(batch: 1, inChannels: 2, outChannels: 2, inputSize: [4, 4, 4], kernel: [3, 3, 3]))
        let x0 = Array(f.x.array[0..<(2 * 64)]).map(Double.init)
        let voxel = 1 * 64 + 21   // output channel 1, an interior voxel
        let mean = ref.forwardDouble(x: x0, w: loc)[voxel] + Double(f.layer.bias[1])
        let variance = ref.forwardDouble(x: x0.map { $0 * $0 }, w: s.map { $0 * $0 })[voxel]
        let draws = 4000
        var values = [Double]()
        for step in 0..<draws {
            let y = try f.layer.forward(f.x, StepContext(seed: 21, step: step)).y
            values.append(Double(y[voxel]))
        }
        let m = values.reduce(0, +) / Double(draws)
        let v = values.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(draws - 1)
        // Standard errors of the sample mean and variance (normal outputs: var of s^2 is 2 sigma^4/(n-1)).
        let seMean = (variance / Double(draws)).squareRoot()
        let seVar = variance * (2.0 / Double(draws - 1)).squareRoot()
        #expect(abs(m - mean) < 5 * seMean, "\(estimator): mean \(m) vs \(mean) (se \(seMean))")
        #expect(abs(v - variance) < 5 * seVar, "\(estimator): variance \(v) vs \(variance) (se \(seVar))")
    }

    @Test func centerModeIsTheMeanNetwork() throws {
        let f = try LayerFixture(estimator: .flipout)
        let y = try f.layer.forward(f.x, StepContext(seed: 1, step: 1, mode: .center)).y
        let ref = ReferenceConv3D(f.g).forward(x: f.x.array, w: f.layer.weights.parameters[0].array, bias: f.layer.bias.array)
        assertClose(y.array, ref, rtol: 1e-5, atol: 1e-5, "center mode")
    }
}
