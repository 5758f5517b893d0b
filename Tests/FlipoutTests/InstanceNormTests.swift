// Instance norm: per-(example, channel) statistics, and every gradient (x, scale, shift) by Double central differences.
import Foundation
import Testing
import TestSupport
import Flipout3D

/// Σ w · (γ (x − μ)/sqrt(σ² + ε) + β) in Double, from the definition.
private func referenceObjective(_ x: [Double], gamma: [Double], beta: [Double], weights: [Double], n: Int, c: Int, v: Int) -> Double {
    var total = 0.0
    for e in 0..<n { for ch in 0..<c {
        let xs = (0..<v).map { x[(e * c + ch) * v + $0] }
        let mean = xs.reduce(0, +) / Double(v)
        let variance = xs.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(v)
        for i in 0..<v { total += weights[(e * c + ch) * v + i] * (gamma[ch] * (xs[i] - mean) / (variance + 1e-5).squareRoot() + beta[ch]) }
    } }
    return total
}

@Test func instanceNormNormalisesEachExampleAndChannel() {
    let norm = InstanceNorm(name: "n", channels: 3)
    let x = Tensor(shape: [2, 3, 2, 3, 4], values: testValues(144, seed: 4).enumerated().map { $0.element * Float(1 + $0.offset % 5) + 7 })
    let y = norm.forward(x).y
    for nc in 0..<6 {
        let s = Array(y.array[(nc * 24)..<((nc + 1) * 24)]).map(Double.init)
        let mean = s.reduce(0, +) / 24, variance = s.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / 24
        #expect(abs(mean) < 1e-5 && abs(variance - 1) < 1e-3, "slice \(nc): mean \(mean) variance \(variance)")
    }
}

@Test func instanceNormGradientsMatchFiniteDifferences() {
    let (n, c, v) = (2, 2, 12)
    let norm = InstanceNorm(name: "n", channels: c)
    norm.scale.data[0] = 1.5; norm.scale.data[1] = -0.7; norm.shift.data[0] = 0.3
    let x = testValues(n * c * v, seed: 9).map { $0 * 2 }, w = testValues(n * c * v, seed: 10)
    let (_, saved) = norm.forward(Tensor(shape: [n, c, 2, 2, 3], values: x))
    norm.zeroGradients()
    let dx = norm.backward(Tensor(shape: [n, c, 2, 2, 3], values: w), saved)
    let xd = x.map(Double.init), wd = w.map(Double.init), g = norm.scale.array.map(Double.init), b = norm.shift.array.map(Double.init)
    func f(_ x: [Double], _ g: [Double], _ b: [Double]) -> Double { referenceObjective(x, gamma: g, beta: b, weights: wd, n: n, c: c, v: v) }
    let h = 1e-6
    func bump(_ a: [Double], _ j: Int, _ d: Double) -> [Double] { var a = a; a[j] += d; return a }
    let numericX = (0..<xd.count).map { Float((f(bump(xd, $0, h), g, b) - f(bump(xd, $0, -h), g, b)) / (2 * h)) }
    let numericG = (0..<c).map { Float((f(xd, bump(g, $0, h), b) - f(xd, bump(g, $0, -h), b)) / (2 * h)) }
    let numericB = (0..<c).map { Float((f(xd, g, bump(b, $0, h)) - f(xd, g, bump(b, $0, -h))) / (2 * h)) }
    assertClose(dx.array, numericX, rtol: 1e-3, atol: 1e-4, "instance norm dx")
    assertClose(norm.scaleGradient.array, numericG, rtol: 1e-3, atol: 1e-4, "instance norm dscale")
    assertClose(norm.shiftGradient.array, numericB, rtol: 1e-3, atol: 1e-4, "instance norm dshift")
}

@Test func channelConcatIsItsOwnAdjoint() {
    let a = Tensor(shape: [2, 1, 1, 2, 2], values: testValues(8, seed: 1)), b = Tensor(shape: [2, 3, 1, 2, 2], values: testValues(24, seed: 2))
    let (y, saved) = ChannelConcat.forward(a, b)
    #expect(y.shape == [2, 4, 1, 2, 2])
    #expect(Array(y.array[0..<4]) == Array(a.array[0..<4]) && Array(y.array[4..<16]) == Array(b.array[0..<12]))
    #expect(Array(y.array[16..<20]) == Array(a.array[4..<8]))
    let (da, db) = ChannelConcat.backward(y, saved)
    #expect(da.array == a.array && db.array == b.array)
}

