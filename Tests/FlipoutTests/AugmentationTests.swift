// nnU-Net's default augmentation, one transform at a time: geometry against closed forms and axis permutations, intensity statistics, keyed draws.
import Testing
import Foundation
import TestSupport
import Flipout3D

private func tensor(_ shape: [Int], _ f: (Int, Int, Int, Int) -> Float) -> Tensor {
    let (c, d, h, w) = (shape[0], shape[1], shape[2], shape[3])
    var v: [Float] = []
    for ch in 0..<c { for z in 0..<d { for y in 0..<h { for x in 0..<w { v.append(f(ch, z, y, x)) } } } }
    return Tensor(shape: shape, values: v)
}

private func meanSD(_ a: [Float]) -> (Double, Double) {
    let m = a.reduce(0.0) { $0 + Double($1) } / Double(a.count)
    return (m, (a.reduce(0.0) { $0 + (Double($1) - m) * (Double($1) - m) } / Double(a.count)).squareRoot())
}

/// Runs `body` on a copy of `values` and returns the result.
private func transformed(_ values: [Float], _ body: (UnsafeMutablePointer<Float>) -> Void) -> [Float] {
    var v = values
    v.withUnsafeMutableBufferPointer { body($0.baseAddress!) }
    return v
}

@Suite struct SpatialTransformTests {
    /// A 90° turn about D is the axis permutation out[z, y, x] = in[z, 8 − x, y] (offsets about
    /// the centre (4, 4, 4): (y, x) → (−x, y)), for the image and the label alike.
    @Test func quarterTurnIsAnAxisPermutation() {
        let image = tensor([1, 9, 9, 9]) { _, z, y, x in Float(z * 100 + y * 10 + x) }
        let label = tensor([1, 9, 9, 9]) { _, z, y, x in Float((z + 2 * y + 3 * x) % 3) }
        let out = Tensor(shape: [1, 9, 9, 9]), outLabel = Tensor(shape: [1, 9, 9, 9])
        SpatialTransform(angles: [Double.pi / 2, 0, 0], scale: 1)
            .sample(image: image, label: label, centre: [4, 4, 4], size: [9, 9, 9], into: out.data, labelInto: outLabel.data)
        let o = out.array, l = outLabel.array, src = image.array, srcLabel = label.array
        for z in 0..<9 { for y in 0..<9 { for x in 0..<9 {
            let i = (z * 9 + y) * 9 + x, j = (z * 9 + (8 - x)) * 9 + y
            #expect(abs(o[i] - src[j]) < 1e-3 && l[i] == srcLabel[j], "(\(z), \(y), \(x))")
        } } }
    }

    /// Scale 1 without rotation is a crop, zero outside the case, for any start.
    @Test func identityIsACrop() {
        let image = tensor([2, 7, 6, 5]) { c, z, y, x in Float(c * 1000 + z * 100 + y * 10 + x + 1) }
        let label = tensor([1, 7, 6, 5]) { _, z, _, x in Float((z + x) % 2) }
        for start in [[0, 0, 0], [2, 1, 1], [-2, 3, -1], [5, 4, 3]] {
            let size = [4, 4, 4]
            let out = Tensor(shape: [2] + size), outLabel = Tensor(shape: [1] + size)
            let centre = (0..<3).map { Double(start[$0]) + 1.5 }
            SpatialTransform.identity.sample(image: image, label: label, centre: centre, size: size, into: out.data, labelInto: outLabel.data)
            let ref = Tensor(shape: [2] + size), refLabel = Tensor(shape: [1] + size)
            PatchSampler.crop(image, start: start, size: size, into: ref.data)
            PatchSampler.crop(label, start: start, size: size, into: refLabel.data)
            assertClose(out.array, ref.array, rtol: 0, atol: 1e-4, "start \(start)")
            #expect(outLabel.array == refLabel.array, "label at start \(start)")
        }
    }

