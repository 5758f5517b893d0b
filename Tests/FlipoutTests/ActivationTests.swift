// ReLU: backward passes the gradient where x was positive.
import Testing
import Flipout3D
import TestSupport

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