/// Σ w · max(γ (x − μ)/sqrt(σ² + ε) + β, 0) in Double, from the definition.
private func referenceNormReLUObjective(_ x: [Double], gamma: [Double], beta: [Double], weights: [Double], n: Int, c: Int, v: Int) -> Double {
    var total = 0.0
    for e in 0..<n { for ch in 0..<c {
        let xs = (0..<v).map { x[(e * c + ch) * v + $0] }
        let mean = xs.reduce(0, +) / Double(v)
        let variance = xs.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(v)
        for i in 0..<v { total += weights[(e * c + ch) * v + i] * max(0, gamma[ch] * (xs[i] - mean) / (variance + 1e-5).squareRoot() + beta[ch]) }
    } }
    return total
}

/// The fused norm · ReLU (what the U-Net runs) on planes longer than one SIMD block, with a tail:
/// forward equals ReLU of the norm, and every gradient matches Double central differences.
@Test func fusedInstanceNormReLUGradientsMatchFiniteDifferences() {
    let (n, c, shape) = (2, 2, [3, 5, 7]), v = 105
    let norm = InstanceNorm(name: "n", channels: c)
    norm.scale.data[0] = 1.5; norm.scale.data[1] = -0.7; norm.shift.data[0] = 0.3; norm.shift.data[1] = -0.2
    let x = testValues(n * c * v, seed: 19).map { $0 * 2 + 1 }, w = testValues(n * c * v, seed: 20)
    let plain = norm.forward(Tensor(shape: [n, c] + shape, values: x)).y.array.map { max($0, 0) }
    let input = Tensor(shape: [n, c] + shape, values: x)
    let (y, saved) = norm.forward(input, relu: true, consuming: true)
    #expect(y.array == plain, "fused forward differs from ReLU(norm(x))")
    // Written over its input (a recomputed skip), the output has the same bits.
    let over = Tensor(shape: [n, c] + shape, values: x)
    #expect(norm.forwardInPlace(over, relu: true) === over && over.array.map(\.bitPattern) == y.array.map(\.bitPattern))
    norm.zeroGradients()
    let dx = norm.backward(Tensor(shape: [n, c] + shape, values: w), saved, consuming: true)
    let xd = x.map(Double.init), wd = w.map(Double.init), g = norm.scale.array.map(Double.init), b = norm.shift.array.map(Double.init)
    func f(_ x: [Double], _ g: [Double], _ b: [Double]) -> Double { referenceNormReLUObjective(x, gamma: g, beta: b, weights: wd, n: n, c: c, v: v) }
    let h = 1e-6
    func bump(_ a: [Double], _ j: Int, _ d: Double) -> [Double] { var a = a; a[j] += d; return a }
    let numericX = (0..<xd.count).map { Float((f(bump(xd, $0, h), g, b) - f(bump(xd, $0, -h), g, b)) / (2 * h)) }
    let numericG = (0..<c).map { Float((f(xd, bump(g, $0, h), b) - f(xd, bump(g, $0, -h), b)) / (2 * h)) }
    let numericB = (0..<c).map { Float((f(xd, g, bump(b, $0, h)) - f(xd, g, bump(b, $0, -h))) / (2 * h)) }
    assertClose(dx.array, numericX, rtol: 1e-3, atol: 1e-4, "fused norm-ReLU dx")
    assertClose(norm.scaleGradient.array, numericG, rtol: 1e-3, atol: 1e-4, "fused norm-ReLU dscale")
    assertClose(norm.shiftGradient.array, numericB, rtol: 1e-3, atol: 1e-4, "fused norm-ReLU dshift")
}

/// A plane of a quarter million voxels (threaded, many SIMD blocks): the statistics stay accurate
/// for a large offset, where a single Float running sum would drift.
@Test func instanceNormStatisticsHoldOnLargePlanes() {
    let v = 64 * 64 * 64
    let norm = InstanceNorm(name: "n", channels: 1)
    let x = Tensor(shape: [1, 1, 64, 64, 64], values: testValues(v, seed: 3).map { 1000 + $0 })
    let y = norm.forward(x).y.array.map(Double.init)
    let mean = y.reduce(0, +) / Double(v), variance = y.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(v)
    #expect(abs(mean) < 1e-3 && abs(variance - 1) < 1e-2, "mean \(mean) variance \(variance)")
}
