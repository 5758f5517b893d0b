// dataset.json regions and the ignore label at the loss: sigmoid region loss against a Double restatement and central differences; ignored voxels add nothing and get no gradient.
import Foundation
import Testing
import TestSupport
import Flipout3D

/// BCE + 1 − mean_r Dice_r in Double, from the definition, over non-ignored voxels.
private func referenceRegionLoss(_ z: [Double], labels: [Int], regions: [[Int]], n: Int, v: Int, ignore: Int?) -> Double {
    let r = regions.count
    var bce = 0.0, m = 0
    var inter = [Double](repeating: 0, count: r), sum = inter
    for b in 0..<n { for i in 0..<v {
        let y = labels[b * v + i]
        if y == ignore { continue }
        m += 1
        for c in 0..<r {
            let p = 1 / (1 + exp(-z[(b * r + c) * v + i])), t: Double = regions[c].contains(y) ? 1 : 0
            bce -= t * log(p) + (1 - t) * log(1 - p)
            inter[c] += p * t; sum[c] += p + t
        }
    } }
    let dice = (0..<r).map { (2 * inter[$0] + 1e-5) / (sum[$0] + 1e-5) }
    return bce / Double(m * r) + 1 - dice.reduce(0, +) / Double(r)
}

@Suite struct RegionAndIgnoreLossTests {
    /// BraTS-like nested regions {1,2,3} ⊃ {2,3} ⊃ {3}, label 4 ignored: value and gradient by
    /// central differences in Double.
    @Test(arguments: [false, true])
    func regionLossMatchesTheDefinition(_ withIgnore: Bool) {
        let (n, edge) = (2, 3), v = edge * edge * 2, regions = [[1, 2, 3], [2, 3], [3]]
        let z = testValues(n * 3 * v, seed: 17).map { $0 * 3 }
        let labels = (0..<(n * v)).map { ($0 * 7 + $0 / 5) % (withIgnore ? 5 : 4) }
        let ignore = withIgnore ? 4 : nil
        let saved = RegionLoss.forward(logits: Tensor(shape: [n, 3, 2, edge, edge], values: z),
                                       labels: Tensor(shape: [n, 1, 2, edge, edge], values: labels.map(Float.init)), regions: regions, ignoreLabel: ignore)
        let zd = z.map(Double.init)
        let reference = referenceRegionLoss(zd, labels: labels, regions: regions, n: n, v: v, ignore: ignore)
        #expect(abs(saved.value - reference) < 1e-5, "loss \(saved.value) vs \(reference)")
        let grad = RegionLoss.backward(saved, scale: 1.5).array
        let numeric = (0..<zd.count).map { j -> Float in
            var plus = zd, minus = zd
            plus[j] += 1e-6; minus[j] -= 1e-6
            let fp = referenceRegionLoss(plus, labels: labels, regions: regions, n: n, v: v, ignore: ignore)
            let fm = referenceRegionLoss(minus, labels: labels, regions: regions, n: n, v: v, ignore: ignore)
            return Float(1.5 * (fp - fm) / 2e-6)
        }
        assertClose(grad, numeric, rtol: 1e-3, atol: 2e-6, "region loss gradient, ignore \(withIgnore)")
    }

    /// Ignored voxels: changing their logits changes neither loss nor any gradient, their own
    /// gradient is exactly 0, and the loss equals the loss over the other voxels alone.
    @Test func ignoredVoxelsLeaveTheDiceCELossAlone() {
        let (k, v) = (3, 24)
        let labels: [Float] = (0..<v).map { Float($0 % 4 == 3 ? 3 : $0 % 3) }   // 3 = ignore, K = 3
        let z = testValues(k * v, seed: 5).map { $0 * 2 }
        var other = z
        for i in 0..<v where labels[i] == 3 { for c in 0..<k { other[c * v + i] = 40 * Float(c + 1) } }
        let y = Tensor(shape: [1, 1, 2, 3, 4], values: labels)
        let a = DiceCELoss.forward(logits: Tensor(shape: [1, k, 2, 3, 4], values: z), labels: y, ignoreLabel: 3)
        let b = DiceCELoss.forward(logits: Tensor(shape: [1, k, 2, 3, 4], values: other), labels: y, ignoreLabel: 3)
        #expect(a.value == b.value && a.value.isFinite)
        let ga = DiceCELoss.backward(a).array, gb = DiceCELoss.backward(b).array
        #expect(ga == gb)
        for i in 0..<v where labels[i] == 3 { for c in 0..<k { #expect(ga[c * v + i] == 0) } }
        // The same as the loss of the kept voxels alone (M = 18, not 24).
        let kept = (0..<v).filter { labels[$0] != 3 }
        let zk = (0..<k).flatMap { c in kept.map { z[c * v + $0] } }
        let alone = DiceCELoss.forward(logits: Tensor(shape: [1, k, 1, 1, kept.count], values: zk),
                                       labels: Tensor(shape: [1, 1, 1, 1, kept.count], values: kept.map { labels[$0] }))
        #expect(abs(alone.value - a.value) < 1e-6, "\(alone.value) vs \(a.value)")
        let gk = DiceCELoss.backward(alone).array
        for (j, i) in kept.enumerated() { for c in 0..<k { #expect(abs(gk[c * kept.count + j] - ga[c * v + i]) < 1e-7) } }
        // Region loss likewise: ignored logits do not matter.
        let ra = RegionLoss.forward(logits: Tensor(shape: [1, k, 2, 3, 4], values: z), labels: y, regions: [[1, 2], [2], [1]], ignoreLabel: 3)
        let rb = RegionLoss.forward(logits: Tensor(shape: [1, k, 2, 3, 4], values: other), labels: y, regions: [[1, 2], [2], [1]], ignoreLabel: 3)
        #expect(ra.value == rb.value && RegionLoss.backward(ra).array == RegionLoss.backward(rb).array)
    }
}
