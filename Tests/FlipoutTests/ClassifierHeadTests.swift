// The volume classifier head: gradients against the closed form, and it learns a volume-level label.
import Testing
import Foundation
import Flipout3D
import TestSupport

private func normalHead(estimator: Estimator, classes: Int = 2) throws -> ClassifierHead {
    let normal = try PluginLibrary.load(BuildProducts.plugin("FlipoutNormal")).families[0]
    return try ClassifierHead(name: "head", index: 9, inChannels: 3, classes: classes, estimator: estimator,
                              posterior: try normal.instantiate(), prior: try normal.instantiate(), seed: 4)
}

@Test func classifierHeadGradientsMatchTheClosedForm() throws {
    // reparam: logits[n,o] = b[o] + sum_i W[o,i] m[n,i], m = mean over voxels, W the shared sample.
    let head = try normalHead(estimator: .reparam)
    let x = Tensor(shape: [2, 3, 2, 3, 2], values: testValues(72, seed: 8))
    let (logits, saved) = try head.forward(x, StepContext(seed: 1, step: 1))
    let w = try #require(saved.conv.draw?.sample).array.map(Double.init)   // (2, 3)
    var m = [Double](repeating: 0, count: 6)
    for k in 0..<6 { for j in 0..<12 { m[k] += Double(x.data[k * 12 + j]) / 12 } }
    for n in 0..<2 { for o in 0..<2 {
        let ref = Double(head.conv.bias[o]) + (0..<3).reduce(0.0) { $0 + w[o * 3 + $1] * m[n * 3 + $1] }
        #expect(isClose(Double(logits[n * 2 + o]), ref, rtol: 1e-5, atol: 1e-5))
    } }
    let r = Tensor(shape: [2, 2], values: [1, -2, 0.5, 3])
    let dx = try head.backward(r, saved)
    head.conv.finishBackward()
    for n in 0..<2 { for i in 0..<3 {
        let ref = (0..<2).reduce(0.0) { $0 + Double(r[n * 2 + $1]) * w[$1 * 3 + i] } / 12
        #expect(isClose(Double(dx[(n * 3 + i) * 12 + 5]), ref, rtol: 1e-5, atol: 1e-6))
    } }
    // d/d loc[o,i] = sum_n r[n,o] m[n,i] (the sample is loc + scale * eps).
    for o in 0..<2 { for i in 0..<3 {
        let ref = (0..<2).reduce(0.0) { $0 + Double(r[$1 * 2 + o]) * m[$1 * 3 + i] }
        #expect(isClose(Double(head.conv.weights.gradients[0][o * 3 + i]), ref, rtol: 1e-4, atol: 1e-5))
    } }
}

@Test func classifierHeadLearnsAVolumeLabel() throws {
    // Label: is channel 0 brighter on average than channel 1? Flipout head, BCE on one logit, Adam.
    let head = try normalHead(estimator: .flipout, classes: 1)
    let adam = Adam(parameters: head.conv.trainable, learningRate: 0.05)
    var data = RandomStream(seed: 3, layer: 0, step: 0, purpose: .test)
    func batch(_ n: Int) -> (Tensor, Tensor) {
        let x = Tensor(shape: [n, 3, 4, 4, 4]), y = Tensor(shape: [n, 1])
        data.fillNormal(x.data, count: x.count)
        for b in 0..<n {
            let shift: Float = b % 2 == 0 ? 0.5 : -0.5
            for j in 0..<64 { x.data[b * 192 + j] += shift }
            y[b] = shift > 0 ? 1 : 0
        }
        return (x, y)
    }
    for step in 1...150 {
        let (x, y) = batch(8)
        head.conv.zeroGradients()
        let (logits, saved) = try head.forward(x, StepContext(seed: 2, step: step))
        let grad = Tensor(shape: logits.shape)
        _ = ELBO.bceWithLogits(logits, y, grad: grad)
        _ = try head.backward(grad, saved)
        _ = try head.conv.kl(gradientScale: 1e-4, StepContext(seed: 2, step: step))
        head.conv.finishBackward()
        try adam.update()
        head.conv.weights.refresh()
    }
    let (x, y) = batch(64)
    let logits = try head.forward(x, StepContext(seed: 2, step: 0, mode: .center)).logits
    let correct = (0..<64).filter { (logits[$0] > 0) == (y[$0] == 1) }.count
    #expect(correct >= 58, "accuracy \(correct)/64")
}
