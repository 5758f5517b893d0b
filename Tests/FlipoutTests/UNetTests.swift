// U-Net: shapes, parameter gradients by central differences (deterministic and Flipout, with and without instance norm), Bayesian-layer selection, MOPED.
import Foundation
import Testing
import TestSupport
import Flipout3D

private func smallUNet(levels: Int = 2, norm: UNetConfig.Normalization = .instance, bayesian: BayesianLayers = .none, seed: UInt64 = 3) throws -> UNet {
    var m = ModelConfig()
    m.bayesian = bayesian != .none
    var u = UNetConfig()
    u.levels = levels; u.width = 2; u.inputChannels = 2; u.classCount = 3; u.normalization = norm; u.bayesianLayers = bayesian
    return try UNet(m, shape: u, registry: try SmallRun.registry(), seed: seed)
}

/// L = Σ r · logits for a fixed random r: a scalar whose gradient is backward(r).
private func objective(_ net: UNet, _ x: Tensor, _ r: [Float], _ ctx: StepContext) throws -> Double {
    let z = try net.forward(x, ctx).logits
    var s = 0.0
    for i in 0..<z.count { s += Double(z.data[i]) * Double(r[i]) }
    return s
}

@Test(arguments: [(UNetConfig.Normalization.instance, BayesianLayers.none), (.none, .none), (.instance, .all), (.none, .last(2))])
func unetParameterGradientsMatchCentralDifferences(_ norm: UNetConfig.Normalization, _ bayesian: BayesianLayers) throws {
    let net = try smallUNet(norm: norm, bayesian: bayesian)
    let x = Tensor(shape: [2, 2, 4, 4, 6], values: testValues(2 * 2 * 96, seed: 11))
    let ctx = StepContext(seed: 5, step: 1)
    let (z, saved) = try net.forward(x, ctx)
    #expect(z.shape == [2, 3, 4, 4, 6])
    let r = testValues(z.count, seed: 12)
    net.zeroGradients()
    try net.backward(Tensor(shape: z.shape, values: r), saved)
    net.finishBackward()
    // Central differences of single parameters, 6 per parameter tensor (first, last and 4 spread
    // between), in every layer. The network is Float and has ReLU kinks, so an element whose
    // difference straddles a kink can miss; the gradient must match on at least 90% of them
    // (a wrong term in backward, e.g. a dropped skip gradient, breaks far more).
    var checked = 0, failed: [String] = []
    for p in net.trainable {
        let n = p.value.count
        for i in Set([0, n - 1, n / 5, 2 * n / 5, 3 * n / 5, 4 * n / 5]) {
            let original = p.value.data[i], h: Float = 1e-3
            p.value.data[i] = original + h; net.parametersChanged()
            let plus = try objective(net, x, r, ctx)
            p.value.data[i] = original - h; net.parametersChanged()
            let minus = try objective(net, x, r, ctx)
            p.value.data[i] = original; net.parametersChanged()
            let numeric = (plus - minus) / (2 * Double(h)), analytic = Double(p.gradient.data[i])
            checked += 1
            if abs(numeric - analytic) > 5e-2 * abs(numeric) + 2e-2 { failed.append("\(p.name)[\(i)]: \(analytic) vs \(numeric)") }
        }
    }
    #expect(Double(failed.count) <= 0.1 * Double(checked), "\(norm) \(bayesian): \(failed.count) of \(checked) gradients differ: \(failed.prefix(8))")
}

@Test func unetLevelsChannelsAndBayesianSelection() throws {
    let net = try smallUNet(levels: 3, bayesian: .encoder)
    #expect(net.layers.map(\.name) == ["enc0a", "enc0b", "enc1a", "enc1b", "enc2a", "enc2b", "up1", "dec1", "up0", "dec0", "head"])
    #expect(net.layers.map { $0 is FlipoutConv3D } == [true, true, true, true, true, true, false, false, false, false, false])
    #expect(net.layers[2].stride == [2, 2, 2] && net.layers[0].stride == [1, 1, 1] && net.layers[10].kernel == [1, 1, 1])
    #expect(net.layers.map(\.outChannels) == [2, 2, 4, 4, 8, 8, 4, 4, 2, 2, 3])
    let last = try smallUNet(levels: 3, bayesian: .last(3))
    #expect(last.flipoutLayers.map(\.name) == ["up0", "dec0", "head"])
    #expect(try smallUNet(levels: 3, bayesian: .decoder).flipoutLayers.map(\.name) == ["up1", "dec1", "up0", "dec0", "head"])
    #expect(BayesianLayers("last:2") == .last(2) && BayesianLayers("last:0") == nil && BayesianLayers("some") == nil)
    #expect(throws: LayerError.self) { try net.checkInput([1, 2, 8, 8, 6]) } // 6 is not a multiple of 4
}

@Test func mopedStartsAtTheDeterministicWeightsWithScalesDeltaTimesMean() throws {
    let det = try smallUNet(bayesian: .none, seed: 1)
    for p in det.trainable { p.value.data.update(from: testValues(p.value.count, seed: 7), count: p.value.count) }
    let bnn = try smallUNet(bayesian: .all, seed: 2)
    try MOPED.initialize(bnn, from: det, delta: 0.1)
    let x = Tensor(shape: [1, 2, 4, 4, 4], values: testValues(128, seed: 3))
    let a = try det.forward(x, StepContext(seed: 1, step: 1)).logits
    let b = try bnn.forward(x, StepContext(seed: 1, step: 1, mode: .center)).logits
    assertClose(b.array, a.array, rtol: 1e-5, atol: 1e-5, "MOPED centre = deterministic network")
    let layer = bnn.flipoutLayers[1], w = (det.layers[1] as! DeterministicConv3D).weight
    let slots = layer.weights.posterior.slots
    let scale = slots.firstIndex { $0.parameter.role == .scale }!
    for i in 0..<w.count {
        let s = slots[scale].parameter.transform.forward(layer.weights.parameters[scale].data[i])
        #expect(abs(s - max(0.1 * abs(w.data[i]), MOPED.minimumScale)) <= 1e-5 * max(s, 1e-3))
    }
    #expect(throws: LayerError.self) { try MOPED.initialize(bnn, from: try smallUNet(levels: 3, bayesian: .none), delta: 0.1) }
    #expect(throws: LayerError.self) { try MOPED.initialize(bnn, from: bnn, delta: 0.1) }
}
