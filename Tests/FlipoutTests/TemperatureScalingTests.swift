// Temperature scaling: the tempered sample is softmax(z / T) (sigmoid(z / T) per region), the fit recovers a known temperature, MI stays 0 without weight uncertainty, and calibrate -> predict -> evaluate reports NLL and ECE before and after (class and region checkpoints).
import Foundation
import Testing
import Flipout3D
import TestSupport

@Suite(.serialized) struct TemperatureScalingTests {
    @Test func temperedProbabilitiesAreTheSoftmaxOfScaledLogits() {
        let k = 3, n = 50
        let z = TestNoise.normals(k * n, seed: 3).map { Double($0) * 4 }
        let p = Tensor(shape: [k, n, 1, 1])
        for v in 0..<n {
            let e = (0..<k).map { exp(z[$0 * n + v]) }, s = e.reduce(0, +)
            for c in 0..<k { p.data[c * n + v] = Float(e[c] / s) }
        }
        TemperatureScaling.apply(p, temperature: 2.5)
        var worst = 0.0
        for v in 0..<n {
            let e = (0..<k).map { exp(z[$0 * n + v] / 2.5) }, s = e.reduce(0, +)
            for c in 0..<k { worst = max(worst, abs(Double(p.data[c * n + v]) - e[c] / s)) }
        }
        #expect(worst < 1e-6, "tempered vs softmax(z / T): \(worst)")
    }

    /// Labels drawn from softmax(z / 2) while the model says softmax(z): the fit finds T ≈ 2 and lowers the NLL.
    @Test func fitRecoversTheTemperatureOfOverconfidentSamples() {
        let k = 3, n = 20_000
        let z = TestNoise.normals(k * n, seed: 5).map { Double($0) * 3 }, u = TestNoise.uniforms(n, seed: 6)
        var s = TemperatureScaling.Samples(classes: k, draws: 1)
        for v in 0..<n {
            let logits = (0..<k).map { z[v * k + $0] }
            let e = logits.map { exp($0) }, sum = e.reduce(0, +)
            s.probabilities += e.map { Float($0 / sum) }
            let q = logits.map { exp($0 / 2) }, qs = q.reduce(0, +)
            var acc = 0.0, y = k - 1
            for c in 0..<k { acc += q[c] / qs; if Double(u[v]) < acc { y = c; break } }
            s.truth.append(Int32(y))
        }
        let t = TemperatureScaling.fit(s)
        #expect(abs(t - 2) < 0.15, "fitted temperature \(t)")
        #expect(s.nll(temperature: t) < s.nll(temperature: 1) - 0.01)
        #expect(s.ece(temperature: t) < s.ece(temperature: 1))
    }

    @Test func temperedSigmoidsAreTheSigmoidOfScaledLogits() {
        let k = 3, n = 40
        let z = TestNoise.normals(k * n, seed: 4).map { Double($0) * 5 }
        let p = Tensor(shape: [k, n, 1, 1], values: z.map { Float(1 / (1 + exp(-$0))) })
        TemperatureScaling.apply(p, temperature: 0.6, sigmoidOutputs: true)
        var worst = 0.0
        for i in 0..<(k * n) { worst = max(worst, abs(Double(p.data[i]) - 1 / (1 + exp(-z[i] / 0.6)))) }
        #expect(worst < 2e-6, "tempered vs sigmoid(z / T): \(worst)")
        // Outputs are tempered one by one: they need not sum to 1.
        #expect(abs((0..<k).reduce(0.0) { $0 + Double(p.data[$1 * n]) } - 1) > 1e-3)
    }

