// Uncertainty maps right on every grid: windows blend per sample, MI is 0 without weight uncertainty, and on a resampled (LPS, oblique, anisotropic) case the written maps are consistent.
import Foundation
import Testing
import Flipout3D
import TestSupport

/// K = 3 from channel 0 and the window's mean (so overlapping windows disagree); `noise` scales a
/// per-draw shift of the logits (0 = a model without weight uncertainty).
func contextPredictor(noise: Float) -> WindowPredictor {
    { x, draw in
        let b = x.shape[0], c = x.shape[1], wn = x.count / b / c
        let p = Tensor(shape: [b, 3] + Array(x.shape.suffix(3)))
        let shift = TestNoise.normals(3, seed: UInt64(1000 + draw)).map { $0 * noise }
        for i in 0..<b {
            var mean: Float = 0
            for v in 0..<wn { mean += x.data[i * c * wn + v] }
            mean /= Float(wn)
            for v in 0..<wn {
                let a = x.data[i * c * wn + v], a2 = c > 1 ? x.data[(i * c + 1) * wn + v] : 0
                let l = [2 * a + 3 * mean + shift[0], -2 * a + shift[1], a2 - mean + shift[2]]
                let m = l.max()!, e = l.map { exp($0 - m) }, z = e.reduce(0, +)
                for k in 0..<3 { p.data[(i * 3 + k) * wn + v] = e[k] / z }
            }
        }
        return p
    }
}

private func entropy(_ q: [Double]) -> Double { q.reduce(0) { $0 - ($1 > 0 ? $1 * log($1) : 0) } }

@Suite struct UncertaintyMapsTests {
    /// Must show: a deterministic model's MI is 0 at every voxel at any overlap, although its
    /// overlapping windows disagree (they see different context).
    @Test func deterministicModelHasZeroMutualInformationAtAnyOverlap() throws {
        let x = Tensor(shape: [1, 13, 11, 9], values: TestNoise.normals(13 * 11 * 9, seed: 5))
        var entropies: [[Float]] = []
        for (overlap, mirror) in [(0.0, false), (0.25, false), (0.5, false), (0.75, false), (0.5, true)] {
            let maps = try SlidingWindow.predict(x, classes: 3, draws: 1, options: SlidingWindowOptions(window: [6, 6, 4], overlap: overlap, mirror: mirror),
                                                 predictor: contextPredictor(noise: 0))
            #expect(maps.windows > 8)
            let nonzero = maps.mutualInformation.array.filter { $0 != 0 }.count
            #expect(nonzero == 0, "overlap \(overlap): MI nonzero at \(nonzero) voxels (max \(maps.mutualInformation.array.max()!))")
            // E H[p] = H[E p] exactly.
            #expect(maps.expectedEntropy.array == maps.predictiveEntropy.array)
            entropies.append(maps.predictiveEntropy.array)
        }
        // The windows do disagree: the blend depends on the overlap.
        let gap = zip(entropies[0], entropies[2]).map { abs($0 - $1) }.max()!
        #expect(gap > 1e-2, "windows should disagree here (entropy gap \(gap))")
    }

    /// Must show: a Bayesian network's mean MI does not move with the overlap beyond Monte Carlo
    /// noise (the spread of the mean over seeds at one overlap). Counting each (window, sample)
    /// pair as a sample would add window disagreement, which grows with the overlap.
    @Test func bayesianMeanMutualInformationDoesNotMoveWithOverlap() throws {
        var shape = UNetConfig()
        shape.inputChannels = 1; shape.classCount = 3; shape.width = 4
        var config = ModelConfig()
        config.width = 4
        let unet = try UNet(config, shape: shape, registry: try SmallRun.registry(), seed: 11)
        let x = Tensor(shape: [1, 16, 16, 16], values: TestNoise.normals(4096, seed: 6))
        func meanMI(_ overlap: Double, seed: UInt64) throws -> Double {
            // One window per call, as ModelPredictor runs a Bayesian network: draw t is one weight sample.
            let maps = try SlidingWindow.predict(x, classes: 3, draws: 4, options: SlidingWindowOptions(window: [8, 8, 8], overlap: overlap, batch: 1)) { w, t in
                try unet.probabilities(w, StepContext.prediction(seed: seed, draw: t))
            }
            return maps.mutualInformation.array.reduce(0.0) { $0 + Double($1) } / 4096
        }
        let seeds: [UInt64] = [1, 2, 3, 4]
        let at0 = try seeds.map { try meanMI(0, seed: $0) }, atHalf = try seeds.map { try meanMI(0.5, seed: $0) }
        func meanSD(_ v: [Double]) -> (Double, Double) {
            let m = v.reduce(0, +) / Double(v.count)
            return (m, (v.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(v.count - 1)).squareRoot())
        }
        let (m0, s0) = meanSD(at0), (m5, s5) = meanSD(atHalf)
        let standardError = ((s0 * s0 + s5 * s5) / Double(seeds.count)).squareRoot()
        #expect(m0 > 1e-5, "a Bayesian network should have MI (\(m0))")
        #expect(abs(m0 - m5) <= 4 * standardError, "mean MI \(m0) at overlap 0, \(m5) at 0.5; Monte Carlo standard error \(standardError)")
        print("mean MI: overlap 0 \(m0) ± \(s0), overlap 0.5 \(m5) ± \(s5) (4 seeds x 4 samples)")
    }

