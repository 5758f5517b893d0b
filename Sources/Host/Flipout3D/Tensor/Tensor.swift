// Tensor: a Float32, contiguous, 64-byte aligned n-dimensional array (NCDHW for volumes).

/// A dense Float32 tensor with value semantics on its shape and reference semantics on its
/// storage (like a class-held buffer): copying a `Tensor` shares storage; use `copy()` to clone.
/// Storage is 64-byte aligned so oneDNN and SIMD loops can use it directly.
public final class Tensor: @unchecked Sendable {
    public let shape: [Int]
    public let count: Int
    public let data: UnsafeMutablePointer<Float>

    /// A zero-filled tensor of the given shape.
    public init(shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "Tensor: negative dimension in \(shape)")
        self.shape = shape
        self.count = shape.reduce(1, *)
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 4, alignment: 64)
        data = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        data.initialize(repeating: 0, count: max(count, 1))
    }

    /// A tensor holding `values`; traps if `values.count` does not match `shape`.
    public convenience init(shape: [Int], values: [Float]) {
        self.init(shape: shape)
        precondition(values.count == count, "Tensor: \(values.count) values for shape \(shape) (\(count) elements)")
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: count) }
    }

    deinit { data.deinitialize(count: max(count, 1)); UnsafeMutableRawPointer(data).deallocate() }

    public var rank: Int { shape.count }
    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: data, count: count) }
    public var array: [Float] { Array(buffer) }

    public subscript(i: Int) -> Float {
        get { precondition(i >= 0 && i < count, "Tensor index \(i) out of range 0..<\(count)"); return data[i] }
        set { precondition(i >= 0 && i < count, "Tensor index \(i) out of range 0..<\(count)"); data[i] = newValue }
    }

    /// A new tensor with the same values.
    public func copy() -> Tensor {
        let t = Tensor(shape: shape)
        t.data.update(from: data, count: count)
        return t
    }

    /// A copy of the values under another shape with the same element count.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        let t = Tensor(shape: newShape)
        precondition(t.count == count, "Tensor.reshaped: \(shape) has \(count) elements, \(newShape) has \(t.count)")
        t.data.update(from: data, count: count)
        return t
    }

    public func fill(_ value: Float) { data.update(repeating: value, count: count) }
    public func zero() { fill(0) }

    /// Traps unless the shape equals `expected` (programmer error: shapes are checked at layer edges).
    public func checkShape(_ expected: [Int], _ what: @autoclosure () -> String) {
        precondition(shape == expected, "\(what()): shape \(shape), expected \(expected)")
    }
}
