// Which rows of a step's global batch a rank holds, so per-example random draws follow the global row.

/// A rank's part of the global batch: its local example j is global row `offset + j * stride`
/// of `globalCount` rows. The global batch is the concatenation over ranks (DistributedSampler's
/// interleaving: rank r holds rows r, r + R, r + 2R, ...). `.whole`: the local batch is all of it.
///
/// Layers draw per-example randomness for all `globalCount` rows from the step's stream, in the
/// same order a single process would, and keep their own rows. So an example gets the same Flipout
/// signs (and per-example weight noise) whatever the number of ranks; the extra cost is drawing
/// (R - 1) / R of the signs for nothing, a few hundred bits per example and layer.
public struct BatchShard: Sendable, Equatable {
    /// Rows in the global batch; nil: as many as the local batch has.
    public var globalCount: Int?
    public var offset: Int
    public var stride: Int

    public static let whole = BatchShard(globalCount: nil, offset: 0, stride: 1)

    public init(globalCount: Int?, offset: Int, stride: Int) {
        precondition(offset >= 0 && stride >= 1, "BatchShard: offset \(offset), stride \(stride)")
        self.globalCount = globalCount
        self.offset = offset
        self.stride = stride
    }

    /// Rows of the global batch for a local batch of `n` examples.
    public func globalCount(local n: Int) -> Int {
        let g = globalCount ?? n
        precondition(n == 0 || offset + (n - 1) * stride < g, "BatchShard: \(n) local rows at \(offset) + j * \(stride) do not fit a global batch of \(g)")
        return g
    }

    /// The global row of local example j.
    @inline(__always) public func globalRow(_ j: Int) -> Int { offset + j * stride }

    /// The local example holding global row g, or nil if another rank holds it.
    public func localRow(_ g: Int, local n: Int) -> Int? {
        guard g >= offset, (g - offset) % stride == 0 else { return nil }
        let j = (g - offset) / stride
        return j < n ? j : nil
    }

    /// The rank holding rows `rank`, `rank + worldSize`, ... of a global batch of `globalCount`.
    public static func interleaved(globalCount: Int, rank: Int, worldSize: Int) -> BatchShard {
        BatchShard(globalCount: globalCount, offset: rank, stride: worldSize)
    }

    /// This rank's elements of a per-row array of the whole global batch (indices, patch draws).
    public func localElements<T>(_ global: [T]) -> [T] {
        guard globalCount != nil else { return global }
        return Array(Swift.stride(from: offset, to: global.count, by: stride).map { global[$0] })
    }

    /// This rank's rows of a (globalCount, rowLength...) tensor drawn for the whole global batch:
    /// (n, rowLength...). The tensor itself when the shard is the whole batch.
    public func localRows(_ global: Tensor, local n: Int) -> Tensor {
        if globalCount == nil || (offset == 0 && stride == 1 && global.shape[0] == n) { return global }
        let row = global.count / max(1, global.shape[0])
        let out = Tensor(uninitializedShape: [n] + global.shape.dropFirst())
        for j in 0..<n { (out.data + j * row).update(from: global.data + globalRow(j) * row, count: row) }
        return out
    }
}