    /// Trilinear interpolation reproduces a linear function exactly, so a rotated and scaled patch
    /// of f(z, y, x) = 3z − 2y + 0.5x + 7 is f at centre + M·offset wherever all 8 corners are inside.
    @Test func rotatedScaledPatchOfALinearFieldIsTheFieldAtTheMappedPoints() {
        func f(_ z: Double, _ y: Double, _ x: Double) -> Double { 3 * z - 2 * y + 0.5 * x + 7 }
        let shape = [24, 24, 24]
        let image = tensor([1] + shape) { _, z, y, x in Float(f(Double(z), Double(y), Double(x))) }
        let t = SpatialTransform(angles: [0.4, -0.3, 0.2], scale: 1.3)
        let size = [8, 10, 9], centre = [11.5, 12.25, 11.0]
        let out = Tensor(shape: [1] + size)
        t.sample(image: image, label: nil, centre: centre, size: size, into: out.data, labelInto: nil)
        let o = out.array
        var checked = 0
        for z in 0..<size[0] { for y in 0..<size[1] { for x in 0..<size[2] {
            let off = [Double(z) - 3.5, Double(y) - 4.5, Double(x) - 4]
            let p: [Double] = (0..<3).map { r in
                let moved: Double = t.matrix[r][0] * off[0] + t.matrix[r][1] * off[1] + t.matrix[r][2] * off[2]
                return centre[r] + moved
            }
            guard p.allSatisfy({ $0 >= 0 && $0 <= 23 }) else { continue }
            checked += 1
            #expect(abs(Double(o[(z * size[1] + y) * size[2] + x]) - f(p[0], p[1], p[2])) < 1e-3, "(\(z), \(y), \(x)) at \(p)")
        } } }
        #expect(checked == size.reduce(1, *))
        // The matrix is a rotation times 1.3: M Mᵀ = 1.69 I.
        for r in 0..<3 { for c in 0..<3 {
            let dot: Double = t.matrix[r][0] * t.matrix[c][0] + t.matrix[r][1] * t.matrix[c][1] + t.matrix[r][2] * t.matrix[c][2]
            #expect(abs(dot - (r == c ? 1.69 : 0)) < 1e-12)
        } }
    }
}

@Suite struct IntensityTransformTests {
    let values: [Float] = (0..<4096).map { Float(sin(Double($0) * 0.37) * 2 + cos(Double($0) * 0.011) + 0.3) }

    /// Gamma keeps the channel's mean and sd, for γ below and above 1, plain and inverted; γ = 1 is the identity;
    /// inverted gamma on x is minus plain gamma on −x.
    @Test func gammaRetainsMeanAndSD() {
        let (m, s) = meanSD(values)
        for g in [0.7, 1.5] { for inverted in [false, true] {
            let out = transformed(values) { Gamma.apply($0, count: values.count, gamma: g, inverted: inverted) }
            let (m2, s2) = meanSD(out)
            #expect(abs(m2 - m) < 1e-4 && abs(s2 - s) < 1e-4, "γ \(g) inverted \(inverted): mean \(m2) vs \(m), sd \(s2) vs \(s)")
            #expect(out != values)
        } }
        assertClose(transformed(values) { Gamma.apply($0, count: values.count, gamma: 1, inverted: false) }, values, rtol: 1e-5, atol: 1e-5, "γ = 1")
        let inverted = transformed(values) { Gamma.apply($0, count: values.count, gamma: 0.8, inverted: true) }
        let plainOfNegated = transformed(values.map { -$0 }) { Gamma.apply($0, count: values.count, gamma: 0.8, inverted: false) }.map { -$0 }
        assertClose(inverted, plainOfNegated, rtol: 1e-5, atol: 1e-5, "inverted = −plain(−x)")
        // γ < 1 on [0, 1]-rescaled values lifts the middle: the median moves up before the statistics are restored.
        let ramp = (0..<101).map { Float($0) / 100 }
        let lifted = transformed(ramp) { Gamma.apply($0, count: 101, gamma: 0.5, inverted: false) }
        #expect(lifted[25] - lifted[0] > lifted[100] - lifted[75], "γ 0.5 stretches the dark end")
    }

