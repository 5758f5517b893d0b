// Dice-CE loss: value against a Double re-statement of the textbook formula, gradient by Double central differences, binary K = 2, perfect predictions.
import Foundation
import Testing
import TestSupport
import Flipout3D

/// CE + 1 − mean_{k ≥ 1} (2 Σ p g + s) / (Σ p + Σ g + s), in Double, from the definition (batch sums).
private func referenceDiceCE(_ z: [Double], labels: [Int], n: Int, k: Int, v: Int) -> Double {
    var ce = 0.0
    var inter = [Double](repeating: 0, count: k), sp = inter, sg = inter
    for b in 0..<n { for i in 0..<v {
        let logits = (0..<k).map { z[(b * k + $0) * v + i] }
        let m = logits.max()!
        let lse = m + log(logits.map { exp($0 - m) }.reduce(0, +))
        let y = labels[b * v + i]
        ce -= logits[y] - lse
        for c in 0..<k {
            let p = exp(logits[c] - lse)
            sp[c] += p
            if c == y { inter[c] += p; sg[c] += 1 }
        }
    } }
    let s = 1e-5
    let dice = (1..<k).map { (2 * inter[$0] + s) / (sp[$0] + sg[$0] + s) }
    return ce / Double(n * v) + 1 - dice.reduce(0, +) / Double(k - 1)
}

@Test(arguments: [(2, 2, 5), (2, 3, 4), (1, 4, 3)])
func diceCEValueAndGradientMatchTheDefinition(_ n: Int, _ k: Int, _ edge: Int) {
    let v = edge * edge * 2
    let shape = [n, k, 2, edge, edge]
    let z = testValues(n * k * v, seed: UInt64(31 + k)).map { $0 * 3 }
    var labels = [Int]()
    var state: UInt64 = 7
    for _ in 0..<(n * v) { state = state &* 6364136223846793005 &+ 1; labels.append(Int(state >> 33) % k) }
    let logits = Tensor(shape: shape, values: z)
    let y = Tensor(shape: [n, 1, 2, edge, edge], values: labels.map(Float.init))
    let saved = DiceCELoss.forward(logits: logits, labels: y)
    let zd = z.map(Double.init)
    let reference = referenceDiceCE(zd, labels: labels, n: n, k: k, v: v)
    #expect(abs(saved.value - reference) < 1e-5, "loss \(saved.value) vs reference \(reference)")
    let grad = DiceCELoss.backward(saved, scale: 2).array
    let numeric = (0..<zd.count).map { j -> Float in
        let h = 1e-6
        var plus = zd, minus = zd
        plus[j] += h; minus[j] -= h
        return Float(2 * (referenceDiceCE(plus, labels: labels, n: n, k: k, v: v) - referenceDiceCE(minus, labels: labels, n: n, k: k, v: v)) / (2 * h))
    }
    assertClose(grad, numeric, rtol: 1e-3, atol: 2e-6, "Dice-CE gradient, N \(n) K \(k)")
}

@Test func diceCEOfConfidentCorrectLogitsIsNearZeroAndBinaryIsKTwo() {
    let labels: [Float] = [0, 1, 1, 0, 1, 0, 0, 1]
    let logits = Tensor(shape: [1, 2, 2, 2, 2], values: labels.map { $0 == 0 ? 20 : -20 } + labels.map { $0 == 1 ? 20 : -20 })
    let s = DiceCELoss.forward(logits: logits, labels: Tensor(shape: [1, 1, 2, 2, 2], values: labels))
    #expect(s.crossEntropy < 1e-7 && s.diceLoss < 1e-6 && s.softDice.allSatisfy { abs($0 - 1) < 1e-6 })
    // Wrong everywhere: Dice of class 1 near 0, cross-entropy near 40 nats.
    let wrong = Tensor(shape: [1, 2, 2, 2, 2], values: Array(logits.array[8...]) + Array(logits.array[..<8]))
    let w = DiceCELoss.forward(logits: wrong, labels: Tensor(shape: [1, 1, 2, 2, 2], values: labels))
    #expect(abs(w.crossEntropy - 40) < 1e-3 && w.softDice[1] < 1e-5 && abs(w.diceLoss - 1) < 1e-5)
}