    /// Region memberships drawn from sigmoid(z / 2) while the model says sigmoid(z), two regions:
    /// the fit finds T ≈ 2; the NLL is the regions' summed binary NLL (checked at one voxel).
    @Test func fitRecoversTheTemperatureOfOverconfidentSigmoids() {
        let k = 2, n = 15_000
        let z = TestNoise.normals(k * n, seed: 7).map { Double($0) * 3 }, u = TestNoise.uniforms(k * n, seed: 8)
        var s = TemperatureScaling.Samples(classes: k, draws: 1, sigmoidOutputs: true)
        for v in 0..<n {
            var bits: Int32 = 0
            for r in 0..<k {
                s.probabilities.append(Float(1 / (1 + exp(-z[v * k + r]))))
                if Double(u[v * k + r]) < 1 / (1 + exp(-z[v * k + r] / 2)) { bits |= 1 << r }
            }
            s.truth.append(bits)
        }
        let t = TemperatureScaling.fit(s)
        #expect(abs(t - 2) < 0.15, "fitted temperature \(t)")
        #expect(s.nll(temperature: t) < s.nll(temperature: 1) - 0.01)
        #expect(s.ece(temperature: t) < s.ece(temperature: 1))
        var one = TemperatureScaling.Samples(classes: 2, draws: 2, sigmoidOutputs: true)
        one.probabilities = [0.9, 0.3, 0.7, 0.1]   // [t0: r0, r1], [t1: r0, r1]
        one.truth = [0b01]                          // in region 0, not in region 1
        let expected = -log((0.9 + 0.7) / 2) - log(1 - (0.3 + 0.1) / 2)
        #expect(abs(one.nll(temperature: 1) - expected) < 1e-6, "\(one.nll(temperature: 1)) vs \(expected)")
    }

    /// Tempering every sample keeps a deterministic model's MI at 0 and keeps the untempered mean beside it.
    @Test func temperingEachSampleKeepsMutualInformationEpistemic() throws {
        let x = Tensor(shape: [1, 13, 11, 9], values: TestNoise.normals(13 * 11 * 9, seed: 5))
        var o = SlidingWindowOptions(window: [6, 6, 4], overlap: 0.5)
        let plain = try SlidingWindow.predict(x, classes: 3, draws: 1, options: o, predictor: contextPredictor(noise: 0))
        o.temperatures = [1.7]
        let tempered = try SlidingWindow.predict(x, classes: 3, draws: 1, options: o, predictor: contextPredictor(noise: 0))
        #expect(tempered.mutualInformation.array.allSatisfy { $0 == 0 })
        #expect(try #require(tempered.untemperedProbabilities).array == plain.probabilities.array)
        #expect(tempered.predictiveEntropy.array.reduce(0, +) > plain.predictiveEntropy.array.reduce(0, +), "T > 1 softens")
    }

    /// Through the binary: train a fold, calibrate it, predict with the temperature, evaluate before and after.
    @Test func calibratePredictEvaluate() throws {
        let dir = try Fixtures.temporaryDirectory("calibrate")
        let data = dir.appendingPathComponent("data").path, run = dir.appendingPathComponent("run").path
        let export = try FlipoutCLI.run(["datasets", "export-synthetic", data, "--cases", "4", "--test-cases", "2"])
        #expect(export.status == 0, "\(export.stderr)")
        let train = try FlipoutCLI.run(["train", "--data", data, "--run", run, "--epochs", "2", "--steps-per-epoch", "4", "--patch", "16,16,16",
                                        "--width", "4", "--levels", "2", "--samples", "2", "--fold", "0", "--folds", "2", "--quiet"])
        #expect(train.status == 0, "\(train.stderr)")
        let ckpt = run + "/checkpoint.safetensors", calibrated = dir.appendingPathComponent("calibrated.safetensors").path
        let bad = try FlipoutCLI.run(["calibrate", "--checkpoint", ckpt, "--data", data, "--fold", "5"])
        #expect(bad.status == 64 && bad.stderr.contains("has folds 0..<2"), "\(bad.stderr)")
        let cal = try FlipoutCLI.run(["calibrate", "--checkpoint", ckpt, "--data", data, "--fold", "0", "--samples", "2", "--output", calibrated])
        #expect(cal.status == 0, "\(cal.stderr)")
        #expect(cal.stdout.contains("temperature") && cal.stdout.contains("NLL") && cal.stdout.contains("ECE"), "\(cal.stdout)")
        let t = try #require(try TemperatureScaling.stored(in: calibrated))
        #expect(try TemperatureScaling.stored(in: ckpt) == nil, "--output leaves the original checkpoint alone")
        let preds = dir.appendingPathComponent("preds").path
        let p = try FlipoutCLI.run(["predict", "--checkpoint", calibrated, "--input", data, "--output", preds, "--samples", "2"])
        #expect(p.status == 0 && p.stderr.contains("temperature scaling"), "\(p.stderr)")
        let written = try FileManager.default.contentsOfDirectory(atPath: preds)
        #expect(written.filter { $0.hasSuffix("_probabilities_untempered.nii.gz") }.count == 2, "\(written)")
        let e = try FlipoutCLI.run(["evaluate", "--predictions", preds, "--labels", data + "/labelsTs"])
        #expect(e.status == 0, "\(e.stderr)")
        #expect(e.stdout.contains("temperature scaling: NLL"), "\(e.stdout)")
        print("calibrate: T = \(t)\n\(cal.stdout)\(e.stdout.split(separator: "\n").filter { $0.contains("temperature scaling") }.joined())")
    }

