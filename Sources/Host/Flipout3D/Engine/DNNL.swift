// DNNL: thin owning Swift types over oneDNN 2.x's C API (status → error, engine, stream, memory, primitives).
import CDNNL

/// A oneDNN call that failed: which call, on what, and oneDNN's status.
public struct EngineError: Error, CustomStringConvertible, Sendable {
    /// What we asked oneDNN to do, e.g. "create the forward convolution for N4 16->16 ...".
    public let operation: String
    /// oneDNN's status name, e.g. "unimplemented".
    public let status: String
    public var description: String {
        var text = "oneDNN failed to \(operation): \(status)"
        if status == "unimplemented" {
            text += " (oneDNN 2.6 has no kernel for this combination; try another geometry or layout)"
        } else if status == "out_of_memory" {
            text += " (reduce the batch or the volume size)"
        }
        return text
    }
}

/// The one place that turns a `dnnl_status_t` into a Swift error.
@inline(__always)
func dnnlCheck(_ status: dnnl_status_t, _ operation: @autoclosure () -> String) throws {
    if status != dnnl_success { throw EngineError(operation: operation(), status: dnnlStatusName(status)) }
}

func dnnlStatusName(_ status: dnnl_status_t) -> String {
    switch status {
    case dnnl_success: return "success"
    case dnnl_out_of_memory: return "out_of_memory"
    case dnnl_invalid_arguments: return "invalid_arguments"
    case dnnl_unimplemented: return "unimplemented"
    case dnnl_iterator_ends: return "iterator_ends"
    case dnnl_runtime_error: return "runtime_error"
    case dnnl_not_required: return "not_required"
    default: return "status \(status.rawValue)"
    }
}

/// oneDNN's CPU engine (one per process) and a stream on it. Each `Conv3D` owns a context with its
/// own stream (`withOwnStream()`), so convolutions of different layers never share one: a oneDNN
/// stream must not execute from two threads at once, primitives on different streams may.
/// oneDNN's CPU kernels run on OpenMP threads (all cores by default; OMP_NUM_THREADS overrides).
final class DNNLContext: @unchecked Sendable {
    let engine: dnnl_engine_t
    let stream: dnnl_stream_t
    /// The context whose engine this one borrows (nil for the one that owns the engine).
    private let engineOwner: DNNLContext?

    private init(engine: dnnl_engine_t?, owner: DNNLContext?) throws {
        var e = engine
        if e == nil { try dnnlCheck(dnnl_engine_create(&e, dnnl_cpu, 0), "create the CPU engine") }
        var s: dnnl_stream_t?
        let status = dnnl_stream_create(&s, e!, dnnl_stream_default_flags.rawValue)
        if status != dnnl_success && owner == nil { dnnl_engine_destroy(e!) }
        try dnnlCheck(status, "create a CPU stream")
        self.engine = e!
        stream = s!
        engineOwner = owner
    }

    deinit {
        dnnl_stream_destroy(stream)
        if engineOwner == nil { dnnl_engine_destroy(engine) }
    }

    private static let sharedResult: Result<DNNLContext, Error> = Result { try DNNLContext(engine: nil, owner: nil) }

    /// The process's CPU engine with a stream used only to allocate (created on first use).
    static func shared() throws -> DNNLContext { try sharedResult.get() }

    /// A new stream on the shared engine, for one owner's executions.
    static func withOwnStream() throws -> DNNLContext {
        let owner = try shared()
        return try DNNLContext(engine: owner.engine, owner: owner)
    }

    /// Blocks until every primitive submitted to the stream has finished.
    func wait() throws { try dnnlCheck(dnnl_stream_wait(stream), "wait for the CPU stream") }
}

/// A memory descriptor (dims, data type, layout); a value.
struct MemoryDesc {
    var raw: dnnl_memory_desc_t

    /// Float32 with the given logical dims and format tag (`dnnl_format_tag_any` lets a primitive choose).
    init(dims: [Int], tag: dnnl_format_tag_t) throws {
        raw = dnnl_memory_desc_t()
        let d = dims.map { Int64($0) }
        try dnnlCheck(dnnl_memory_desc_init_by_tag(&raw, Int32(d.count), d, dnnl_f32, tag),
                      "describe a memory of dims \(dims)")
    }

