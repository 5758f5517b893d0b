// A memfd both processes map: where every float array of an isolated plugin call travels.
#if canImport(Glibc)
import Glibc
#endif
import CPluginIsolation

/// A growable in-memory file mapped shared. The host creates and sizes it (ftruncate); the child,
/// which may not truncate files, remaps it when a request announces a larger size.
final class SharedMemory {
    let fd: Int32
    private(set) var base: UnsafeMutableRawPointer?
    private(set) var size = 0

    /// The host's side: a new memfd.
    init() throws {
        fd = flipout_memfd("flipout-plugin-arrays")
        guard fd >= 0 else { throw SharedMemoryError(what: "memfd_create", errno: errno) }
    }

    /// The child's side: the memfd it inherited, with its control block mapped for good (the
    /// host sized the file before starting the child).
    init(inherited fd: Int32) throws {
        self.fd = fd
        let p = mmap(nil, ChannelControl.arraysOffset, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let p, p != MAP_FAILED else { throw SharedMemoryError(what: "mmap of the control block", errno: errno) }
        fixedControl = p
    }

    private var fixedControl: UnsafeMutableRawPointer?

    /// The control block: the child's fixed mapping, or the start of the host's (remapped only
    /// by `ensure`, before a request is written).
    var control: ChannelControl { ChannelControl(base: fixedControl ?? base!) }

    deinit {
        if let base { munmap(base, size) }
        if let fixedControl { munmap(fixedControl, ChannelControl.arraysOffset) }
        close(fd)
    }

    /// Host: make the file at least `bytes` long (grown by doubling, whole pages) and map it.
    func ensure(_ bytes: Int) throws {
        guard bytes > size || base == nil else { return }
        var newSize = max(size * 2, 1 << 20)
        while newSize < bytes { newSize *= 2 }
        guard ftruncate(fd, off_t(newSize)) == 0 else { throw SharedMemoryError(what: "ftruncate to \(newSize) bytes", errno: errno) }
        try map(newSize)
    }

    /// Map the first `bytes` of the file (both sides), replacing the previous mapping.
    func map(_ bytes: Int) throws {
        if let base { munmap(base, size); self.base = nil; size = 0 }
        guard bytes > 0 else { return }
        let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let p, p != MAP_FAILED else { throw SharedMemoryError(what: "mmap of \(bytes) bytes", errno: errno) }
        base = p
        size = bytes
    }

    func floats(at offset: UInt64) -> UnsafeMutablePointer<Float> {
        (base! + Int(offset)).assumingMemoryBound(to: Float.self)
    }
}

/// The control block at the start of the shared memory: where requests and replies travel, and
/// the words that say a new one is there. Arrays start at `arraysOffset`. Each sequence word and
/// sleep flag sits on its own cache line (the two processes write different ones).
struct ChannelControl {
    static let requestSequence = 0, replySequence = 64, hostSleeping = 128, childSleeping = 192
    static let requestLength = 256, replyLength = 320
    /// The index of the call of a batch the child is running (it writes it before each call):
    /// names the call a dying child was in, and restarts the per-call watchdog.
    static let batchIndex = 384
    /// A request holds up to four lists of FLIPOUT_MAX_SLOTS arrays (kl_vjp), 16 bytes each.
    static let requestOffset = 4096, requestCapacity = 128 * 1024
    static let replyOffset = requestOffset + requestCapacity, replyCapacity = 64 * 1024
    static let arraysOffset = replyOffset + replyCapacity

    let base: UnsafeMutableRawPointer

    func word(_ offset: Int) -> UnsafeMutablePointer<UInt32> { (base + offset).assumingMemoryBound(to: UInt32.self) }
    func load(_ offset: Int) -> UInt32 { flipout_shared_load(word(offset)) }
    func store(_ offset: Int, _ value: UInt32) { flipout_shared_store(word(offset), value) }