    /// A region-based fold (BraTS-like nested regions with an ignore label) calibrates, and predict
    /// tempers its sigmoids: the tempered probabilities are sigmoid(logit(untempered) / T) for a
    /// deterministic network (one sample, so tempering commutes with the mean), up to the
    /// resampling to the case's own grid (tempering happens on the network's grid).
    @Test func calibrateARegionCheckpoint() throws {
        let dir = try Fixtures.temporaryDirectory("calibrate-regions")
        let data = dir.appendingPathComponent("brats").path, run = dir.appendingPathComponent("run").path
        let export = try FlipoutCLI.run(["datasets", "export-synthetic", data, "--cases", "4", "--test-cases", "1", "--regions", "--ignore"])
        #expect(export.status == 0, "\(export.stderr)")
        let train = try FlipoutCLI.run(["train", "--data", data, "--run", run, "--epochs", "2", "--steps-per-epoch", "4", "--patch", "16,16,16",
                                        "--width", "4", "--levels", "2", "--deterministic", "--fold", "0", "--folds", "2", "--quiet"])
        #expect(train.status == 0, "\(train.stderr)")
        let ckpt = run + "/checkpoint.safetensors", calibrated = dir.appendingPathComponent("calibrated.safetensors").path
        let cal = try FlipoutCLI.run(["calibrate", "--checkpoint", ckpt, "--data", data, "--fold", "0", "--output", calibrated])
        #expect(cal.status == 0, "\(cal.stderr)")
        #expect(cal.stdout.contains("3 regions, one sigmoid each"), "\(cal.stdout)")
        let t = try #require(try TemperatureScaling.stored(in: calibrated))
        #expect(t != 1)
        let preds = dir.appendingPathComponent("preds").path
        let p = try FlipoutCLI.run(["predict", "--checkpoint", calibrated, "--input", data + "/imagesTs", "--output", preds, "--no-tta"])
        #expect(p.status == 0 && p.stderr.contains("temperature scaling"), "\(p.stderr)")
        let tempered = try NIfTI.read4D(preds + "/synth_004_probabilities.nii.gz").data.array
        let raw = try NIfTI.read4D(preds + "/synth_004_probabilities_untempered.nii.gz").data.array
        #expect(tempered.count == raw.count && tempered.count % 3 == 0)
        var off = 0.0, moved = 0.0
        for i in raw.indices {
            let q = min(max(Double(raw[i]), 1e-7), 1 - 1e-7), z = log(q / (1 - q)) / t
            off += abs(Double(tempered[i]) - 1 / (1 + exp(-z))); moved += abs(Double(tempered[i]) - Double(raw[i]))
        }
        #expect(off < 0.1 * moved, "tempered sigmoid vs sigmoid(logit(p) / T): mean gap \(off / Double(raw.count)), tempering moved \(moved / Double(raw.count))")
        let e = try FlipoutCLI.run(["evaluate", "--predictions", preds, "--labels", data + "/labelsTs"])
        #expect(e.status == 0 && e.stdout.contains("region-based"), "\(e.stderr)")
    }
}
