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
    /// batch 2) keeps 384 MiB and U1 23 MiB, so neither recomputes anything (their step is
    /// unchanged); U3 (width 32, 5 levels, 128³, batch 2) would keep 6118 MiB, and recomputes.
    public static let defaultBudgetBytes = 1 << 30
    public static let `default` = MemoryPolicy.budget(bytes: defaultBudgetBytes)
}

/// The policy applied to one network and input shape: the set of recomputed convolutions, and
/// the convolutions run one example at a time.
public struct MemoryPlan: Sendable, Equatable, CustomStringConvertible {
    /// Convolution indices (forward order, head last) whose blocks recompute in backward.
    public let recomputed: Set<Int>
    /// Estimated bytes kept for backward under this plan, and with nothing recomputed.
    public var keptBytes: Int
    public let keepAllBytes: Int
    /// Convolution indices whose blocks run example by example (input made, convolution, norm in
    /// backward): those whose input and output (for the batch) reach `splitBytes`. Decided by
    /// size alone, never by the policy, so every policy computes the same bits. These are the
    /// memory-bound blocks: their convolutions run on the native kernels where they apply
    /// (`Conv3DEngines.Choice.lowMemory`), and each starts by releasing idle pool and arena blocks.
    public var split: Set<Int> = []

    /// Whether level 0's skip (enc0b's output) is recomputed from x, one example at a time,
    /// wherever it is read after enc1a's forward (dec0's forward and backward, enc1a's backward),
    /// instead of being kept: when enc0a, enc0b, enc1a and dec0 all recompute and run example by
    /// example. At U3 that is 512 MiB kept from enc1a's forward to its backward, against three
    /// more runs of enc0a and enc0b: the skip was beside every peak of the step (dec0's and up0's
    /// backward at 3.6 GiB, dec1's with oneDNN's arena). Measured with `scripts/bench --unet U3
    /// --rounds 1 --unet-peers tfp` (with the other memory changes of the same commit): forward
    /// convolutions 16.9 -> 21.8 s of the step, the step 37.4 -> 43.3 s, the peak 3.61 -> 2.84 GiB.
    public var recomputesSkip = false

    /// Decoder levels whose upsampled branch is recomputed (by its up block, from the tensor
    /// that block keeps) where its concatenation block recomputes, instead of being kept: levels
    /// whose up and concatenation blocks both recompute and run as a batch, so dL/d(branch) gets
    /// its own buffer only at that level's backward, after the full-resolution blocks' peak.
    /// At U3, levels 1-3: 164 MiB less beside dec0's backward, for one more up convolution per
    /// level at 1/8 of the resolution or less.
    public var recomputedBranches: Set<Int> = []

    public func recomputes(_ index: Int) -> Bool { recomputed.contains(index) }
    public func splitsExamples(_ index: Int) -> Bool { split.contains(index) }

    /// Blocks whose input and output reach this many bytes run one example at a time: U3's
    /// full-resolution blocks (544-1536 MiB at batch 2), where oneDNN's layout copies of the
    /// batch were ~1.5 GiB of the step's peak; U2's largest (96 MiB) and U1's run as a batch.
    public static let defaultSplitBytes = 512 << 20

    public var description: String {
        "recompute \(recomputed.count) of the convolutions, keeping ~\(keptBytes >> 20) MiB of activations (\(keepAllBytes >> 20) MiB without recomputation)"
            + (split.isEmpty ? "" : "; \(split.count) convolutions run one example at a time")
            + (recomputesSkip ? "; level 0's skip is recomputed from x" : "")
            + (recomputedBranches.isEmpty ? "" : "; \(recomputedBranches.count) upsampled branches are recomputed")
    }

