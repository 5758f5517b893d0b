// LargeBlocks: raw memory for activation-sized buffers, on 2 MiB boundaries and backed by transparent huge pages.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Allocation of large, long-reused buffers (tensor storage, oneDNN's layout copies). Blocks of at
/// least `hugeBytes` are aligned to 2 MiB and advised `MADV_HUGEPAGE`, so that a kernel with
/// transparent huge pages in `madvise` mode (Debian's default) backs them with 2 MiB pages: one
/// page fault and one TLB entry per 2 MiB instead of 512. Where the kernel has no THP the advice is
/// ignored and the block behaves as before. Free with `deallocate`.
enum LargeBlocks {
    static let hugeBytes = 2 << 20
    static let enabled: Bool = ProcessInfo.processInfo.environment["FLIPOUT_HUGE_PAGES"] != "0"

    static func allocate(bytes: Int) -> UnsafeMutableRawPointer {
        precondition(bytes > 0, "LargeBlocks: allocation of \(bytes) bytes")
        let huge = enabled && bytes >= hugeBytes
        var p: UnsafeMutableRawPointer?
        let status = posix_memalign(&p, huge ? hugeBytes : 64, bytes)
        guard status == 0, let p else { fatalError("LargeBlocks: out of memory for \(bytes) bytes (posix_memalign \(status))") }
        if huge { _ = madvise(p, bytes & ~(hugeBytes - 1), MADV_HUGEPAGE) }
        return p
    }

    static func deallocate(_ p: UnsafeMutableRawPointer) { free(p) }
}