/// The data-parallel convention: two halves of a batch whose statistics are summed before the loss give
/// the whole batch's loss, and R = 2 times each half's gradient, averaged over the halves, is the whole's.
@Test func reducedHalvesGiveTheWholeBatchsLossAndGradient() throws {
    let (n, k, v) = (4, 3, 2 * 4 * 4)
    let z = testValues(n * k * v, seed: 77).map { $0 * 2 }
    var state: UInt64 = 11
    let labels = (0..<(n * v)).map { _ -> Float in state = state &* 6364136223846793005 &+ 1; return Float(Int(state >> 33) % k) }
    let whole = DiceCELoss.forward(logits: Tensor(shape: [n, k, 2, 4, 4], values: z), labels: Tensor(shape: [n, 1, 2, 4, 4], values: labels))
    func half(_ h: Int) -> (Tensor, Tensor) {
        (Tensor(shape: [2, k, 2, 4, 4], values: Array(z[(h * 2 * k * v)..<((h + 1) * 2 * k * v)])),
         Tensor(shape: [2, 1, 2, 4, 4], values: Array(labels[(h * 2 * v)..<((h + 1) * 2 * v)])))
    }
    let (x0, y0) = half(0), (x1, y1) = half(1)
    var local1: [Double] = []
    _ = DiceCELoss.forward(logits: x1, labels: y1, reduce: { local1 = $0; return $0 })
    var local0: [Double] = []
    let a = DiceCELoss.forward(logits: x0, labels: y0, reduce: { s in local0 = s; return zip(s, local1).map(+) })
    let b = DiceCELoss.forward(logits: x1, labels: y1, reduce: { zip($0, local0).map(+) })
    #expect(abs(a.value - whole.value) < 1e-12 && abs(b.value - whole.value) < 1e-12, "\(a.value) \(b.value) vs \(whole.value)")
    let unreduced = DiceCELoss.forward(logits: x0, labels: y0)
    #expect(abs(unreduced.diceLoss - whole.diceLoss) > 1e-4, "one half alone has another Dice: the check can fail")
    let g = DiceCELoss.backward(whole).array
    let ga = DiceCELoss.backward(a, scale: 2).array.map { $0 / 2 }, gb = DiceCELoss.backward(b, scale: 2).array.map { $0 / 2 }
    assertClose(ga + gb, g, rtol: 1e-5, atol: 1e-8, "the halves' gradients are the whole batch's rows")
}

/// Patches larger than one chunk of work (DiceCELoss.chunkVoxels = 16 Ki voxels): the per-chunk
/// sums, added in chunk order, give the definition's value, and the gradient matches central
/// differences at voxels in every chunk of both examples.
@Test func diceCEOverSeveralChunksMatchesTheDefinition() {
    let (n, k, v) = (2, 3, 2 * 128 * 160)   // 40 960 voxels: 3 chunks per example, the last partial
    let z = testValues(n * k * v, seed: 77).map { $0 * 3 }
    var labels = [Int]()
    var state: UInt64 = 11
    for _ in 0..<(n * v) { state = state &* 6364136223846793005 &+ 1; labels.append(Int(state >> 33) % k) }
    let saved = DiceCELoss.forward(logits: Tensor(shape: [n, k, 2, 128, 160], values: z),
                                   labels: Tensor(shape: [n, 1, 2, 128, 160], values: labels.map(Float.init)))
    let zd = z.map(Double.init)
    let reference = referenceDiceCE(zd, labels: labels, n: n, k: k, v: v)
    #expect(abs(saved.value - reference) < 1e-5, "loss \(saved.value) vs reference \(reference)")
    let grad = DiceCELoss.backward(saved).array
    for b in 0..<n { for c in 0..<k { for i in [5, 16_384 + 7, 40_959] {
        let j = (b * k + c) * v + i, h = 1e-4
        var plus = zd, minus = zd
        plus[j] += h; minus[j] -= h
        let numeric = (referenceDiceCE(plus, labels: labels, n: n, k: k, v: v) - referenceDiceCE(minus, labels: labels, n: n, k: k, v: v)) / (2 * h)
        #expect(abs(Double(grad[j]) - numeric) <= 1e-3 * abs(numeric) + 1e-8, "gradient at example \(b), class \(c), voxel \(i): \(grad[j]) vs \(numeric)")
    } } }
}