    /// Contrast keeps the range (clipped to the former min and max), keeps the mean when it
    /// shrinks (no clipping), and scales deviations by the factor.
    @Test func contrastPreservesTheRange() {
        let (m, _) = meanSD(values), lo = values.min()!, hi = values.max()!
        let up = transformed(values) { Contrast.apply($0, count: values.count, factor: 1.25) }
        #expect(up.min()! >= lo && up.max()! <= hi && (up.min()! == lo || up.max()! == hi))
        let down = transformed(values) { Contrast.apply($0, count: values.count, factor: 0.75) }
        #expect(abs(meanSD(down).0 - m) < 1e-5)
        for i in stride(from: 0, to: values.count, by: 97) { #expect(abs(Double(down[i]) - (m + 0.75 * (Double(values[i]) - m))) < 1e-4) }
        #expect(transformed(values) { MultiplicativeBrightness.apply($0, count: values.count, factor: 1.2) } == values.map { $0 * 1.2 })
    }

    /// Noise of sd 0.3 on zeros: sample mean ≈ 0 and sd ≈ 0.3 over 40 000 values; same key, same noise.
    @Test func noiseHasTheDrawnSD() {
        let zeros = [Float](repeating: 0, count: 40_000)
        var rng = RandomStream(seed: 1, layer: 0, step: 0, purpose: .augmentationNoise)
        let n = transformed(zeros) { GaussianNoise.apply($0, count: zeros.count, sd: 0.3, rng: &rng) }
        let (m, s) = meanSD(n)
        #expect(abs(m) < 0.006 && abs(s - 0.3) < 0.006, "mean \(m), sd \(s)")
        var again = RandomStream(seed: 1, layer: 0, step: 0, purpose: .augmentationNoise)
        #expect(transformed(zeros) { GaussianNoise.apply($0, count: zeros.count, sd: 0.3, rng: &again) } == n)
    }

    /// Blur against a direct 3D convolution in Double with the product kernel (replicated edges),
    /// and a constant volume is unchanged.
    @Test func blurEqualsADirectConvolution() {
        let shape = [7, 8, 9], sigmas = [0.5, 0.8, 1.0]
        let x = testValues(shape.reduce(1, *), seed: 3)
        let out = transformed(x) { GaussianBlur.apply($0, shape: shape, sigmas: sigmas) }
        func k(_ s: Double) -> [Double] {
            let r = Int((4 * s).rounded(.up)), w = (-r...r).map { exp(-Double($0 * $0) / (2 * s * s)) }, t = w.reduce(0, +)
            return w.map { $0 / t }
        }
        let kz = k(sigmas[0]), ky = k(sigmas[1]), kx = k(sigmas[2])
        let (rz, ry, rx) = (kz.count / 2, ky.count / 2, kx.count / 2)
        var ref = [Float](repeating: 0, count: x.count)
        for z in 0..<7 { for y in 0..<8 { for xx in 0..<9 {
            var s = 0.0
            for a in -rz...rz { for b in -ry...ry { for c in -rx...rx {
                let sz = min(max(z + a, 0), 6), sy = min(max(y + b, 0), 7), sx = min(max(xx + c, 0), 8)
                s += kz[a + rz] * ky[b + ry] * kx[c + rx] * Double(x[(sz * 8 + sy) * 9 + sx])
            } } }
            ref[(z * 8 + y) * 9 + xx] = Float(s)
        } } }
        assertClose(out, ref, rtol: 1e-4, atol: 1e-5, "blur σ \(sigmas)")
        let constant = [Float](repeating: 2.5, count: x.count)
        assertClose(transformed(constant) { GaussianBlur.apply($0, shape: shape, sigmas: sigmas) }, constant, rtol: 1e-5, atol: 0, "constant")
    }

    /// Low resolution at 0.5 of a ramp along W (n = 8): nearest-exact keeps x = 1, 3, 5, 7, and the
    /// trilinear upsampling (edge-aligned) gives x + 0.5 inside, 1 and 7 at the ends. Scale 1: identity.
    @Test func lowResolutionOfARamp() {
        let shape = [4, 4, 8]
        let ramp = (0..<128).map { Float($0 % 8) }
        let out = transformed(ramp) { LowResolution.apply($0, shape: shape, scale: 0.5) }
        for i in 0..<128 {
            let x = i % 8
            let expected: Float = x == 0 ? 1 : x == 7 ? 7 : Float(x) + 0.5
            #expect(out[i] == expected, "x \(x): \(out[i])")
        }
        #expect(transformed(ramp) { LowResolution.apply($0, shape: shape, scale: 1) } == ramp)
        #expect(LowResolution.coarseShape([64, 48, 33], scale: 0.5) == [32, 24, 17])
    }

    /// Mirroring maps index i to n − 1 − i on each chosen axis; twice is the identity.
    @Test func mirrorReversesTheChosenAxes() {
        let x = tensor([2, 3, 4, 5]) { c, z, y, x in Float(c * 1000 + z * 100 + y * 10 + x) }
        let once = transformed(x.array) { Mirror.apply($0, shape: [2, 3, 4, 5], axes: [0, 2]) }
        // Channel 1, (z, y, x) = (0, 1, 0) holds the source's (2, 1, 4).
        let index = ((1 * 3 + 0) * 4 + 1) * 5 + 0
        #expect(once[index] == Float(1214))
        #expect(transformed(once) { Mirror.apply($0, shape: [2, 3, 4, 5], axes: [0, 2]) } == x.array)
    }

    /// Test-time mirroring follows the trained axes: all 8 flips for three axes, 4 for D and W, none beyond the identity for none.
    @Test func testTimeMirroringUsesTheTrainedAxes() {
        #expect(Mirror.testTimeCombinations(axes: [0, 1, 2]) == Array(0..<8))
        #expect(Mirror.testTimeCombinations(axes: [2, 0]) == [0, 1, 4, 5])
        #expect(Mirror.testTimeCombinations(axes: []) == [0])
    }
}

@Suite struct PatchAugmentationTests {
    let settings = AugmentationSettings(policy: .default)

