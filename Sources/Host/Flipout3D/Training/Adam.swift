// Adam (Kingma & Ba 2015): one flat loop over contiguous parameters, state checkpointable.

public final class Adam {
    public var learningRate: Float
    public let beta1: Float = 0.9
    public let beta2: Float = 0.999
    public let epsilon: Float = 1e-8
    /// Steps taken so far (bias correction uses it).
    public var step: Int = 0
    /// First and second moments, one tensor per parameter, in the order of `parameters`.
    public let m: [Tensor]
    public let v: [Tensor]
    public let parameters: [NamedParameter]

    public init(parameters: [NamedParameter], learningRate: Float = 1e-3) {
        self.parameters = parameters
        self.learningRate = learningRate
        m = parameters.map { Tensor(shape: $0.value.shape) }
        v = parameters.map { Tensor(shape: $0.value.shape) }
    }

    /// One update from the accumulated gradients. Throws (updating nothing) if a gradient is not finite.
    public func update() throws {
        for p in parameters {
            for i in 0..<p.gradient.count where !p.gradient.data[i].isFinite {
                throw LayerError.nonFinite("gradient of \(p.name) is \(p.gradient.data[i]) at index \(i); nothing was updated. Lower the learning rate, or check the prior/posterior parameters (a scale near 0?).")
            }
        }
        step += 1
        let c1 = 1 - pow(Double(beta1), Double(step)), c2 = 1 - pow(Double(beta2), Double(step))
        let lr = learningRate * Float(c2.squareRoot() / c1)
        for (k, p) in parameters.enumerated() {
            let w = p.value.data, g = p.gradient.data, mk = m[k].data, vk = v[k].data
            for i in 0..<p.value.count {
                mk[i] = beta1 * mk[i] + (1 - beta1) * g[i]
                vk[i] = beta2 * vk[i] + (1 - beta2) * g[i] * g[i]
                w[i] -= lr * mk[i] / (vk[i].squareRoot() + epsilon)
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
