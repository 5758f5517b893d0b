// Float buffers that sit flush against PROT_NONE guard pages: reading or writing one element too far faults.
#if canImport(Glibc)
import Glibc
#endif

/// `count` floats whose last element ends exactly where an inaccessible page begins, with another
/// inaccessible page before the first element. `count` may be 0: the pointer then points AT the
/// guard page, so any access through it faults. Lives until deinit.
final class GuardedFloats {
    let pointer: UnsafeMutablePointer<Float>
    let count: Int
    private let base: UnsafeMutableRawPointer
    private let length: Int

    init(_ count: Int) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let bytes = count * MemoryLayout<Float>.stride
        let dataPages = (bytes + page - 1) / page
        length = (dataPages + 2) * page
        guard let m = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), m != MAP_FAILED else {
            fatalError("mmap of \(length) bytes for a guarded buffer failed")
        }
        base = m
        // Not inside precondition(): -Ounchecked would not even evaluate it.
        let below = mprotect(m, page, PROT_NONE), above = mprotect(m + (dataPages + 1) * page, page, PROT_NONE)
        if below != 0 || above != 0 { fatalError("mprotect of a guard page failed (errno \(errno))") }
        let end = m + (dataPages + 1) * page
        pointer = (end - bytes).bindMemory(to: Float.self, capacity: max(count, 1))
        self.count = count
    }

    convenience init(_ values: [Float]) {
        self.init(values.count)
        for (i, v) in values.enumerated() { pointer[i] = v }
    }

    deinit { munmap(base, length) }
}
