// Posterior initialisation (shared mixture locations, matched Laplace scale, jittered Beta means),
// the region-of-interest ECE, and the gradient-variance benchmark's 1/N law on copies.
import Testing
import Foundation
import Flipout3D
import TestSupport

private func family(_ target: String) throws -> DistributionFamily {
    try PluginLibrary.load(BuildProducts.plugin(target)).families[0]
}

private func std(_ v: [Double]) -> Double {
    let m = v.reduce(0, +) / Double(v.count)
    return (v.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(v.count - 1)).squareRoot()
}

@Suite struct InitializationTests {
    /// A 4 -> 8 layer (fan-in 108): He std sqrt(2/108) = 0.136. Both components share that draw and
    /// differ only by the plugin's N(0, 0.01^2) offsets, so loc[0] - loc[1] has std 0.01 sqrt 2.
    @Test func mixtureComponentsShareOneHeDrawPlusSmallOffsets() throws {
        let mixture = try family("FlipoutGaussianMixture"), normal = try family("FlipoutNormal")
        let layer = try FlipoutConv3D(name: "m", index: 1, inChannels: 4, outChannels: 8, estimator: .perExample,
                                      posterior: try mixture.instantiate(["components": 2]), prior: try normal.instantiate(), seed: 3)
        let names = layer.weights.posterior.slots.map(\.name)
        let l0 = layer.weights.parameters[names.firstIndex(of: "loc[0]")!].array.map(Double.init)
        let l1 = layer.weights.parameters[names.firstIndex(of: "loc[1]")!].array.map(Double.init)
        let he = (2.0 / 108).squareRoot(), n = Double(l0.count)
        #expect(abs(std(l0) / he - 1) < 4 / (2 * n).squareRoot(), "loc[0] std \(std(l0)) vs He \(he)")
        let d = zip(l0, l1).map { $0 - $1 }
        #expect(abs(std(d) / (0.01 * 2.0.squareRoot()) - 1) < 4 / (2 * n).squareRoot(), "component gap std \(std(d))")
    }

    /// The Laplace posterior starts with the Normal posterior's weight-noise standard deviation: b sqrt 2 = sigma.
    @Test func laplacePosteriorStartsWithNormalsStandardDeviation() throws {
        let laplace = try family("FlipoutLaplace"), normal = try family("FlipoutNormal")
        let b = laplace.parameters.first { $0.name == "scale" }!.defaultValue
        let sigma = normal.parameters.first { $0.name == "scale" }!.defaultValue
        #expect(abs(Double(b) * 2.0.squareRoot() - Double(sigma)) < 1e-6)
    }

    /// Beta's alpha and beta live in log space (Adam's steps are relative, so beta = 20 moves), and
    /// log alpha is jittered, so the posterior means of a filter bank start spread, not identical.
    @Test func betaMeansStartSpreadAndParametersAreLogScale() throws {
        let beta = try family("FlipoutBeta"), gamma = try family("FlipoutGamma")
        #expect(beta.parameters.allSatisfy { $0.transform == .exp })
        let layer = try FlipoutConv3D(name: "b", index: 0, inChannels: 1, outChannels: 8, estimator: .perExample,
                                      posterior: try beta.instantiate(), prior: try gamma.instantiate(), seed: 2)
        let c = Tensor(shape: layer.kernelShape)
        try layer.weights.center(into: c.data)
        let logMeans = c.array.map { log(Double($0)) }
        // log mean = log a - log(a + b) with log a ~ N(log 2, 0.4^2): spread about 0.4 * 20/22.
        #expect(std(logMeans) > 0.3 && std(logMeans) < 0.45, "std of log means \(std(logMeans))")
    }
}