    /// What each convolution keeps in bytes: (kept normally, kept when recomputed), per index.
    /// x shape (N, C, D, H, W). Normally a block keeps its input copy and x̂ (or the ReLU mask);
    /// the head its input copy. Recomputed, a block keeps its input's source: the previous
    /// output (for enc0b, nothing: it recomputes enc0a's output from x, which enc0a keeps), the
    /// tensor before upsampling (1/8), or the upsampled branch of a concatenation (half: the
    /// skip is counted by the next level's first block, which keeps it as its input); the head
    /// keeps its input.
    ///
    /// What this leaves out, measured on U3 (`FLIPOUT_MEMORY_TRACE=1 flipout bench --workloads U3
    /// --repeats 1 --warmup 1`, whose lines name the tensor pool's and the arena's idle bytes and
    /// the live tensors' bytes): the step's peak is 2.84 GiB (2899-2904 MiB), in dec0's backward, with
    /// dec0's forward next (2883 MiB). At dec0's backward live (2343 MiB resident at its start,
    /// 1985 MiB of it tensors): the kept activations (the upsampled branch, 512 MiB, and about
    /// 700 MiB at levels 1-4 with the layers' draws), the gradient flowing back (512 MiB, in the
    /// head's input's storage, where dec0 then writes the skip's gradient; the branch's goes into
    /// the branch's storage), the bench's two prepared cases (162 MiB), and about 360 MiB of
    /// process (libraries, parameters, gradients and optimizer state). Each example adds the skip
    /// recomputed from x (256 MiB), the recomputed output (256) and a slice of the concatenation's
    /// second part (64). Before level 0's skip and levels 1-3's branches were recomputed, and
    /// before the logits were freed ahead of backward and glibc's threshold was fixed
    /// (`MallocPolicy`), the peak was 3.61 GiB (3695 MiB); before the decoder's full-resolution
    /// convolutions stopped making their inputs (`UnmadeInputConvolutions`) it was 4.28 GiB.
    public static func estimate(_ shape: UNetConfig, input: [Int]) -> [(kept: Int, recomputed: Int)] {
        precondition(input.count == 5, "MemoryPlan.estimate: input \(input), expected (N, C, D, H, W)")
        let n = input[0], voxels = input[2...].reduce(1, *)
        func bytes(_ channels: Int, level: Int) -> Int { 4 * n * channels * (voxels >> (3 * level)) }
        var out: [(Int, Int)] = []
        for l in 0..<shape.levels {
            let cin = l == 0 ? shape.inputChannels : shape.channels(level: l - 1), c = shape.channels(level: l)
            let inLevel = max(l - 1, 0)
            // enc(l)a reads the level above (x, or the skip, which it then keeps until its backward,
            // the last of all); enc(l)b reads enc(l)a's output, except enc0b, which recomputes it
            // from x with enc0a (recomputed with it, see `choose`).
            out.append((bytes(cin, level: inLevel) + bytes(c, level: l), bytes(cin, level: inLevel)))
            out.append((2 * bytes(c, level: l), l == 0 ? 0 : bytes(c, level: l)))
        }
        for l in stride(from: shape.levels - 2, through: 0, by: -1) {
            let c = shape.channels(level: l), below = shape.channels(level: l + 1)
            // up(l) upsamples inside its convolution: it reads (and copies) the tensor before upsampling.
            out.append((bytes(below, level: l + 1) + bytes(c, level: l), bytes(below, level: l + 1)))
            out.append((bytes(2 * c, level: l) + bytes(c, level: l), bytes(c, level: l)))
        }
        let head = bytes(shape.channels(level: 0), level: 0)
        out.append((head, head))
        return out
    }

    /// The plan for `policy`: under a budget, the blocks that save the most are recomputed first
    /// until the estimate fits (or nothing more can be saved).
    public static func choose(_ policy: MemoryPolicy, shape: UNetConfig, input: [Int], splitBytes: Int = defaultSplitBytes) -> MemoryPlan {
        var plan = chooseRecomputed(policy, shape: shape, input: input)
        let e = estimate(shape, input: input)
        if input[0] > 1 { plan.split = Set(e.indices.filter { e[$0].kept >= splitBytes }) }
        for l in 0..<(shape.levels - 1) {
            // Decoder level l's up and concatenation blocks, in forward order after the encoder's 2L.
            let up = 2 * shape.levels + 2 * (shape.levels - 2 - l)
            guard [up, up + 1].allSatisfy({ plan.recomputes($0) && !plan.splitsExamples($0) }) else { continue }
            plan.recomputedBranches.insert(l)
            plan.keptBytes -= 4 * input[0] * shape.channels(level: l) * (input[2...].reduce(1, *) >> (3 * l))
        }
        // enc0a, enc0b, enc1a (0, 1, 2) and dec0 (the last block before the head).
        let skipReaders = shape.levels > 1 ? [0, 1, 2, e.count - 2] : []
        if !skipReaders.isEmpty, skipReaders.allSatisfy({ plan.recomputes($0) && plan.splitsExamples($0) }) {
            plan.recomputesSkip = true
            plan.keptBytes -= 4 * input[0] * shape.channels(level: 0) * input[2...].reduce(1, *)
        }
        return plan
    }

    private static func chooseRecomputed(_ policy: MemoryPolicy, shape: UNetConfig, input: [Int]) -> MemoryPlan {
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
                // enc0b (1) recomputes its input through enc0a (0), which therefore recomputes too.
                for j in i == 1 ? [0, 1] : [i] where !chosen.contains(j) {
                    chosen.insert(j)
                    kept -= e[j].kept - e[j].recomputed
                }
            }
            return MemoryPlan(recomputed: chosen, keptBytes: kept, keepAllBytes: all)
        }
    }
}
