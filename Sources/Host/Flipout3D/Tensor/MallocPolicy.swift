// MallocPolicy: glibc malloc's thresholds for memory-bound steps, so that freed blocks of 1 MiB and more go back to the system.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// glibc serves a request from its heap below a threshold that it raises, up to 32 MiB, each time
/// a larger block is freed; freed heap memory stays resident. A step whose blocks run one example
/// at a time (`MemoryPlan.split`, U3) allocates and frees 1-32 MiB buffers (the deeper levels'
/// activations, oneDNN's and the native kernels' per-call buffers) that then sit in the heap.
/// Fixing the threshold at 1 MiB (and the heap's trim threshold with it) sends every such block
/// to mmap and back. Measured on U3 (`FLIPOUT_MEMORY_TRACE=1 flipout bench --workloads U3
/// --repeats 1 --warmup 1`, the same settings through glibc's environment tunables): resident
/// memory at a step's start 663 MiB instead of 814 beside the idle tensor pool, the step's peak
/// 3607 MiB instead of 3695. Tensors of 1 MiB and more reuse their blocks through `TensorStorage`,
/// so their page faults do not come back. U1's and U2's steps split nothing and keep glibc's defaults.
enum MallocPolicy {
    static let thresholdBytes: Int32 = 1 << 20
    /// <malloc.h>'s parameter numbers (glibc's ABI; the header is not in Swift's Glibc module).
    private static let trimThreshold: Int32 = -1, mmapThreshold: Int32 = -3

    private static let applied: Void = {
        #if canImport(Glibc)
        typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return }   // RTLD_DEFAULT
        let mallopt = unsafeBitCast(symbol, to: Mallopt.self)
        _ = mallopt(mmapThreshold, thresholdBytes)
        _ = mallopt(trimThreshold, thresholdBytes)
        #endif
    }()

    /// Applies the thresholds (once per process; later calls do nothing).
    static func returnFreedBlocksToTheSystem() { _ = applied }
}