    init(raw: dnnl_memory_desc_t) { self.raw = raw }

    var byteSize: Int { withUnsafePointer(to: raw) { dnnl_memory_desc_get_size($0) } }

    static func == (a: MemoryDesc, b: MemoryDesc) -> Bool {
        withUnsafePointer(to: a.raw) { pa in withUnsafePointer(to: b.raw) { pb in dnnl_memory_desc_equal(pa, pb) != 0 } }
    }

    /// A short layout name such as "abcde" or "aBcde16b" (logical dims a, b, ... ordered by stride,
    /// capitalised when blocked, followed by the inner blocks).
    var layoutName: String {
        guard raw.format_kind == dnnl_blocked else { return "format_kind \(raw.format_kind.rawValue)" }
        let n = Int(raw.ndims)
        var blocking = raw.format_desc.blocking
        let strides = withUnsafeBytes(of: &blocking.strides) { Array($0.bindMemory(to: Int64.self).prefix(n)) }
        let nblks = Int(blocking.inner_nblks)
        let blks = withUnsafeBytes(of: &blocking.inner_blks) { Array($0.bindMemory(to: Int64.self).prefix(nblks)) }
        let idxs = withUnsafeBytes(of: &blocking.inner_idxs) { Array($0.bindMemory(to: Int64.self).prefix(nblks)) }
        let letters = Array("abcdefghijkl")
        let order = (0..<n).sorted { strides[$0] > strides[$1] }
        var name = order.map { i in idxs.contains(Int64(i)) ? String(letters[i]).uppercased() : String(letters[i]) }.joined()
        for (b, i) in zip(blks, idxs) { name += "\(b)\(letters[Int(i)])" }
        return name
    }
}

/// A oneDNN memory object. Either wraps caller storage (`setHandle` before each use) or owns a
/// library-allocated buffer (`allocate: true`); destroyed with the object.
final class DNNLMemory {
    let handle: dnnl_memory_t
    let desc: MemoryDesc

    init(_ desc: MemoryDesc, context: DNNLContext, allocate: Bool) throws {
        var m: dnnl_memory_t?
        // DNNL_MEMORY_ALLOCATE is ((void *)(size_t)-1); DNNL_MEMORY_NONE is NULL.
        let how: UnsafeMutableRawPointer? = allocate ? UnsafeMutableRawPointer(bitPattern: -1) : nil
        var raw = desc.raw
        try dnnlCheck(dnnl_memory_create(&m, &raw, context.engine, how),
                      "create a memory object of \(desc.byteSize) bytes")
        handle = m!
        self.desc = desc
    }

    deinit { dnnl_memory_destroy(handle) }

    /// The storage the memory currently points at, as floats.
    var data: UnsafeMutablePointer<Float> {
        var p: UnsafeMutableRawPointer?
        dnnl_memory_get_data_handle(handle, &p)
        return p!.assumingMemoryBound(to: Float.self)
    }

    /// Points the memory at caller storage (which must outlive the next execution).
    @inline(__always)
    func setHandle(_ pointer: UnsafeMutableRawPointer) throws {
        try dnnlCheck(dnnl_memory_set_data_handle(handle, pointer), "bind a tensor to a memory object")
    }
}

/// A primitive descriptor (what to compute and which implementation), destroyed with the object.
final class DNNLPrimitiveDesc {
    let handle: dnnl_primitive_desc_t

    /// Creates a descriptor for an operation descriptor (e.g. a `dnnl_convolution_desc_t`).
    init<OpDesc>(op: inout OpDesc, context: DNNLContext, hint: DNNLPrimitiveDesc?, _ what: @autoclosure () -> String) throws {
        var pd: dnnl_primitive_desc_t?
        let attr = try DNNLPrimitiveDesc.userScratchpad()
        defer { dnnl_primitive_attr_destroy(attr) }
        let status = withUnsafePointer(to: &op) { opPointer in
            dnnl_primitive_desc_create(&pd, UnsafeRawPointer(opPointer), attr, context.engine, hint?.handle)
        }
        try dnnlCheck(status, what())
        handle = pd!
    }

