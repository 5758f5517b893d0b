// Tensor storage: alignment, shape checks, copies.
import Testing
import Flipout3D

@Test func tensorIsAlignedAndZeroed() {
    let t = Tensor(shape: [2, 3, 4, 5, 6])
    #expect(t.count == 720)
    #expect(Int(bitPattern: t.data) % 64 == 0)
    #expect(t.array.allSatisfy { $0 == 0 })
}

@Test func tensorCopyIsIndependent() {
    let t = Tensor(shape: [3], values: [1, 2, 3])
    let c = t.copy()
    c[0] = 9
    #expect(t[0] == 1 && c[0] == 9)
    #expect(t.reshaped([1, 3]).shape == [1, 3])
}

@Test func uninitialisedTensorsAreAlignedAndRecycledStorageIsZeroedWhenAsked() {
    // Large enough to go through the storage recycler.
    let shape = [4, 16, 32, 32, 32]
    var first: Tensor? = Tensor(uninitializedShape: shape)
    #expect(first!.count == 4 * 16 * 32 * 32 * 32)
    #expect(Int(bitPattern: first!.data) % 64 == 0)
    first!.fill(7)
    first = nil
    let zeroed = Tensor(shape: shape)   // may reuse the storage just freed: must still be zeros
    #expect(Int(bitPattern: zeroed.data) % 64 == 0)
    #expect(zeroed.buffer.allSatisfy { $0 == 0 })
    let copy = Tensor(shape: [3], values: [1, 2, 3]).copy()
    #expect(copy.array == [1, 2, 3])
}

/// An optimizer and its arena are freed when their user lets go (no tensor -> arena -> tensor
/// cycle), and the parameters keep their values after it (they hold the storage block, not the arena).
@Test func parameterArenaAndOptimizerAreFreedAndParametersOutliveThem() throws {
    let norm = InstanceNorm(name: "n", channels: 3)
    weak var arena: ParameterArena?
    weak var optimizer: Adam?
    do {
        let adam = Adam(parameters: norm.trainable, learningRate: 0.1)
        norm.scaleGradient.fill(0.5); norm.shiftGradient.fill(-0.5)
        try adam.update()
        arena = adam.arena
        optimizer = adam
        #expect(arena != nil && optimizer != nil)
    }
    #expect(optimizer == nil, "Adam was not freed: something it owns holds it")
    #expect(arena == nil, "ParameterArena was not freed: its tensors hold it (a retain cycle)")
    // Adam's first step moves every value by lr against the gradient's sign; the values live on.
    func rounded(_ t: Tensor) -> [Float] { t.array.map { ($0 * 1000).rounded() / 1000 } }
    #expect(rounded(norm.scale) == [0.9, 0.9, 0.9] && rounded(norm.shift) == [0.1, 0.1, 0.1])
    // A second optimizer over the same parameters takes them over with their values.
    let again = Adam(parameters: norm.trainable, learningRate: 0.1)
    #expect(rounded(norm.scale) == [0.9, 0.9, 0.9] && again.arena.count >= 6)
}
