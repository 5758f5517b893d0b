// The processes of a data-parallel run and the collectives training needs; one process by default.

/// The group of processes training one model together (MPI's world), and the collective
/// operations data-parallel training uses. Every rank calls each collective in the same order
/// with the same counts; in-place buffers hold the result on every rank afterwards.
public protocol Communicator: AnyObject {
    /// This process: 0 ..< worldSize. Rank 0 writes checkpoints, metrics and the progress line.
    var rank: Int { get }
    var worldSize: Int { get }
    /// Processes on this node (they share its cores: each gets cores / localSize OpenMP threads).
    var localSize: Int { get }
    /// What carries the messages ("single process", "Open MPI v4.1.4 ...").
    var description: String { get }
    /// In place: buffer[i] = sum over ranks of buffer[i].
    func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws
    func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws
    /// In place: every rank's bytes become `root`'s.
    func broadcast(_ bytes: UnsafeMutableRawBufferPointer, root: Int) throws
    /// Returns when every rank has called it.
    func barrier() throws
    /// Ends every process of the job (an error on one rank would leave the others waiting).
    func abort(exitCode: Int32) -> Never
    /// Leaves the job for good (MPI_Finalize), e.g. before exiting with an error every rank found
    /// alike. Idempotent; also done when the communicator is released.
    func finish() throws
}

extension Communicator {
    public var isRoot: Bool { rank == 0 }

    /// Sums a few Doubles over ranks (epoch sums, validation statistics).
    public func allReduceSum(_ values: [Double]) throws -> [Double] {
        var v = values
        try v.withUnsafeMutableBufferPointer { try allReduceSum($0) }
        return v
    }

    /// Every rank gets rank `root`'s array (same count on every rank).
    public func broadcast(_ values: inout [Float], root: Int = 0) throws {
        try values.withUnsafeMutableBytes { try broadcast($0, root: root) }
    }
}

/// The default: one process, collectives are identities.
public final class SingleProcess: Communicator {
    public init() {}
    public var rank: Int { 0 }
    public var worldSize: Int { 1 }
    public var localSize: Int { 1 }
    public var description: String { "single process" }
    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {}
    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws {}
    public func broadcast(_ bytes: UnsafeMutableRawBufferPointer, root: Int) throws {
        precondition(root == 0, "broadcast from rank \(root) in a single process")
    }
    public func barrier() throws {}
    public func abort(exitCode: Int32) -> Never { exit(exitCode) }
    public func finish() throws {}
}

#if canImport(Glibc)
import Glibc
#endif