    /// A draw is one weight sample for the whole volume: the maps do not depend on how many
    /// windows go into one network call (Flipout draws its signs per batch row).
    @Test func modelPredictorMapsDoNotDependOnTheWindowBatch() throws {
        let (m, u, t, _) = SmallRun.configs(epochs: 1)
        let model = try UNet(m, shape: u, registry: try SmallRun.registry(), seed: t.seed)
        let predictor = ModelPredictor(unet: model, samples: 3, seed: 7)
        let x = Tensor(shape: [2, 16, 12, 20], values: TestNoise.normals(2 * 16 * 12 * 20, seed: 2))
        let maps = try [1, 3].map { batch in
            try SlidingWindow.predict(x, classes: 3, draws: predictor.draws, options: SlidingWindowOptions(window: [8, 8, 8], overlap: 0.5, batch: batch),
                                      predictor: predictor.callAsFunction)
        }
        #expect(maps[0].probabilities.array == maps[1].probabilities.array)
        #expect(maps[0].mutualInformation.array == maps[1].mutualInformation.array)
        #expect(maps[0].mutualInformation.array.contains { $0 > 1e-5 })
    }

    /// An LPS, oblique, permuted, anisotropic (1.1 x 1.3 x 2.5 mm) two-channel case through the
    /// dataset plan (RAS, 1.5 mm): the written maps are on the source grid and consistent there.
    static func lpsCase(_ dir: URL) throws -> (input: CaseInput, plan: PreprocessingPlan, truth: [Int32], shape: [Int]) {
        let (nz, ny, nx) = (9, 14, 16)
        let t = 0.35 // rotation about z
        // Columns: i -> -x·1.1 (Left), j -> z·1.3 (permuted), k -> -y·2.5 (Posterior); then rotated.
        let cols: [[Double]] = [[-1.1, 0, 0], [0, 0, 1.3], [0, -2.5, 0]]
        let r: [[Double]] = [[cos(t), -sin(t), 0], [sin(t), cos(t), 0], [0, 0, 1]]
        var m = [[Double]](repeating: [0, 0, 0, 0], count: 3)
        for row in 0..<3 { for c in 0..<3 { m[row][c] = (0..<3).reduce(0) { $0 + r[row][$1] * cols[c][$1] } } }
        m[0][3] = 12; m[1][3] = -7; m[2][3] = 3
        var h = NIfTIHeader(shape: [nz, ny, nx])
        h.srowX = m[0].map(Float.init); h.srowY = m[1].map(Float.init); h.srowZ = m[2].map(Float.init)
        h.sformCode = 1
        h.setQformFromSform()
        let a = Tensor(shape: [nz, ny, nx]), b = Tensor(shape: [nz, ny, nx])
        var truth = [Int32](repeating: 0, count: nz * ny * nx)
        let noise = TestNoise.normals(2 * nz * ny * nx, seed: 8)
        for k in 0..<nz { for j in 0..<ny { for i in 0..<nx {
            let v = (k * ny + j) * nx + i
            let w = (0..<3).map { row in m[row][0] * Double(i) + m[row][1] * Double(j) + m[row][2] * Double(k) + m[row][3] }
            let d = ((w[0] - 5) * (w[0] - 5) + (w[1] + 10) * (w[1] + 10) + (w[2] - 9) * (w[2] - 9)).squareRoot()
            a.data[v] = Float(1.5 - d / 6) + 0.3 * noise[v]
            b.data[v] = Float(w[2] / 10) + 0.3 * noise[nz * ny * nx + v]
            truth[v] = d < 7 ? 1 : (w[2] > 12 ? 2 : 0)
        } } }
        let c0 = dir.appendingPathComponent("lps_0000.nii.gz").path, c1 = dir.appendingPathComponent("lps_0001.nii.gz").path
        try NIfTI.write(a, header: h, to: c0)
        try NIfTI.write(b, header: h, to: c1)
        let plan = PreprocessingPlan(spacing: [1.5, 1.5, 1.5], channelNames: ["a", "b"],
                                     channels: [.zScore(mean: 0, std: 1), .zScore(mean: 0, std: 1)],
                                     labels: ["background": 0, "one": 1, "two": 2], classCount: 3)
        return (CaseInput(id: "lps", channels: [c0, c1]), plan, truth, [nz, ny, nx])
    }

