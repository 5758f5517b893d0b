// Which training examples each rank sees: one global permutation per epoch, rank r takes every R-th.

/// PyTorch's `DistributedSampler(shuffle=True, drop_last=False)` semantics, over a global batch:
/// - epoch e's order is one permutation of 0 ..< count keyed by (seed, epoch) (a Fisher–Yates
///   shuffle on RandomStream(seed, 0, e, .shuffle)), the same on every rank;
/// - it is padded to a multiple of the world size R by repeating its first items (so every rank
///   gets the same number of steps and examples; nothing is padded when R divides count);
/// - step s of the epoch covers positions s * B ..< (s + 1) * B of that order (B = the global
///   batch, a multiple of R; the last step may be shorter), and rank r takes the positions
///   p ≡ r (mod R) among them, i.e. rank r holds every R-th item, as DistributedSampler does.
/// With R = 1 this is exactly the single-process shuffle and batching.
public struct DistributedSampler: Sendable {
    public let count: Int
    public let globalBatch: Int
    public let rank: Int
    public let worldSize: Int
    public let seed: UInt64

    public init(count: Int, globalBatch: Int, rank: Int, worldSize: Int, seed: UInt64) {
        precondition(count >= 1 && worldSize >= 1 && rank >= 0 && rank < worldSize, "DistributedSampler: count \(count), rank \(rank) of \(worldSize)")
        precondition(globalBatch >= 1 && globalBatch % worldSize == 0, "DistributedSampler: global batch \(globalBatch) is not a multiple of the world size \(worldSize)")
        self.count = count
        self.globalBatch = globalBatch
        self.rank = rank
        self.worldSize = worldSize
        self.seed = seed
    }

    /// Examples per epoch over all ranks: count rounded up to a multiple of R.
    public var paddedCount: Int { (count + worldSize - 1) / worldSize * worldSize }
    public var stepsPerEpoch: Int { (paddedCount + globalBatch - 1) / globalBatch }

    /// The padded global order of epoch `epoch` (0-based): dataset indices, paddedCount of them.
    public func order(epoch: Int) -> [Int] {
        var order = Array(0..<count)
        var shuffle = RandomStream(seed: seed, layer: 0, step: epoch, purpose: .shuffle)
        for i in stride(from: count - 1, to: 0, by: -1) { order.swapAt(i, shuffle.nextInt(below: i + 1)) }
        for i in 0..<(paddedCount - count) { order.append(order[i % count]) }
        return order
    }

    /// Every rank's dataset indices of step `step`, in global row order (for draws made per
    /// global row, such as patch positions: draw for all rows, keep `batch(_:of:).shard`'s).
    public func globalBatch(_ step: Int, of order: [Int]) -> [Int] {
        precondition(order.count == paddedCount && step >= 0 && step < stepsPerEpoch, "DistributedSampler.globalBatch: step \(step) of \(stepsPerEpoch)")
        return Array(order[(step * globalBatch)..<min(paddedCount, (step + 1) * globalBatch)])
    }

    /// This rank's dataset indices for step `step` (0-based within the epoch) of `order`, and where
    /// they sit in the step's global batch.
    public func batch(_ step: Int, of order: [Int]) -> (indices: [Int], shard: BatchShard) {
        let global = globalBatch(step, of: order)
        let shard = BatchShard.interleaved(globalCount: global.count, rank: rank, worldSize: worldSize)
        return (shard.localElements(global), shard)
    }
}
