// Data-parallel training over a Communicator: same initial weights everywhere, one gradient all-reduce per step.
import Foundation

/// What the trainer asks of the ranks. With `SingleProcess` every call is (nearly) free.
///
/// The gradient convention: every rank computes R times the gradient of the GLOBAL batch's data
/// loss with respect to its own examples (the loss's sufficient statistics are summed over the
/// ranks first, `sum`), plus the same scaled KL gradient as every other rank; `averageGradients`
/// then sums over ranks and divides by R. That is the global batch's data gradient plus the KL
/// gradient counted once: the KL gradient is identical on every rank (its noise is keyed by step,
/// not rank), and averaging R copies of it gives it back unchanged. See Training/ELBO.swift.
public final class DataParallel {
    public let communicator: Communicator
    /// Seconds spent in `averageGradients` and the calls timed, after the first (which sets up
    /// MPI's shared-memory channels), for the scaling figures (`flipout train` logs them).
    public private(set) var reduceSeconds = 0.0
    public private(set) var reducedSteps = 0
    private var reduceCalls = 0

    public init(_ communicator: Communicator = SingleProcess()) { self.communicator = communicator }

    public var rank: Int { communicator.rank }
    public var worldSize: Int { communicator.worldSize }
    /// Rank 0 writes checkpoints, metrics and the progress line.
    public var isWriter: Bool { communicator.isRoot }

    /// Every rank starts from rank 0's weights: one broadcast of the arena's value block.
    /// (Ranks build the same weights from the seed anyway; this also covers a resumed
    /// checkpoint or a model initialised from anything rank-dependent.)
    public func broadcastParameters(_ arena: ParameterArena) throws {
        guard worldSize > 1 else { return }
        try communicator.broadcast(UnsafeMutableRawBufferPointer(arena.valueBuffer), root: 0)
    }

    /// gradients = (sum over ranks of gradients) / R: one all-reduce of the whole gradient block.
    /// Call between backward (KL included) and the optimizer.
    public func averageGradients(_ arena: ParameterArena) throws {
        guard worldSize > 1 else { return }
        let start = DispatchTime.now().uptimeNanoseconds
        try communicator.allReduceSum(arena.gradientBuffer)
        let scale = 1 / Float(worldSize), g = arena.gradients
        for i in 0..<arena.count { g[i] *= scale }
        reduceCalls += 1
        if reduceCalls > 1 {
            reduceSeconds += Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
            reducedSteps += 1
        }
    }

    /// Sums over ranks of per-rank values (sufficient statistics: Dice sums, voxel counts).
    public func sum(_ values: [Double]) throws -> [Double] {
        guard worldSize > 1 else { return values }
        return try communicator.allReduceSum(values)
    }

    /// Means over ranks of per-rank values (each rank's mean over equally many examples).
    public func mean(_ values: [Double]) throws -> [Double] {
        guard worldSize > 1 else { return values }
        return try communicator.allReduceSum(values).map { $0 / Double(worldSize) }
    }

    /// Runs `body` on rank 0 only (writing files); the other ranks wait at a barrier until it is
    /// done. An error on rank 0 ends the job (the others would wait forever).
    public func onWriter(_ body: () throws -> Void) throws {
        if isWriter {
            do { try body() } catch {
                guard worldSize > 1 else { throw error }
                FileHandle.standardError.write(Data("Error on rank 0: \(error)\n".utf8))
                communicator.abort(exitCode: 1)
            }
        }
        try communicator.barrier()
    }

    /// The all-reduce's share of the time, as a line for the log.
    public func reduceSummary(stepSeconds: Double) -> String {
        let perStep = reducedSteps > 0 ? reduceSeconds / Double(reducedSteps) : 0
        return String(format: "all-reduce %.3f ms per step on rank %d, %.2f%% of the step", perStep * 1e3, rank, stepSeconds > 0 ? 100 * perStep / stepSeconds : 0)
    }
}
