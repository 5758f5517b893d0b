// The Open MPI communicator: the dlopen'ed backend (libflipout-mpi.so), strong types, one status funnel.
import CommABI
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A communication failure: the operation, the backend's message, and what to do.
public struct CommError: Error, CustomStringConvertible {
    public let operation: String
    public let status: Int32
    public let message: String
    public var description: String { "\(operation) failed: \(message)" }

    /// THE funnel: every backend status passes through here (0 is success).
    static func check(_ status: Int32, _ operation: @autoclosure () -> String, _ backend: UnsafePointer<flipout_comm_backend>) throws {
        guard status != 0 else { return }
        var text = [CChar](repeating: 0, count: 512)
        backend.pointee.error_string(status, &text, text.count)
        throw CommError(operation: operation(), status: status,
                        message: String(cString: text) + ". Every rank must run the same command with the same data; check the other ranks' output for the first error.")
    }
}

/// Why the MPI backend could not be used.
public struct CommLoadError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

/// MPI_COMM_WORLD through the backend table. Create one per process (MPI initialises once);
/// it finalises MPI when released.
public final class MPICommunicator: Communicator {
    /// Where the backend is looked for when FLIPOUT_MPI_BACKEND is not set: beside the executable.
    public static var defaultBackendPath: String { Paths.join(PluginSearch.executableDirectory, "libflipout-mpi.so") }

    let backend: UnsafePointer<flipout_comm_backend>
    public let rank: Int
    public let worldSize: Int
    public let localSize: Int
    public let backendPath: String
    public var description: String {
        let v = (backend.pointee.library_version().map { String(cString: $0) } ?? "MPI").split(separator: ",").first.map(String.init) ?? "MPI"
        return "\(v), \(worldSize) ranks (\(localSize) on this node)"
    }

    /// Loads the backend (RTLD_GLOBAL: Open MPI's own components resolve libmpi's symbols) and initialises MPI.
    public init(backendPath: String? = nil) throws {
        let path = backendPath ?? ProcessInfo.processInfo.environment["FLIPOUT_MPI_BACKEND"] ?? Self.defaultBackendPath
        self.backendPath = path
        guard FileManager.default.fileExists(atPath: path) else {
            throw CommLoadError(message: "the MPI backend \(path) does not exist. Build it with scripts/build-mpi-backend (needs Debian libopenmpi-dev), or set FLIPOUT_MPI_BACKEND to its path.")
        }
        guard let handle = dlopen(path, RTLD_NOW | RTLD_GLOBAL | RTLD_NODELETE) else {
            let why = dlerror().map { String(cString: $0) } ?? "unknown dlopen error"
            throw CommLoadError(message: "cannot load the MPI backend \(path): \(why). Install Open MPI (apt-get install openmpi-bin libopenmpi-dev) and rebuild it with scripts/build-mpi-backend.")
        }
        guard let entry = dlsym(handle, FLIPOUT_COMM_ENTRY_SYMBOL) else {
            throw CommLoadError(message: "\(path) does not export \(FLIPOUT_COMM_ENTRY_SYMBOL); it is not a Flipout3D communication backend (rebuild with scripts/build-mpi-backend).")
        }
        let table = unsafeBitCast(entry, to: flipout_comm_entry_fn.self)()!
        guard table.pointee.struct_size >= MemoryLayout<flipout_comm_backend>.size else {
            throw CommLoadError(message: "\(path): its function table is \(table.pointee.struct_size) bytes, smaller than version 1.0's \(MemoryLayout<flipout_comm_backend>.size); rebuild it with scripts/build-mpi-backend.")
        }
        backend = table
        var world = flipout_comm_world(struct_size: UInt32(MemoryLayout<flipout_comm_world>.size), rank: 0, size: 1, local_rank: 0, local_size: 1)
        try CommError.check(table.pointee.initialize(&world), "MPI initialisation", table)
        rank = Int(world.rank)
        worldSize = Int(world.size)
        localSize = Int(max(1, world.local_size))
    }

    private var finished = false

    public func finish() throws {
        guard !finished else { return }
        finished = true
        try CommError.check(backend.pointee.finalize(), "MPI finalisation on rank \(rank)", backend)
    }

    deinit { try? finish() }

    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        try CommError.check(backend.pointee.allreduce_sum(base, buffer.count, FLIPOUT_COMM_FLOAT32), "all-reduce of \(buffer.count) floats on rank \(rank)", backend)
    }

    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        try CommError.check(backend.pointee.allreduce_sum(base, buffer.count, FLIPOUT_COMM_FLOAT64), "all-reduce of \(buffer.count) doubles on rank \(rank)", backend)
    }

    public func broadcast(_ bytes: UnsafeMutableRawBufferPointer, root: Int) throws {
        precondition(root >= 0 && root < worldSize, "broadcast from rank \(root) of \(worldSize)")
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        try CommError.check(backend.pointee.broadcast(base, bytes.count, FLIPOUT_COMM_BYTE, Int32(root)), "broadcast of \(bytes.count) bytes from rank \(root)", backend)
    }

    public func barrier() throws {
        try CommError.check(backend.pointee.barrier(), "barrier on rank \(rank)", backend)
    }

    public func abort(exitCode: Int32) -> Never {
        backend.pointee.abort(exitCode)
        exit(exitCode)
    }
}
