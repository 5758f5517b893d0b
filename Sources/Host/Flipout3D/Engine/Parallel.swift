// Parallel: contiguous ranges of an elementwise pass over the kernels' threads.
import Foundation

enum Parallel {
    /// Elements below which a pass runs on the calling thread (fork/join would cost more).
    static let minimumElements = 1 << 18

    /// Runs body(begin, end) over [0, count) in contiguous ranges, 4 per thread (the native
    /// kernels' thread count: OMP_NUM_THREADS, else every core), or in one call for short passes.
    /// Each element belongs to exactly one range, so an elementwise pass gives the same bits for
    /// every thread count.
    static func ranges(_ count: Int, _ body: (Int, Int) -> Void) {
        let threads = NativeConv3D.threads
        guard threads > 1, count >= minimumElements else { return body(0, count) }
        let parts = threads * 4
        DispatchQueue.concurrentPerform(iterations: parts) { p in body(count * p / parts, count * (p + 1) / parts) }
    }

    /// Runs body(begin, end) over the items [0, count) (e.g. the (example, channel) planes of an
    /// activation), each of about `elementsPerItem` elements of work, in contiguous ranges of
    /// whole items: 4 per thread, or one call when the whole pass is short. An item is always
    /// processed by one call, in its own fixed order, so a per-item reduction gives the same bits
    /// for every thread count.
    static func items(_ count: Int, elementsPerItem: Int, _ body: (Int, Int) -> Void) {
        let threads = NativeConv3D.threads
        guard threads > 1, count > 1, count * max(elementsPerItem, 1) >= minimumElements else { return body(0, count) }
        let parts = min(count, threads * 4)
        DispatchQueue.concurrentPerform(iterations: parts) { p in body(count * p / parts, count * (p + 1) / parts) }
    }
}