    /// Must show: on a resampled case, entropy = H(written probabilities) and MI = entropy − expected
    /// entropy within 1e-5 at every voxel, MI ≥ 0; AUROC by the written entropy equals the one by
    /// H(written probabilities). A deterministic model has MI exactly 0 there too.
    @Test func resampledCaseMapsAreConsistentOnTheSourceGrid() throws {
        let dir = try Fixtures.temporaryDirectory("maps-lps")
        let c = try Self.lpsCase(dir)
        var settings = PredictionSettings(window: SlidingWindowOptions(window: [8, 8, 8], overlap: 0.5), classNames: ["background", "one", "two"])
        settings.preprocessing = .plan(c.plan)
        for (name, draws, noise) in [("bayes", 6, Float(0.8)), ("det", 1, Float(0))] {
            let out = dir.appendingPathComponent(name).path
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let report = try CasePredictor.run(c.input, channels: 2, classes: 3, draws: draws, settings: settings, folder: out,
                                               predictor: contextPredictor(noise: noise))
            #expect(report.shape == c.shape && report.draws == draws)
            let p = try NIfTI.read4D(out + "/lps_probabilities.nii.gz").data, h = try NIfTI.read(out + "/lps_entropy.nii.gz").data
            let mi = try NIfTI.read(out + "/lps_mi.nii.gz").data, eh = try NIfTI.read(out + "/lps_expected_entropy.nii.gz").data
            let n = c.shape.reduce(1, *)
            #expect(p.shape == [3] + c.shape && h.shape == c.shape)
            var worstH = 0.0, worstMI = 0.0, minMI = Float.infinity, maxMI: Float = 0, inside = 0
            for v in 0..<n {
                let q = (0..<3).map { Double(p.data[$0 * n + v]) }
                if q.reduce(0, +) > 0.5 { inside += 1 }
                worstH = max(worstH, abs(entropy(q) - Double(h.data[v])))
                worstMI = max(worstMI, abs(Double(mi.data[v]) - (Double(h.data[v]) - Double(eh.data[v]))))
                minMI = min(minMI, mi.data[v]); maxMI = max(maxMI, mi.data[v])
            }
            #expect(inside > n * 9 / 10, "most source voxels lie inside the prepared field of view (\(inside) of \(n))")
            #expect(worstH <= 1e-5, "\(name): entropy map vs H(probabilities): \(worstH)")
            #expect(worstMI <= 1e-5, "\(name): MI vs entropy - expected entropy: \(worstMI)")
            #expect(minMI >= 0)
            if draws == 1 {
                #expect(maxMI == 0, "deterministic model on a resampled case: MI up to \(maxMI)")
            } else {
                #expect(maxMI > 1e-3, "the Bayesian stand-in should have MI (\(maxMI))")
                // AUROC of errors by the written entropy = by H(written probabilities).
                let labels = try NIfTI.read(out + "/lps.nii.gz").data.array.map { Int32($0) }
                let spacing = CasePredictor.voxelSpacing(try NIfTI.readHeader(out + "/lps.nii.gz"))
                let withMap = CaseEvaluation.score(CasePrediction(id: "lps", shape: c.shape, spacing: spacing, truth: c.truth, prediction: labels,
                                                                  probabilities: p, entropy: h, mutualInformation: mi), classes: 3)
                let fromP = CaseEvaluation.score(CasePrediction(id: "lps", shape: c.shape, spacing: spacing, truth: c.truth, prediction: labels,
                                                                probabilities: p), classes: 3)
                let a = try #require(withMap.aurocEntropy), b = try #require(fromP.aurocEntropy)
                #expect(withMap.errorVoxels > 20)
                #expect(abs(a - b) < 1e-3, "AUROC by the written entropy \(a), by H(written p) \(b)")
                print("LPS case: AUROC(entropy map) \(a), AUROC(H(probabilities)) \(b), max |H - H(p)| \(worstH), MI in [\(minMI), \(maxMI)]")
            }
        }
    }

    /// Channels on the same shape but another affine: the message names the affines, not two equal shapes.
    @Test func affineOnlyChannelMismatchNamesTheAffines() throws {
        let dir = try Fixtures.temporaryDirectory("maps-affine")
        let a = dir.appendingPathComponent("c_0000.nii.gz").path, b = dir.appendingPathComponent("c_0001.nii.gz").path
        try NIfTI.write(Tensor(shape: [8, 8, 8]), header: NIfTIHeader(shape: [8, 8, 8], spacing: [1, 1, 1]), to: a)
        try NIfTI.write(Tensor(shape: [8, 8, 8]), header: NIfTIHeader(shape: [8, 8, 8], spacing: [1, 1, 1], origin: [0, 2, 0]), to: b)
        let settings = PredictionSettings(window: SlidingWindowOptions(window: [8, 8, 8]), classNames: ["a", "b", "c"])
        #expect {
            _ = try CasePredictor.predictMaps(CaseInput(id: "c", channels: [a, b]), channels: 2, classes: 3, draws: 1, settings: settings,
                                              predictor: contextPredictor(noise: 0))
        } throws: { e in
            let m = "\(e)"
            return m.contains("same shape [8, 8, 8] as c_0000.nii.gz") && m.contains("[1 0 0 0; 0 1 0 2; 0 0 1 0] differs from [1 0 0 0; 0 1 0 0; 0 0 1 0]")
        }
    }
}
