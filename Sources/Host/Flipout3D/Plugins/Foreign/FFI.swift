// libffi wrapped the way swift-system wraps C: typed values, and one funnel from ffi_status to Swift errors.
import CFFI

/// A libffi type descriptor. The shim (Sources/CFFI) hands out libffi's own process-wide
/// `ffi_type_*` globals, which Swift refuses to touch directly; they are never written.
struct FFIType: Equatable, @unchecked Sendable {
    let raw: UnsafeMutablePointer<ffi_type>

    static var void: FFIType { FFIType(raw: flipout_ffi_void()) }
    static var float: FFIType { FFIType(raw: flipout_ffi_float()) }
    static var double: FFIType { FFIType(raw: flipout_ffi_double()) }
    static var pointer: FFIType { FFIType(raw: flipout_ffi_pointer()) }
    static var sint32: FFIType { FFIType(raw: flipout_ffi_sint32()) }
    static var uint32: FFIType { FFIType(raw: flipout_ffi_uint32()) }
    static var uint64: FFIType { FFIType(raw: flipout_ffi_uint64()) }
    /// `size_t` on this platform.
    static var size: FFIType { FFIType(raw: flipout_ffi_size_t()) }
}

/// A libffi call that failed. The only place an `ffi_status` (or a NULL from ffi_closure_alloc)
/// becomes a Swift error.
struct FFIError: Error, CustomStringConvertible, Equatable {
    enum Code: Equatable {
        case badTypedef, badABI, badArgumentType, unknown(UInt32), outOfMemory
    }
    let operation: String
    let code: Code

    init(_ operation: String, _ code: Code) { self.operation = operation; self.code = code }

    var description: String {
        switch code {
        case .badTypedef: return "\(operation) failed: FFI_BAD_TYPEDEF (a type descriptor is malformed)"
        case .badABI: return "\(operation) failed: FFI_BAD_ABI (this libffi does not support the calling convention)"
        case .badArgumentType: return "\(operation) failed: FFI_BAD_ARGTYPE (an argument type is not supported by this calling convention)"
        case .unknown(let s): return "\(operation) failed: ffi_status \(s)"
        case .outOfMemory: return "\(operation) failed: no executable memory for a closure (is libffi built without closure support, or is W^X memory exhausted?)"
        }
    }

    /// Throw unless `status` is FFI_OK.
    static func check(_ operation: String, _ status: ffi_status) throws {
        switch status {
        case FFI_OK: return
        case FFI_BAD_TYPEDEF: throw FFIError(operation, .badTypedef)
        case FFI_BAD_ABI: throw FFIError(operation, .badABI)
        case FFI_BAD_ARGTYPE: throw FFIError(operation, .badArgumentType)
        default: throw FFIError(operation, .unknown(status.rawValue))
        }
    }
}

/// A C function's shape, prepared once (`ffi_prep_cif`): the return type and argument types.
/// Immutable after init, so one interface may be used by any number of threads at once.
final class FFICallInterface: @unchecked Sendable {
    let returnType: FFIType
    let argumentTypes: [FFIType]
    let cif: UnsafeMutablePointer<ffi_cif>
    /// The `ffi_type *` array the cif points into; it must live as long as the cif.
    private let typeTable: UnsafeMutablePointer<UnsafeMutablePointer<ffi_type>?>

    init(returning returnType: FFIType, arguments: [FFIType]) throws {
        self.returnType = returnType
        self.argumentTypes = arguments
        cif = .allocate(capacity: 1)
        typeTable = .allocate(capacity: max(1, arguments.count))
        for (i, t) in arguments.enumerated() { (typeTable + i).initialize(to: t.raw) }
        // Every stored property is set, so a throw here still runs deinit (which frees both).
        try FFIError.check("ffi_prep_cif", ffi_prep_cif(cif, flipout_ffi_default_abi(), UInt32(arguments.count), returnType.raw, typeTable))
    }

    deinit {
        cif.deallocate()
        typeTable.deallocate()
    }

    /// Call `function` (an address whose C type matches this interface). `arguments[i]` points
    /// at the i-th argument's value; `returnValue` must hold at least max(8, size of the return type).
    func call(_ function: UnsafeRawPointer, returnValue: UnsafeMutableRawPointer?,
              arguments: UnsafeMutablePointer<UnsafeMutableRawPointer?>) {
        ffi_call(cif, unsafeBitCast(function, to: (@convention(c) () -> Void).self), returnValue, arguments)
    }
}

/// The arguments libffi hands a closure: `raw[i]` points at the i-th argument's value.
struct FFIArguments {
    let raw: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    /// The i-th argument read as `T` (which must be the C type the interface declares).
    func load<T>(_ i: Int, as type: T.Type = T.self) -> T { raw[i]!.load(as: T.self) }
}

/// Where a closure writes its return value. libffi widens integer returns to a full register
/// (`ffi_sarg`), so small signed results are stored widened.
struct FFIReturnValue {
    let raw: UnsafeMutableRawPointer?
    func store(_ value: Int32) { raw?.storeBytes(of: ffi_sarg(value), as: ffi_sarg.self) }
}

/// A context-free C function pointer manufactured at run time (`ffi_closure_alloc` +
/// `ffi_prep_closure_loc`): calling `code` as the C function `interface` describes runs
/// `handler`. This is how a Swift object is bound to a callback that carries no context pointer.
/// The closure owns its interface; it is freed when the object is (callers that hand `code` to
/// C keep the object alive for as long as C may call it).
final class FFIClosure: @unchecked Sendable {
    typealias Handler = (FFIArguments, FFIReturnValue) -> Void

    let interface: FFICallInterface
    let handler: Handler
    /// The executable address to hand out as a C function pointer.
    let code: UnsafeMutableRawPointer
    private let closure: UnsafeMutableRawPointer

    init(_ interface: FFICallInterface, handler: @escaping Handler) throws {
        self.interface = interface
        self.handler = handler
        var code: UnsafeMutableRawPointer?
        guard let closure = ffi_closure_alloc(flipout_ffi_closure_size(), &code), let code else {
            throw FFIError("ffi_closure_alloc", .outOfMemory)
        }
        self.closure = closure
        self.code = code
        let trampoline: @convention(c) (UnsafeMutablePointer<ffi_cif>?, UnsafeMutableRawPointer?,
                                        UnsafeMutablePointer<UnsafeMutableRawPointer?>?, UnsafeMutableRawPointer?) -> Void = { _, ret, args, user in
            let me = Unmanaged<FFIClosure>.fromOpaque(user!).takeUnretainedValue()
            me.handler(FFIArguments(raw: args!), FFIReturnValue(raw: ret))
        }
        // Every stored property is set, so a throw here still runs deinit (which frees the closure).
        try FFIError.check("ffi_prep_closure_loc", ffi_prep_closure_loc(
            closure.assumingMemoryBound(to: ffi_closure.self), interface.cif, trampoline,
            Unmanaged.passUnretained(self).toOpaque(), code))
    }

    deinit { ffi_closure_free(closure) }

    /// `code` as a C function pointer type (e.g. a field type of a descriptor struct).
    func function<F>(as type: F.Type) -> F {
        precondition(MemoryLayout<F>.size == MemoryLayout<UnsafeMutableRawPointer>.size, "not a C function pointer type")
        return unsafeBitCast(code, to: F.self)
    }
}