    /// Parameters are a pure function of (seed, step, example); the frequencies of the transforms
    /// over 6000 examples match nnU-Net's probabilities (3 binomial sds), and "around one" ranges
    /// fall below 1 half the time.
    @Test func drawsAreKeyedAndFollowTheProbabilities() {
        #expect(PatchAugmentation(settings: settings, channels: 2, seed: 3, step: 7, example: 1)
                == PatchAugmentation(settings: settings, channels: 2, seed: 3, step: 7, example: 1))
        #expect(PatchAugmentation(settings: .none, channels: 2, seed: 3, step: 7, example: 1) == .identity(channels: 2))
        let n = 6000
        var rotated = 0, noise = 0, gamma = 0, lowRes = 0, mirrored = [0, 0, 0], darker = 0, brightened = 0
        for i in 0..<n {
            let a = PatchAugmentation(settings: settings, channels: 1, seed: 1, step: i / 2, example: i % 2)
            if let s = a.spatial, s.matrix[0][1] != 0 || s.matrix[1][2] != 0 { rotated += 1 }
            if a.noiseSD != nil { noise += 1; #expect(a.noiseSD! <= 0.1.squareRoot()) }
            if let g = a.gamma[0] { gamma += 1; #expect((0.7...1.5).contains(g)) }
            if a.lowResolution[0] != nil { lowRes += 1 }
            for ax in a.mirrorAxes { mirrored[ax] += 1 }
            if let b = a.brightness[0] { brightened += 1; if b < 1 { darker += 1 } }
        }
        func near(_ count: Int, _ p: Double, _ what: String) {
            let sd = (Double(n) * p * (1 - p)).squareRoot()
            #expect(abs(Double(count) - Double(n) * p) < 3 * sd, "\(what): \(count) of \(n), expected \(Double(n) * p)")
        }
        near(rotated, 0.2, "rotation"); near(noise, 0.1, "noise"); near(gamma, 0.3, "gamma"); near(lowRes, 0.25 * 0.5, "low resolution")
        for ax in 0..<3 { near(mirrored[ax], 0.5, "mirror \(ax)") }
        near(brightened, 0.15, "brightness")
        let half = Double(brightened) / 2
        #expect(abs(Double(darker) - half) < 3 * (half / 2).squareRoot(), "brightness below 1: \(darker) of \(brightened)")
    }

    /// Dummy 2D: with one axis over 3× coarser, rotations turn about it only, up to ±180°.
    @Test func anisotropicSpacingRotatesInPlane() {
        let s = AugmentationSettings(policy: .default, spacing: [5, 1, 1])
        #expect(s.inPlaneAxis == 0 && s.mirrorAxes == [0, 1, 2])
        #expect(AugmentationSettings(policy: .default, spacing: [2, 1, 1]).inPlaneAxis == nil)
        var large = 0
        for i in 0..<2000 {
            guard let t = PatchAugmentation(settings: s, channels: 1, seed: 2, step: i, example: 0).spatial else { continue }
            let m = t.matrix
            let c1: Double = m[1][1] * m[1][1] + m[2][1] * m[2][1]
            let scale = c1.squareRoot()
            let offPlane: Double = abs(m[0][1]) + abs(m[0][2]) + abs(m[1][0]) + abs(m[2][0])
            #expect(offPlane < 1e-12, "turns about D only")
            #expect(abs(m[0][0] - scale) < 1e-9)
            if abs(atan2(m[2][1], m[1][1])) > Double.pi / 2 { large += 1 }
        }
        #expect(large > 0, "some in-plane angles beyond ±90°")
    }

    /// A batch's example k is the same patch whoever computes it: the sampler keyed by the example
    /// index of the global batch gives rank 1 of 2 (examples 2 and 3) exactly the second half.
    @Test func augmentedBatchIsTheSameForAnyWorldSize() {
        let shape = [20, 18, 16]
        let image = tensor([2] + shape) { c, z, y, x in Float(sin(Double(z * 3 + y * 5 + x * 7 + c))) }
        let label = tensor([1] + shape) { _, z, y, _ in z > 6 && z < 14 && y > 5 ? 1 : 0 }
        let a = Affine.identity
        let pc = PreparedCase(id: "c", image: image, label: label,
                              geometry: CaseGeometry(sourceShape: shape, sourceAffine: a, preparedShape: shape, preparedAffine: a))
        let s = PatchSampler(cases: [pc], patchSize: [8, 8, 8], classCount: 2, seed: 9, augmentation: settings)
        for step in 1...12 {
            let draws = s.draws(step: step, caseIndices: [0, 0, 0, 0])
            let all = s.batch(draws), half = s.batch(Array(draws[2...]))
            #expect(Array(all.x.array[(2 * 2 * 512)...]) == half.x.array && Array(all.y.array[(2 * 512)...]) == half.y.array, "step \(step)")
            #expect(s.batch(draws).x.array == all.x.array, "same step, same patches")
            #expect(all.y.array.allSatisfy { $0 == 0 || $0 == 1 }, "labels stay class indices")
        }
        // Without augmentation the sampler cuts plain crops.
        let plain = PatchSampler(cases: [pc], patchSize: [8, 8, 8], classCount: 2, seed: 9)
        let d = plain.draws(step: 1, caseIndices: [0])
        let ref = Tensor(shape: [2, 8, 8, 8])
        PatchSampler.crop(image, start: d[0].start, size: [8, 8, 8], into: ref.data)
        #expect(plain.batch(d).x.array == ref.array)
    }

    /// The polynomial schedule: base at epoch 0, base · 0.5^0.9 half way, decreasing; constant is constant.
    @Test func polynomialLearningRate() {
        let p = LearningRateSchedule.polynomial
        #expect(p.rate(base: 0.01, epoch: 0, epochs: 60) == 0.01)
        #expect(abs(Double(p.rate(base: 0.01, epoch: 30, epochs: 60)) - 0.01 * pow(0.5, 0.9)) < 1e-9)
        #expect(abs(Double(p.rate(base: 0.01, epoch: 59, epochs: 60)) - 0.01 * pow(1.0 / 60, 0.9)) < 1e-9)
        #expect((0..<59).allSatisfy { p.rate(base: 1, epoch: $0 + 1, epochs: 60) < p.rate(base: 1, epoch: $0, epochs: 60) })
        #expect(LearningRateSchedule.constant.rate(base: 0.01, epoch: 30, epochs: 60) == 0.01)
    }
}
