// Tensor: a Float32, contiguous, 64-byte aligned n-dimensional array (NCDHW for volumes), and its storage recycler.
import Foundation

/// A dense Float32 tensor with value semantics on its shape and reference semantics on its
/// storage (like a class-held buffer): copying a `Tensor` shares storage; use `copy()` to clone.
/// Storage is 64-byte aligned so oneDNN and SIMD loops can use it directly.
///
/// Ownership, which the types enforce: a tensor either owns its storage (from `TensorStorage`,
/// returned to its pool only by the tensor's `deinit` or `moveStorage`) or shares an `ArenaBlock`
/// (a `ParameterArena`'s parameters and optimizer state; never pooled, freed with its last
/// tensor). Only this module makes views, and only into an `ArenaBlock` they retain; so no live
/// tensor ever points to a pooled block. A pointer taken from `data` is valid while the tensor is
/// alive, which Swift guarantees only up to the tensor's last use: hold pointers inside
/// `withUnsafeValues` / `withUnsafeMutableValues` (or `withExtendedLifetime`). TensorTests keeps
/// the count of raw `data` bindings in Sources from growing.
public final class Tensor: @unchecked Sendable {
    public let shape: [Int]
    public let count: Int
    /// Fixed for the tensor's life, except that `ParameterArena` moves parameters into its block
    /// once, before training (layers must not keep this pointer across calls).
    /// (A `var` read in a loop costs the same as a `let`: measured 2.5 ms for 4 Mi elements either way.)
    public private(set) var data: UnsafeMutablePointer<Float>
    /// Set when the storage is a shared `ArenaBlock`: then not released here.
    private var arenaBlock: ArenaBlock?
    /// Set for a view into another tensor's storage (`example(_:)`): then not released here.
    private var parent: Tensor?

    /// A zero-filled tensor of the given shape.
    public convenience init(shape: [Int]) {
        self.init(uninitializedShape: shape)
        data.update(repeating: 0, count: max(count, 1))
    }

    /// A tensor whose values are unspecified (whatever the storage held): for outputs that are
    /// overwritten entirely before they are read (convolution outputs, copies). Skips the
    /// zero-filling pass, which for activation-sized tensors costs as much as a memory copy.
    public init(uninitializedShape shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "Tensor: negative dimension in \(shape)")
        self.shape = shape
        self.count = shape.reduce(1, *)
        data = TensorStorage.allocate(max(count, 1))
    }

    /// A tensor holding `values`; traps if `values.count` does not match `shape`.
    public convenience init(shape: [Int], values: [Float]) {
        self.init(uninitializedShape: shape)
        precondition(values.count == count, "Tensor: \(values.count) values for shape \(shape) (\(count) elements)")
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: count) }
    }

    /// A view of `block` from float `offset` (the tensor keeps the block alive).
    init(viewing block: ArenaBlock, offset: Int, shape: [Int]) {
        self.shape = shape
        self.count = shape.reduce(1, *)
        precondition(offset >= 0 && offset + count <= block.count, "Tensor view \(shape) at \(offset) outside a block of \(block.count)")
        data = block.pointer + offset
        arenaBlock = block
    }

    /// Example `i` (index on the outermost axis) of this tensor, shaped (1, ...) and sharing its
    /// storage: writes through the view change this tensor. The view keeps this tensor alive.
    /// A network runs its largest layers one example at a time on such views (`MemoryPlan`).
    public func example(_ i: Int) -> Tensor {
        precondition(rank >= 1 && i >= 0 && i < shape[0], "Tensor.example(\(i)) of shape \(shape)")
        return Tensor(viewing: self, example: i)
    }

    private init(viewing parent: Tensor, example i: Int) {
        shape = [1] + parent.shape.dropFirst()
        count = shape.reduce(1, *)
        data = parent.data + i * count
        self.parent = parent
    }

    /// Copies the values into `block` from float `offset` and uses that storage from now on (its
    /// own pooled storage goes back to the pool: nothing else points to it).
    func moveStorage(to block: ArenaBlock, offset: Int) {
        precondition(offset >= 0 && offset + count <= block.count, "Tensor.moveStorage: \(count) floats at \(offset) outside a block of \(block.count)")
        let storage = block.pointer + offset
        precondition(parent == nil, "Tensor.moveStorage: a view's storage belongs to its parent")
        storage.update(from: data, count: count)
        if arenaBlock == nil { TensorStorage.release(data, max(count, 1)) }
        data = storage
        arenaBlock = block
    }

    deinit { if arenaBlock == nil && parent == nil { TensorStorage.release(data, max(count, 1)) } }

    /// Calls `body` with the values; the pointer is valid only inside `body` (the tensor is kept
    /// alive for the call). Prefer this to `data` wherever a pointer is held across statements.
    public func withUnsafeValues<R>(_ body: (UnsafeBufferPointer<Float>) throws -> R) rethrows -> R {
        try withExtendedLifetime(self) { try body(UnsafeBufferPointer(start: data, count: count)) }
    }

    /// Calls `body` with the values to change; the pointer is valid only inside `body`.
    public func withUnsafeMutableValues<R>(_ body: (UnsafeMutableBufferPointer<Float>) throws -> R) rethrows -> R {
        try withExtendedLifetime(self) { try body(UnsafeMutableBufferPointer(start: data, count: count)) }
    }

    public var rank: Int { shape.count }
    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: data, count: count) }
    public var array: [Float] { Array(buffer) }

    public subscript(i: Int) -> Float {
        get { precondition(i >= 0 && i < count, "Tensor index \(i) out of range 0..<\(count)"); return data[i] }
        set { precondition(i >= 0 && i < count, "Tensor index \(i) out of range 0..<\(count)"); data[i] = newValue }
    }

    /// A new tensor with the same values.
    public func copy() -> Tensor {
        let t = Tensor(uninitializedShape: shape)
        t.data.update(from: data, count: count)
        return t
    }

    /// A copy of the values under another shape with the same element count.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        let t = Tensor(uninitializedShape: newShape)
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