    /// A reorder from one layout to another on the shared engine.
    init(reorderFrom src: MemoryDesc, to dst: MemoryDesc, context: DNNLContext) throws {
        var pd: dnnl_primitive_desc_t?
        var s = src.raw, d = dst.raw
        let attr = try DNNLPrimitiveDesc.userScratchpad()
        defer { dnnl_primitive_attr_destroy(attr) }
        try dnnlCheck(dnnl_reorder_primitive_desc_create(&pd, &s, context.engine, &d, context.engine, attr),
                      "create a reorder \(src.layoutName) -> \(dst.layoutName)")
        handle = pd!
    }

    deinit { dnnl_primitive_desc_destroy(handle) }

    /// Attributes asking for a user-provided scratchpad. oneDNN's default "library" scratchpad is a
    /// thread-local buffer bound at primitive creation; Swift runs our calls on whichever pool
    /// thread is free, and a primitive executed after its creating thread's buffer was freed or
    /// regrown writes through a dangling pointer (seen as crashes in memset). Each primitive owns
    /// its scratchpad instead (`DNNLPrimitive.scratchpad`).
    static func userScratchpad() throws -> dnnl_primitive_attr_t {
        var attr: dnnl_primitive_attr_t?
        try dnnlCheck(dnnl_primitive_attr_create(&attr), "create primitive attributes")
        try dnnlCheck(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "ask for a user scratchpad")
        return attr!
    }

    /// The memory descriptor oneDNN chose for an argument (`dnnl_query_src_md`, ...).
    func md(_ what: dnnl_query_t, index: Int32 = 0) -> MemoryDesc {
        guard let p = dnnl_primitive_desc_query_md(handle, what, index) else {
            preconditionFailure("DNNLPrimitiveDesc: query \(what.rawValue) returned no memory descriptor")
        }
        return MemoryDesc(raw: p.pointee)
    }

    /// oneDNN's implementation name, e.g. "jit:avx512_core" or "gemm:jit".
    var implementation: String {
        var info: UnsafePointer<CChar>?
        guard dnnl_primitive_desc_query(handle, dnnl_query_impl_info_str, 0, &info) == dnnl_success,
              let info else { return "unknown" }
        return String(cString: info)
    }
}

/// An executable primitive (convolution or reorder), destroyed with the object.
final class DNNLPrimitive {
    let handle: dnnl_primitive_t
    let desc: DNNLPrimitiveDesc

    /// The primitive's scratchpad (nil when it needs none), bound to a `ScratchArena` lease for
    /// each execution (a backward-weights scratchpad can hold per-thread copies of the weights).
    let scratchpad: DNNLMemory?

    init(_ desc: DNNLPrimitiveDesc, _ what: @autoclosure () -> String) throws {
        var p: dnnl_primitive_t?
        try dnnlCheck(dnnl_primitive_create(&p, desc.handle), "create the primitive for \(what())")
        handle = p!
        self.desc = desc
        let scratch = desc.md(dnnl_query_scratchpad_md)
        scratchpad = scratch.byteSize > 0 ? try DNNLMemory(scratch, context: try DNNLContext.shared(), allocate: false) : nil
    }

    deinit { dnnl_primitive_destroy(handle) }

    /// Runs on the context's stream with (DNNL_ARG_*, memory) arguments, and waits when it has a
    /// scratchpad (whose lease ends with this call).
    @inline(__always)
    func execute(_ args: [dnnl_exec_arg_t], context: DNNLContext, _ what: @autoclosure () -> String) throws {
        guard let scratchpad else {
            let status = args.withUnsafeBufferPointer { dnnl_primitive_execute(handle, context.stream, Int32($0.count), $0.baseAddress) }
            return try dnnlCheck(status, "execute \(what())")
        }
        try ScratchArena.shared.withLease(bytes: scratchpad.desc.byteSize) { pad in
            try scratchpad.setHandle(pad)
            let all = args + [dnnl_exec_arg_t(arg: DNNL_ARG_SCRATCHPAD, memory: scratchpad.handle)]
            let status = all.withUnsafeBufferPointer { dnnl_primitive_execute(handle, context.stream, Int32($0.count), $0.baseAddress) }
            try dnnlCheck(status, "execute \(what())")
            try context.wait()
        }
    }
}
