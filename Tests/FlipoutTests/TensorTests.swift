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
