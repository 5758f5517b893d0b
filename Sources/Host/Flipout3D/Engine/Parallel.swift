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
}
