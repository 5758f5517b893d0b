// Temperature scaling: the tempered sample is softmax(z / T), the fit recovers a known temperature, MI stays 0 without weight uncertainty, and calibrate -> predict -> evaluate reports NLL and ECE before and after.
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
}
