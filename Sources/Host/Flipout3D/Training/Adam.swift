// Adam (Kingma & Ba 2015): one flat loop over the parameter arena, state checkpointable.

public final class Adam {
    public var learningRate: Float
    public let beta1: Float = 0.9
    public let beta2: Float = 0.999
    public let epsilon: Float = 1e-8
    /// Steps taken so far (bias correction uses it).
    public var step: Int = 0
    /// Parameters and gradients in two contiguous blocks (the all-reduce works on `arena.gradients`).
    public let arena: ParameterArena
    /// First and second moments, one view per parameter (in the order of `parameters`) into two
    /// blocks of the arena's layout.
    public let m: [Tensor]
    public let v: [Tensor]
    public var parameters: [NamedParameter] { arena.parameters }
    /// A multiplier of the learning rate per parameter (in `parameters` order); nil: 1 for every one.
    /// Set from a policy (e.g. `PositiveWeightPolicy`), never from saved state, so a resumed run
    /// rebuilds it from its configuration.
    public var learningRateScales: [Float]? {
        didSet { precondition(learningRateScales.map { $0.count == arena.parameters.count && $0.allSatisfy { $0 > 0 && $0.isFinite } } ?? true,
                              "Adam: \(learningRateScales?.count ?? 0) learning-rate scales for \(arena.parameters.count) parameters, each > 0") }
    }
    private let mBlock: UnsafeMutablePointer<Float>, vBlock: UnsafeMutablePointer<Float>
    private let owners: [ArenaBlock]

    /// Moves `parameters` into a `ParameterArena` (their tensors keep their values).
    public init(parameters: [NamedParameter], learningRate: Float = 1e-3) {
        self.learningRate = learningRate
        arena = ParameterArena(parameters)
        let ms = arena.makeState(), vs = arena.makeState()
        (mBlock, m) = (ms.block, ms.views)
        (vBlock, v) = (vs.block, vs.views)
        owners = [ms.owner, vs.owner]
    }

    /// One update from the accumulated gradients. Throws (updating nothing) if a gradient is not finite.
    public func update() throws {
        try StepProfile.measure(.optimizer) { try applyUpdate() }
    }

    private func applyUpdate() throws {
        let n = arena.count, g = arena.gradients
        if let i = Self.firstNonFinite(g, n) {
            let at = arena.locate(i)
            throw LayerError.nonFinite("gradient of \(at.name) is \(g[i]) at index \(at.index); nothing was updated. Lower the learning rate, or check the prior/posterior parameters (a scale near 0?).")
        }
        step += 1
        let c1 = 1 - pow(Double(beta1), Double(step)), c2 = 1 - pow(Double(beta2), Double(step))
        let lr = learningRate * Float(c2.squareRoot() / c1)
        guard let scales = learningRateScales else { return move(0..<n, lr: lr) }
        for (k, p) in arena.parameters.enumerated() {
            move(arena.offsets[k]..<(arena.offsets[k] + p.value.count), lr: lr * scales[k])
        }
    }

    /// The first index of g[0..<n] that is not finite, or nil (ranges checked over the threads).
    static func firstNonFinite(_ g: UnsafeMutablePointer<Float>, _ n: Int) -> Int? {
        let parts = 64
        var bad = [Bool](repeating: false, count: parts)
        bad.withUnsafeMutableBufferPointer { flags in
            let f = flags.baseAddress!
            Parallel.items(parts, elementsPerItem: (n + parts - 1) / parts) { begin, end in
                for p in begin..<end {
                    var ok = true
                    for i in (n * p / parts)..<(n * (p + 1) / parts) { ok = ok && g[i].isFinite }
                    f[p] = !ok
                }
            }
        }
        guard let p = bad.firstIndex(of: true) else { return nil }
        return ((n * p / parts)..<(n * (p + 1) / parts)).first { !g[$0].isFinite }
    }

    /// The Adam step of the arena's floats `range` at (bias-corrected) rate `lr`: elementwise,
    /// split over the kernels' threads (the same bits for every thread count).
    private func move(_ range: Range<Int>, lr: Float) {
        let w = arena.values + range.lowerBound, g = arena.gradients + range.lowerBound
        let mk = mBlock + range.lowerBound, vk = vBlock + range.lowerBound
        let (b1, b2, eps) = (beta1, beta2, epsilon)
        Parallel.ranges(range.count) { begin, end in
            for i in begin..<end {
                let gi = g[i]
                let m = b1 * mk[i] + (1 - b1) * gi
                let v = b2 * vk[i] + (1 - b2) * gi * gi
                mk[i] = m; vk[i] = v
                w[i] -= lr * m / (v.squareRoot() + eps)
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