@Suite struct RegionOfInterestTests {
    @Test func regionIsTheDilatedUnionOfLabelAndPrediction() {
        // One row of 12: label at 2, prediction (p >= 0.5) at 9; radius 1 -> {1, 2, 3} and {8, 9, 10}.
        var p = [Float](repeating: 0.1, count: 12), y = [Float](repeating: 0, count: 12)
        y[2] = 1; p[9] = 0.7
        let mask = Metrics.regionOfInterest(probabilities: Tensor(shape: [1, 1, 1, 1, 12], values: p),
                                            labels: Tensor(shape: [1, 1, 1, 1, 12], values: y), radius: 1)
        #expect(mask.indices.filter { mask[$0] } == [1, 2, 3, 8, 9, 10])
        // One voxel in the middle of 7^3 with radius 2: a 5^3 cube; the second volume stays empty.
        var q = [Float](repeating: 0, count: 2 * 343)
        q[3 * 49 + 3 * 7 + 3] = 0.9
        let cube = Metrics.regionOfInterest(probabilities: Tensor(shape: [2, 1, 7, 7, 7], values: q),
                                            labels: Tensor(shape: [2, 1, 7, 7, 7]), radius: 2)
        #expect(cube[0..<343].filter { $0 }.count == 125 && cube[343...].allSatisfy { !$0 })
        #expect(cube[1 * 49 + 5 * 7 + 1] && !cube[0 * 49 + 3 * 7 + 3])
    }

    @Test func roiECEIsTheECEOfTheRegionsVoxels() {
        // Row of 10: label at 4, p = 0.8 there and 0.3 at its neighbours; far voxels p = 0.01.
        var p = [Float](repeating: 0.01, count: 10), y = [Float](repeating: 0, count: 10)
        y[4] = 1; p[4] = 0.8; p[3] = 0.3; p[5] = 0.3
        let roi = Metrics.roiECE(probabilities: Tensor(shape: [1, 1, 1, 1, 10], values: p),
                                 labels: Tensor(shape: [1, 1, 1, 1, 10], values: y), radius: 1)
        let ref = Metrics.ece(probabilities: Tensor(shape: [3], values: [0.3, 0.8, 0.3]), labels: Tensor(shape: [3], values: [0, 1, 0]))
        #expect(abs(roi - ref) < 1e-12 && ref > 0)
        #expect(Metrics.roiECE(probabilities: Tensor(shape: [1, 1, 2, 2, 2]), labels: Tensor(shape: [1, 1, 2, 2, 2])) == 0)
    }
}

@Suite struct GradientVarianceTests {
    /// On N copies of one patch, per-example samples average N independent gradients: Var ratio to
    /// reparam (one shared sample) is 1/N in expectation. Deterministic (fixed seeds); 48 draws.
    @Test func perExampleVarianceFallsLikeOneOverNOnCopies() throws {
        var m = ModelConfig()
        m.width = 2
        var u = UNetConfig(); u.levels = 1; u.width = 2; u.inputChannels = 2; u.classCount = 3
        let registry = try SmallRun.registry()
        let net = try UNet(m, shape: u, registry: registry, seed: 5)
        let sampler = PatchSampler(cases: SyntheticCases(seed: 1, count: 1).prepared(), patchSize: [8, 8, 8], classCount: 3, seed: 5)
        let rows = try GradientVariance.measure(trained: net, sampler: sampler, seed: 5, registry: registry,
                                                estimators: [.reparam, .perExample], batches: [1, 4], draws: 48, kind: .copies)
        #expect(rows.count == 2 * 2 * 3 * 2) // estimators x batches x layers x (loc, scale)
        for r in rows where r.estimator == Estimator.perExample.rawValue {
            let ratio = try #require(GradientVariance.ratio(rows, r))
            if r.batch == 1 { #expect(ratio > 0.6 && ratio < 1.6, "\(r.layer) \(r.parameter) N=1: \(ratio)") }
            if r.batch == 4 { #expect(ratio > 0.12 && ratio < 0.45, "\(r.layer) \(r.parameter) N=4: \(ratio)") }
        }
    }
}
