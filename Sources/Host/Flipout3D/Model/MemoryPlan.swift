// MemoryPlan: which U-Net blocks keep their activations for backward and which recompute them from their input.

/// How a U-Net keeps what backward needs: the one place that trades memory for time.
///
/// A block (convolution · norm · ReLU) normally keeps its convolution's copy of the input and the
/// norm's x̂: two activations. A recomputed block keeps only what its input is made from (the
/// previous block's output, the tensor before upsampling, the skip and the upsampled branch
/// before concatenation) and runs its convolution and norm again in backward, with the kernels
/// and bias it ran with: the same bits, one more forward convolution. The head keeps its input
/// instead of a copy of it and re-saves it in backward (no convolution).
public enum MemoryPolicy: Sendable, Equatable {
    /// Recompute only while the estimate of kept activations exceeds this many bytes.
    case budget(bytes: Int)
    /// Keep everything (never recompute).
    case keepAll
    /// Recompute every block and the head.
    case recomputeAll

    /// Bytes of activations a training step may keep for backward before blocks are recomputed.
    /// By `MemoryPlan.estimate` (MemoryPlanTests pins these): U2 (width 16, 4 levels, 64³,
    /// batch 2) keeps 458 MiB and U1 28 MiB, so neither recomputes anything (their step is
    /// unchanged); U3 (width 32, 5 levels, 128³, batch 2) would keep 7270 MiB, and recomputes.
    public static let defaultBudgetBytes = 1 << 30
    public static let `default` = MemoryPolicy.budget(bytes: defaultBudgetBytes)
}

/// The policy applied to one network and input shape: the set of recomputed convolutions.
public struct MemoryPlan: Sendable, Equatable, CustomStringConvertible {
    /// Convolution indices (forward order, head last) whose blocks recompute in backward.
    public let recomputed: Set<Int>
    /// Estimated bytes kept for backward under this plan, and with nothing recomputed.
    public let keptBytes: Int
    public let keepAllBytes: Int

    public func recomputes(_ index: Int) -> Bool { recomputed.contains(index) }

    public var description: String {
        "recompute \(recomputed.count) of the convolutions, keeping ~\(keptBytes >> 20) MiB of activations (\(keepAllBytes >> 20) MiB without recomputation)"
    }

    /// What each convolution keeps in bytes: (kept normally, kept when recomputed), per index.
    /// x shape (N, C, D, H, W). Normally a block keeps its input copy and x̂ (or the ReLU mask);
    /// the head its input copy. Recomputed, a block keeps its input's source: the previous
    /// output (nothing extra when that is a skip kept anyway), the tensor before upsampling (1/8),
    /// or the upsampled branch of a concatenation (half); the head keeps its input.
    public static func estimate(_ shape: UNetConfig, input: [Int]) -> [(kept: Int, recomputed: Int)] {
        precondition(input.count == 5, "MemoryPlan.estimate: input \(input), expected (N, C, D, H, W)")
        let n = input[0], voxels = input[2...].reduce(1, *)
        func bytes(_ channels: Int, level: Int) -> Int { 4 * n * channels * (voxels >> (3 * level)) }
        var out: [(Int, Int)] = []
        for l in 0..<shape.levels {
            let cin = l == 0 ? shape.inputChannels : shape.channels(level: l - 1), c = shape.channels(level: l)
            let inLevel = max(l - 1, 0)
            // enc(l)a reads the level above (a skip for l > 0, kept anyway); enc(l)b reads enc(l)a's output.
            out.append((bytes(cin, level: inLevel) + bytes(c, level: l), l == 0 ? bytes(cin, level: 0) : 0))
            out.append((2 * bytes(c, level: l), bytes(c, level: l)))
        }
        for l in stride(from: shape.levels - 2, through: 0, by: -1) {
            let c = shape.channels(level: l), below = shape.channels(level: l + 1)
            out.append((bytes(below, level: l) + bytes(c, level: l), bytes(below, level: l + 1)))
            out.append((bytes(2 * c, level: l) + bytes(c, level: l), bytes(c, level: l)))
        }
        let head = bytes(shape.channels(level: 0), level: 0)
        out.append((head, head))
        return out
    }

    /// The plan for `policy`: under a budget, the blocks that save the most are recomputed first
    /// until the estimate fits (or nothing more can be saved).
    public static func choose(_ policy: MemoryPolicy, shape: UNetConfig, input: [Int]) -> MemoryPlan {
        let e = estimate(shape, input: input)
        let all = e.reduce(0) { $0 + $1.kept }
        switch policy {
        case .keepAll:
            return MemoryPlan(recomputed: [], keptBytes: all, keepAllBytes: all)
        case .recomputeAll:
            return MemoryPlan(recomputed: Set(e.indices), keptBytes: e.reduce(0) { $0 + $1.recomputed }, keepAllBytes: all)
        case .budget(let budget):
            var kept = all, chosen = Set<Int>()
            // Largest saving first; ties in forward order (a stable, printable choice).
            let order = e.indices.filter { e[$0].kept > e[$0].recomputed }
                .sorted { (e[$0].kept - e[$0].recomputed, -$0) > (e[$1].kept - e[$1].recomputed, -$1) }
            for i in order where kept > budget {
                chosen.insert(i)
                kept -= e[i].kept - e[i].recomputed
            }
            return MemoryPlan(recomputed: chosen, keptBytes: kept, keepAllBytes: all)
        }
    }
}
