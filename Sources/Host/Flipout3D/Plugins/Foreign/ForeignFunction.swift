// A plain C scalar function in a third-party library, called through libffi with a signature known only at run time.
import Foundation

extension ForeignPriorSpec.ScalarType {
    var ffiType: FFIType { self == .double ? .double : .float }
}

/// `T symbol(T x, T a, ...)` resolved in its library (ELF checks and dlopen through
/// `DynamicLibrary`, never closed), with its `ffi_cif` prepared once from the spec. Calls are
/// thread-safe: all per-call storage lives in a `Frame` owned by the caller.
public final class ForeignFunction: @unchecked Sendable {
    public let spec: ForeignPriorSpec
    public let library: DynamicLibrary
    /// Argument types in call order (x first), cached from the spec.
    let argumentTypes: [ForeignPriorSpec.ScalarType]
    private let address: UnsafeRawPointer
    private let interface: FFICallInterface

    public var arity: Int { argumentTypes.count }

    public init(_ spec: ForeignPriorSpec) throws {
        self.spec = spec
        let resolved = DynamicLibrary.resolve(spec.path)
        do {
            library = try DynamicLibrary(resolvedPath: resolved)
        } catch let e as PluginLoadError where e.kind == .notFound {
            throw PluginLoadError(.notFound, file: resolved, "no such file (from --foreign-prior \"\(spec.text)\"). The path is relative to the working folder; give the .so that exports \(spec.symbol).")
        }
        guard let a = library.symbol(spec.symbol) else {
            throw PluginLoadError(.missingSymbol, file: library.path, "does not export \(spec.symbol) (from --foreign-prior \"\(spec.text)\"). List what it exports with `nm -D --defined-only \(library.path)`; a C++ function needs extern \"C\" to keep its plain name.")
        }
        address = UnsafeRawPointer(a)
        argumentTypes = spec.arguments.map(\.type)
        do {
            interface = try FFICallInterface(returning: spec.returnType.ffiType, arguments: argumentTypes.map(\.ffiType))
        } catch let e as FFIError {
            throw PluginLoadError(.ffiFailed, file: library.path, "libffi cannot call \(spec.prototype): \(e).")
        }
    }

    /// Storage for one thread's calls: an 8-byte slot per argument, the pointer table libffi
    /// reads, and the return slot. Set the arguments, then `call()`; reuse for every element.
    public struct Frame {
        let function: ForeignFunction
        let base: UnsafeMutableRawPointer
        let pointers: UnsafeMutablePointer<UnsafeMutableRawPointer?>

        private var result: UnsafeMutableRawPointer { base }
        private func slot(_ i: Int) -> UnsafeMutableRawPointer { base + 16 + 8 * i }

        /// Set argument i (x is 0), converted to the C type the spec declares.
        public func set(_ i: Int, _ value: Double) {
            switch function.argumentTypes[i] {
            case .double: slot(i).storeBytes(of: value, as: Double.self)
            case .float: slot(i).storeBytes(of: Float(value), as: Float.self)
            }
        }

        /// The value argument i holds as the C function sees it (after rounding to float).
        public func get(_ i: Int) -> Double {
            switch function.argumentTypes[i] {
            case .double: return slot(i).load(as: Double.self)
            case .float: return Double(slot(i).load(as: Float.self))
            }
        }

        /// Call the function with the arguments set so far; the result widened to Double.
        public func call() -> Double {
            function.interface.call(function.address, returnValue: result, arguments: pointers)
            switch function.spec.returnType {
            case .double: return result.load(as: Double.self)
            case .float: return Double(result.load(as: Float.self))
            }
        }
    }

    public func withFrame<R>(_ body: (Frame) throws -> R) rethrows -> R {
        let n = arity
        // 16 bytes of return slot (libffi writes at least a full register), then the arguments.
        let base = UnsafeMutableRawPointer.allocate(byteCount: 16 + 8 * n, alignment: 16)
        let pointers = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: n)
        defer { base.deallocate(); pointers.deallocate() }
        base.initializeMemory(as: UInt8.self, repeating: 0, count: 16 + 8 * n)
        for i in 0..<n { pointers[i] = base + 16 + 8 * i }
        return try body(Frame(function: self, base: base, pointers: pointers))
    }

    /// One call with `arguments` (x first), for tests and one-off use.
    public func callAsFunction(_ arguments: Double...) -> Double {
        precondition(arguments.count == arity, "\(spec.symbol) takes \(arity) arguments, \(arguments.count) given")
        return withFrame { f in
            for (i, v) in arguments.enumerated() { f.set(i, v) }
            return f.call()
        }
    }
}
