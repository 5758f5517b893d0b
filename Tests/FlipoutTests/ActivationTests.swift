// ReLU and 2x upsampling: backward is the adjoint of forward (<A x, y> = <x, A^T y>), in Double.
import Testing
import Flipout3D
import TestSupport

private func dot(_ a: Tensor, _ b: Tensor) -> Double {
    zip(a.buffer, b.buffer).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
}

@Test func upsampleBackwardIsTheAdjointOfForward() {
    let x = Tensor(shape: [2, 3, 3, 4, 5], values: testValues(360, seed: 1))
    let (up, saved) = Upsample2x.forward(x)
    #expect(up.shape == [2, 3, 6, 8, 10])
    #expect(up.data[((1 * 3 + 2) * 6 + 5) * 80 + 7 * 10 + 9] == x.data[((1 * 3 + 2) * 3 + 2) * 20 + 3 * 5 + 4])
    let y = Tensor(shape: up.shape, values: testValues(up.count, seed: 2))
    let back = Upsample2x.backward(y, saved)
    #expect(abs(dot(up, y) - dot(x, back)) < 1e-9 * max(1, abs(dot(up, y))) + 1e-3)
}

@Test func reluBackwardPassesGradientWherePositive() {
    let x = Tensor(shape: [4, 5], values: testValues(20, seed: 3))
    let (y, saved) = ReLU.forward(x)
    let g = Tensor(shape: x.shape, values: testValues(20, seed: 4))
    let dx = ReLU.backward(g, saved)
    for i in 0..<x.count {
        #expect(y[i] == max(x[i], 0))
        #expect(dx[i] == (x[i] > 0 ? g[i] : 0))
    }
}
