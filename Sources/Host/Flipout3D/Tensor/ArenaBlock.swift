// ArenaBlock: a zeroed block of floats shared by the tensors that view it (parameters, gradients, optimizer state).

/// A zeroed, 64-byte aligned block of floats with the lifetime of this object. Tensors that view
/// it (`Tensor(viewing:offset:shape:)`, `Tensor.moveStorage`) hold it, so it lives as long as the
/// last of them; it never enters the tensor storage pool.
public final class ArenaBlock {
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int

    init(count: Int) {
        precondition(count >= 1, "ArenaBlock: count \(count)")
        self.count = count
        pointer = UnsafeMutableRawPointer.allocate(byteCount: count * 4, alignment: 64).bindMemory(to: Float.self, capacity: count)
        pointer.initialize(repeating: 0, count: count)
    }

    deinit { UnsafeMutableRawPointer(pointer).deallocate() }
}
