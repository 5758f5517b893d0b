// The next training batch prepared on a worker thread while the current step runs: patch cutting and augmentation beside the step.
import Foundation

/// One batch being made on a worker (a serial queue of its own). The batch is a pure function of
/// the seed, the global step and the example rows (`PatchSampler`: every draw comes from keyed
/// random streams), so preparing it early, on another thread, gives the same bytes as preparing
/// it in line: training is bit-identical with and without the worker.
final class BatchPrefetch {
    private static let queue = DispatchQueue(label: "flipout3d.batch-prefetch", qos: .userInitiated)
    private let ready = DispatchSemaphore(value: 0)
    private var batch: (x: Tensor, y: Tensor)?

    /// Starts `make` on the worker.
    init(_ make: @escaping () -> (x: Tensor, y: Tensor)) {
        Self.queue.async { [self] in
            batch = make()
            ready.signal()
        }
    }

    /// Waits for the batch (once).
    func wait() -> (x: Tensor, y: Tensor) {
        ready.wait()
        defer { batch = nil }
        return batch!
    }
}