    /// Writes a message (request or reply) and its length; the caller then publishes its sequence word.
    func write(_ bytes: [UInt8], at offset: Int, capacity: Int, length: Int) {
        precondition(bytes.count <= capacity, "an isolated-plugin message of \(bytes.count) bytes exceeds the channel's \(capacity)")
        bytes.withUnsafeBytes { (base + offset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        word(length).pointee = UInt32(bytes.count)
    }

    /// Reads a message the peer wrote; nil if its length is out of bounds (the peer is not trusted).
    func read(at offset: Int, capacity: Int, length: Int) -> [UInt8]? {
        let count = Int(load(length))
        guard count <= capacity else { return nil }
        return Array(UnsafeRawBufferPointer(start: base + offset, count: count))
    }
}

struct SharedMemoryError: Error, CustomStringConvertible {
    let what: String
    let errno: Int32
    var description: String { "\(what) failed: \(String(cString: strerror(errno)))" }
}

/// The arrays of one call, laid out in shared memory (64-byte aligned), with what to copy in and
/// back. Host arrays with any stride are packed contiguous (stride 1), or one value (stride 0).
struct CallFrame {
    enum Direction { case input, output, update }
    struct Entry {
        let host: UnsafeMutablePointer<Float>
        let hostStride: Int
        let count: Int
        var offset: Int
        let direction: Direction
        /// The host memory the array covers.
        var hostRange: Range<UInt> {
            let start = UInt(bitPattern: host)
            return count == 0 ? start..<start : start..<(start + UInt(((count - 1) * hostStride + 1) * MemoryLayout<Float>.size))
        }
        /// Bytes the array takes in the shared memory (64-byte aligned).
        var footprint: Int { (count * MemoryLayout<Float>.size + 63) & ~63 }

        func copyIn(_ shm: SharedMemory) {
            let dst = shm.floats(at: UInt64(offset))
            if hostStride == 1 || count == 1 { dst.update(from: host, count: count) }
            else { for i in 0..<count { dst[i] = host[i * hostStride] } }
        }

        func copyOut(_ shm: SharedMemory) {
            let src = shm.floats(at: UInt64(offset))
            if hostStride == 1 || count == 1 { host.update(from: src, count: count) }
            else { for i in 0..<count { host[i * hostStride] = src[i] } }
        }
    }
    private(set) var entries: [Entry] = []
    /// The end of the arrays, which start after the channel's control block.
    private(set) var size = ChannelControl.arraysOffset

    private mutating func add(_ p: UnsafeMutablePointer<Float>?, stride: Int, n: Int, _ direction: Direction) -> WireArray {
        guard let p else { return .absent }
        let count = stride == 0 ? 1 : n
        let entry = Entry(host: p, hostStride: stride, count: count, offset: size, direction: direction)
        size += entry.footprint
        entries.append(entry)
        return WireArray(offset: UInt64(entry.offset), stride: stride == 0 ? 0 : 1)
    }

    /// An array the plugin reads.
    mutating func input(_ p: UnsafePointer<Float>?, stride: Int = 1, n: Int) -> WireArray {
        add(p.map { UnsafeMutablePointer(mutating: $0) }, stride: stride, n: n, .input)
    }
    /// An array the plugin writes (never read back in).
    mutating func output(_ p: UnsafeMutablePointer<Float>?, n: Int) -> WireArray { add(p, stride: 1, n: n, .output) }
    /// A gradient the plugin ADDS into: copied in and back.
    mutating func update(_ p: UnsafeMutablePointer<Float>?, stride: Int, n: Int) -> WireArray { add(p, stride: stride, n: n, .update) }

    /// Bytes copied toward the child (`.input`) or back (`.output`).
    func bytes(_ toward: Direction) -> Int {
        entries.reduce(0) { sum, e in
            let copied = toward == .input ? e.direction != .output : e.direction != .input
            return sum + (copied ? e.count * MemoryLayout<Float>.size : 0)
        }
    }

    /// The same arrays laid out `delta` bytes further into the shared memory (after posted calls' arrays).
    func shifted(by delta: Int) -> CallFrame {
        var moved = self
        for k in moved.entries.indices { moved.entries[k].offset += delta }
        moved.size += delta
        return moved
    }

    func copyIn(_ shm: SharedMemory) {
        for e in entries where e.direction != .output { e.copyIn(shm) }
    }

    func copyOut(_ shm: SharedMemory) {
        for e in entries where e.direction != .input { e.copyOut(shm) }
    }
}
