// ScratchArena: leased blocks for transient buffers (oneDNN's layout copies and scratchpads), shared by every engine.
import Foundation

/// Blocks of raw memory lent for the length of one call and then returned: oneDNN's inner
/// buffers (x, y, dx, dy reordered into its layout), primitive scratchpads, and a forward's x
/// copy when the caller keeps no copy. Engines used to own these buffers, one set per layer, so
/// a U-Net held every layer's reorder targets at once (at nnU-Net's scale, 19 layers of up to
/// 1 GiB each). Leased here, they cost only what the largest concurrent calls need: with calls
/// run one after another (a training step), one block per nesting level, grown to the largest
/// request and reused from then on.
///
/// A lease is valid only inside `withLease`; nothing may keep its pointer. Thread-safe: concurrent
/// callers get different blocks. Contents are unspecified (never zeroed).
public final class ScratchArena: @unchecked Sendable {
    public static let shared = ScratchArena()

    private struct Block { let pointer: UnsafeMutableRawPointer; let bytes: Int }
    private let lock = NSLock()
    private var idle: [Block] = []

    public init() {}

    deinit { for b in idle { LargeBlocks.deallocate(b.pointer) } }

    /// Calls `body` with `bytes` (> 0) of 64-byte aligned storage, returned to the arena afterwards.
    public func withLease<R>(bytes: Int, _ body: (UnsafeMutableRawPointer) throws -> R) rethrows -> R {
        precondition(bytes > 0, "ScratchArena: lease of \(bytes) bytes")
        let block = take(bytes)
        defer { give(block) }
        return try body(block.pointer)
    }

    /// The smallest idle block that fits; else the largest idle block is freed and a block of
    /// exactly `bytes` allocated (so one sequence of calls keeps one block per nesting level).
    private func take(_ bytes: Int) -> Block {
        lock.lock()
        var fit: Int?, largest: Int?
        for (i, b) in idle.enumerated() {
            if b.bytes >= bytes && (fit == nil || b.bytes < idle[fit!].bytes) { fit = i }
            if largest == nil || b.bytes > idle[largest!].bytes { largest = i }
        }
        if let fit {
            let b = idle.remove(at: fit)
            lock.unlock()
            return b
        }
        let dropped = largest.map { idle.remove(at: $0) }
        lock.unlock()
        dropped.map { LargeBlocks.deallocate($0.pointer) }
        return Block(pointer: LargeBlocks.allocate(bytes: bytes), bytes: bytes)
    }

    private func give(_ block: Block) {
        lock.lock()
        idle.append(block)
        lock.unlock()
    }

    /// Bytes held by idle blocks (for tests and logs).
    public var idleBytes: Int {
        lock.lock()
        defer { lock.unlock() }
        return idle.reduce(0) { $0 + $1.bytes }
    }

    /// Gives every idle block back to the system.
    public func trim() {
        lock.lock()
        let blocks = idle
        idle = []
        lock.unlock()
        for b in blocks { LargeBlocks.deallocate(b.pointer) }
    }
}