/// Recycles the storage of large tensors (at least `minimumFloats`): a training step allocates and
/// frees the same activation-sized tensors every step, and fresh memory from the system costs a
/// page fault and a kernel zero-fill per 4 KiB page on first touch (about 1 ms per 8 MB), more
/// than the arithmetic on it. Freed blocks wait here, per exact element count, for the next
/// tensor of that size; at most `capacityBytes` in all (beyond that they go back to the system).
/// A tensor of at least `evictionMinimumFloats` that finds no block of its size first gives back
/// idle blocks of other sizes, largest first, as many bytes as it takes, so idle blocks do not
/// add to the peak of a step (at nnU-Net's scale one activation is 512 MiB, half the capacity).
/// Small tensors go straight to the allocator. Thread-safe.
enum TensorStorage {
    /// 256 Ki floats = 1 MiB: below this the allocator's own free lists are fast enough.
    static let minimumFloats = 1 << 18
    /// 1 GiB: U2's step frees up to 768 MiB of blocks it reallocates in the next step. Measured by
    /// page faults over a whole `flipout bench --workloads U2 --repeats 3 --warmup 1` with 4 KiB
    /// pages (FLIPOUT_HUGE_PAGES=0): 795 k at 512 MiB, 250 k at 768 MiB, 1 GiB and 2 GiB (the
    /// first step's); with 512 MiB every step faulted 160 MiB back in.
    static let capacityBytes = 1 << 30
    /// 32 Mi floats = 128 MiB: U2's largest activation (the 32-channel concatenation at 64³,
    /// batch 2: 64 MiB) is below it, so U1 and U2 steps allocate exactly as without eviction.
    static let evictionMinimumFloats = 32 << 20

    private static let lock = NSLock()
    nonisolated(unsafe) private static var free: [Int: [UnsafeMutableRawPointer]] = [:]
    nonisolated(unsafe) private static var freeBytes = 0
    nonisolated(unsafe) private static var liveBytesCount = 0

    /// 64-byte aligned, uninitialised storage for `count` floats (count >= 1).
    static func allocate(_ count: Int) -> UnsafeMutablePointer<Float> {
        if count >= minimumFloats {
            lock.lock()
            liveBytesCount += count * 4
            let reused = free[count]?.popLast()
            var evicted: [UnsafeMutableRawPointer] = []
            if reused != nil {
                freeBytes -= count * 4
            } else if count >= evictionMinimumFloats {
                var bytes = 0
                while bytes < count * 4, let size = free.filter({ !$0.value.isEmpty }).keys.max() {
                    evicted.append(free[size]!.removeLast())
                    bytes += size * 4
                    freeBytes -= size * 4
                }
            }
            lock.unlock()
            for b in evicted { LargeBlocks.deallocate(b) }
            if let reused { return reused.assumingMemoryBound(to: Float.self) }
        }
        let raw = LargeBlocks.allocate(bytes: count * 4)
        return raw.bindMemory(to: Float.self, capacity: count)
    }

    /// Returns storage from `allocate(count)`.
    static func release(_ p: UnsafeMutablePointer<Float>, _ count: Int) {
        if count >= minimumFloats {
            lock.lock()
            liveBytesCount -= count * 4
            let keep = freeBytes + count * 4 <= capacityBytes
            if keep {
                free[count, default: []].append(UnsafeMutableRawPointer(p))
                freeBytes += count * 4
            }
            lock.unlock()
            if keep { return }
        }
        LargeBlocks.deallocate(UnsafeMutableRawPointer(p))
    }

    /// Bytes of idle blocks waiting for reuse (for the memory trace and tests).
    static var idleBytes: Int {
        lock.lock()
        defer { lock.unlock() }
        return freeBytes
    }

    /// Bytes of large tensors alive (at least `minimumFloats` each; for the memory trace).
    static var liveBytes: Int {
        lock.lock()
        defer { lock.unlock() }
        return liveBytesCount
    }

    /// Gives every recycled block back to the system (e.g. after training, before a long idle).
    static func trim() {
        lock.lock()
        let blocks = free.values.flatMap { $0 }
        free = [:]
        freeBytes = 0
        lock.unlock()
        for b in blocks { LargeBlocks.deallocate(b) }
    }
}
