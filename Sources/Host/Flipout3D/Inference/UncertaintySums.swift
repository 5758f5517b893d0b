// Monte Carlo samples blended across windows, then summed per voxel and turned into predictive maps once at the end.
//
// Windows blend, samples aggregate. For Monte Carlo sample t (a draw of the weights, or one
// ensemble member's draw), its windows are blended with the Gaussian importance weights g_w:
//   p_t(v) = Σ_w g_w(v) p_{t,w}(v) / Σ_w g_w(v)        (WindowBlend)
// and only then does the sample enter the per-voxel sums (UncertaintySums):
//   S_k = Σ_t p_{t,k},   S_H = Σ_t H(p_t).
// At the end, over T samples:
//   E p_k = S_k / T                 (the predictive distribution)
//   H[E p] = −Σ_k E p_k ln E p_k   (predictive entropy: total uncertainty)
//   E H[p] = S_H / T                (expected entropy: aleatoric)
//   MI = H[E p] − E H[p] ≥ 0        (mutual information: epistemic)
// Disagreement between overlapping windows is blended away inside each sample, so it never counts
// as epistemic: a model without weight uncertainty (T = 1) has MI exactly 0 at every voxel.
// Averaging per-window MI maps, or counting each (window, sample) pair as a sample, would be wrong.
import Foundation

/// Uncertainty maps of one case on its output grid.
public struct PredictiveMaps {
    /// (K, D, H, W)
    public var probabilities: Tensor
    /// (D, H, W), nats
    public var predictiveEntropy: Tensor
    public var expectedEntropy: Tensor
    public var mutualInformation: Tensor
    /// Monte Carlo samples (pooled over ensemble members).
    public var draws: Int
    /// Windows per sample.
    public var windows: Int
    /// Per foreground class 1..<K, the Dice between the argmax label maps of two samples, pooled
    /// over all sample pairs: Σ_pairs 2|A_a ∩ A_b| / Σ_pairs (|A_a| + |A_b|) = Σ_v n_v(n_v − 1) / ((T − 1) Σ_v n_v),
    /// n_v = samples labelling v with the class. nil for T = 1 or a class no sample predicts.
    public var sampleDice: [Double?] = []
    /// (K, D, H, W) the predictive mean before temperature scaling, when a temperature was applied.
    public var untemperedProbabilities: Tensor?

    /// argmax_k E p_k per voxel (ties to the lower class), (D, H, W) as class indices.
    public var labels: [Int32] {
        let k = probabilities.shape[0], n = probabilities.count / k
        var out = [Int32](repeating: 0, count: n)
        for v in 0..<n {
            var best = probabilities.data[v]
            for c in 1..<k where probabilities.data[c * n + v] > best { best = probabilities.data[c * n + v]; out[v] = Int32(c) }
        }
        return out
    }
}

/// Monte Carlo samples' windows blended into p_t (K, D, H, W): Σ_w g_w p_{t,w} / Σ_w g_w, for up to
/// `samples` draws side by side (a network call gives one window's draws together).
/// The weight sums depend only on the window layout, so they are computed once; the probability
/// buffers are reused group after group.
public final class WindowBlend {
    /// (D, H, W)
    public let shape: [Int]
    public let classes: Int
    let sums: [Tensor]  // per sample (K, D, H, W)
    let weight: Tensor  // (D, H, W)

    /// The blend of windows of `grid` with importance `weights` (d, h, w), `samples` draws at a time.
    public init(grid: WindowGrid, classes: Int, weights: [Float], samples: Int = 1) {
        precondition(classes >= 2 && samples >= 1, "WindowBlend: classes \(classes), samples \(samples)")
        shape = grid.volume; self.classes = classes
        sums = (0..<samples).map { _ in Tensor(shape: [classes] + grid.volume) }
        weight = Tensor(shape: shape)
        for s in grid.starts {
            let origin = (0..<3).map { s[$0] - grid.padBefore[$0] }
            Self.visit(window: grid.window, origin: origin, shape: shape) { src, dst in weight.data[dst] += weights[src] }
        }
        for v in 0..<weight.count {
            precondition(weight.data[v] > 0, "WindowBlend: voxel \(v) is covered by no window")
        }
    }

    /// Calls body(window index, volume index) for every window voxel inside the volume.
    @inline(__always)
    static func visit(window: [Int], origin: [Int], shape: [Int], _ body: (Int, Int) -> Void) {
        let (d, h, w) = (window[0], window[1], window[2])
        let (D, H, W) = (shape[0], shape[1], shape[2])
        let x0 = max(0, -origin[2]), x1 = min(w, W - origin[2])
        guard x0 < x1 else { return }
        for z in 0..<d {
            let gz = origin[0] + z
            guard gz >= 0 && gz < D else { continue }
            for y in 0..<h {
                let gy = origin[1] + y
                guard gy >= 0 && gy < H else { continue }
                let src = (z * h + y) * w, dst = (gz * H + gy) * W + origin[2]
                for x in x0..<x1 { body(src + x, dst + x) }
            }
        }
    }

    /// Adds one window of sample 0 (see `add(_:rows:flip:weights:)`).
    public func add(_ p: UnsafePointer<Float>, window: [Int], origin: [Int], weights: [Float]) {
        add(p, window: window, rows: [(sample: 0, origin: origin)], flip: 0, weights: weights)
    }

    /// Adds windows of the current samples: row j of `p` (rows × (K, d, h, w)) is a prediction of
    /// the window at rows[j].origin (its first voxel in this grid; parts outside are skipped) for
    /// sample rows[j].sample, made on the window mirrored by `flip` (bit 0 = D, 1 = H, 2 = W),
    /// which is undone by index. `weights` (d, h, w) are the importance weights (already divided
    /// by the number of mirrorings). Threaded over slabs of the volume's D axis, so overlapping
    /// rows never write the same voxel concurrently.
    public func add(_ p: UnsafePointer<Float>, window: [Int], rows: [(sample: Int, origin: [Int])], flip: Int, weights: [Float]) {
        let (d, h, w) = (window[0], window[1], window[2]), wn = d * h * w
        let (D, H, W) = (shape[0], shape[1], shape[2]), n = D * H * W, k = classes
        let zLo = max(0, rows.map { $0.origin[0] }.min()!), zHi = min(D, rows.map { $0.origin[0] + d }.max()!)
        guard zLo < zHi else { return }
        let slabs = min(zHi - zLo, 8)
        let buffers = sums.map { $0.data }
        weights.withUnsafeBufferPointer { wb in
            let g = wb.baseAddress!
            DispatchQueue.concurrentPerform(iterations: slabs) { slab in
                let za = zLo + (zHi - zLo) * slab / slabs, zb = zLo + (zHi - zLo) * (slab + 1) / slabs
                for (j, r) in rows.enumerated() {
                    let o = r.origin, s = buffers[r.sample], pr = p + j * k * wn
                    let x0 = max(0, -o[2]), x1 = min(w, W - o[2]), z0 = max(za, o[0]), z1 = min(zb, o[0] + d)
                    let y0 = max(0, -o[1]), y1 = min(h, H - o[1])
                    guard x0 < x1 && z0 < z1 && y0 < y1 else { continue }
                    for gz in z0..<z1 {
                        let z = gz - o[0], pz = flip & 1 != 0 ? d - 1 - z : z
                        for y in y0..<y1 {
                            let gy = o[1] + y, py = flip & 2 != 0 ? h - 1 - y : y
                            let gw = g + (z * h + y) * w, dst = (gz * H + gy) * W + o[2], src = (pz * h + py) * w
                            for c in 0..<k {
                                let out = s + c * n + dst, q = pr + c * wn + src
                                if flip & 4 != 0 {
                                    for x in x0..<x1 { out[x] += gw[x] * q[w - 1 - x] }
                                } else {
                                    for x in x0..<x1 { out[x] += gw[x] * q[x] }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Sample i's blended probabilities p_t (K, D, H, W). The tensor is this blend's buffer: use
    /// it before the next `reset`, which starts the next group of samples.
    public func finishSample(_ i: Int = 0) -> Tensor {
        let n = weight.count, s = sums[i].data, wt = weight.data, k = classes
        DispatchQueue.concurrentPerform(iterations: UncertaintySums.chunks(n)) { chunk in
            let r = UncertaintySums.range(chunk, n)
            for c in 0..<k {
                let sc = s + c * n
                for v in r { sc[v] /= wt[v] }
            }
        }
        return sums[i]
    }

    /// Clears the first `count` buffers for the next group of samples.
    public func reset(_ count: Int = 1) {
        for s in sums.prefix(count) { s.data.update(repeating: 0, count: s.count) }
    }
}

/// Per-voxel sums over Monte Carlo samples p_t (each already blended across windows, and already
/// on the output grid): Σ_t p_t per class and Σ_t H(p_t).
public final class UncertaintySums {
    /// (D, H, W)
    public let shape: [Int]
    public let classes: Int
    public private(set) var samples = 0
    let sumP: Tensor   // (K, D, H, W)
    let sumH: Tensor   // (D, H, W)
    /// Per foreground class and voxel, the samples whose argmax is that class: (K − 1, D, H, W);
    /// with sigmoid outputs, per output the samples whose p exceeds 0.5: (K, D, H, W).
    var votes: [UInt16]
    /// Independent sigmoid outputs (regions): H(p) = Σ_k h(p_k), h the binary entropy, so
    /// H[E p], E H[p] and MI are sums over the outputs of their binary counterparts.
    public let sigmoidOutputs: Bool

    public init(shape: [Int], classes: Int, sigmoidOutputs: Bool = false) {
        precondition(shape.count == 3 && classes >= 2, "UncertaintySums: shape \(shape), classes \(classes)")
        self.shape = shape; self.classes = classes; self.sigmoidOutputs = sigmoidOutputs
        sumP = Tensor(shape: [classes] + shape); sumH = Tensor(shape: shape)
        votes = [UInt16](repeating: 0, count: (sigmoidOutputs ? classes : classes - 1) * shape.reduce(1, *))
    }

    /// Adds one sample p_t (K, D, H, W).
    public func add(_ p: Tensor) {
        p.checkShape([classes] + shape, "UncertaintySums.add")
        let n = sumH.count, k = classes
        precondition(samples < Int(UInt16.max), "UncertaintySums: more than \(UInt16.max) samples")
        let src = p.data, sp = sumP.data, sh = sumH.data, sigmoid = sigmoidOutputs
        votes.withUnsafeMutableBufferPointer { vb in
            let votes = vb.baseAddress!
            DispatchQueue.concurrentPerform(iterations: Self.chunks(n)) { chunk in
                for v in Self.range(chunk, n) {
                    var h = 0.0, best = 0, top = src[v]
                    for c in 0..<k {
                        let q = src[c * n + v]
                        sp[c * n + v] += q
                        h -= Entropy.term(Double(q))
                        if sigmoid {
                            h -= Entropy.term(1 - Double(q))
                            if q > 0.5 { votes[c * n + v] += 1 }
                        }
                        if q > top { top = q; best = c }
                    }
                    sh[v] += Float(h)
                    if !sigmoid && best > 0 { votes[(best - 1) * n + v] += 1 }
                }
            }
        }
        samples += 1
    }

    static func chunks(_ n: Int) -> Int { max(1, min(64, n / 4096)) }
    static func range(_ chunk: Int, _ n: Int) -> Range<Int> {
        let c = chunks(n)
        return (n * chunk / c)..<(n * (chunk + 1) / c)
    }

    /// The maps, computed once from the sums (this object's storage is reused: call once).
    /// H[E p] and E H[p] are rounded to Float before their difference, so one sample gives MI = 0 exactly.
    public func finish(windows: Int) -> PredictiveMaps {
        precondition(samples > 0, "UncertaintySums.finish: no samples added")
        let n = sumH.count, k = classes, t = Double(samples)
        let pe = Tensor(uninitializedShape: shape), mi = Tensor(uninitializedShape: shape)
        let sp = sumP.data, sh = sumH.data, ped = pe.data, mid = mi.data, sigmoid = sigmoidOutputs
        DispatchQueue.concurrentPerform(iterations: Self.chunks(n)) { chunk in
            for v in Self.range(chunk, n) {
                var hMean = 0.0
                for c in 0..<k {
                    let m = Double(sp[c * n + v]) / t
                    sp[c * n + v] = Float(m)
                    hMean -= Entropy.term(m) + (sigmoid ? Entropy.term(1 - m) : 0)
                }
                let h = Float(hMean), eh = Float(Double(sh[v]) / t)
                sh[v] = eh
                ped[v] = h
                mid[v] = max(h - eh, 0) // Jensen: H[E p] >= E H[p]; clamp rounding
            }
        }
        var maps = PredictiveMaps(probabilities: sumP, predictiveEntropy: pe, expectedEntropy: sumH, mutualInformation: mi,
                                  draws: samples, windows: windows)
        let rows = sigmoidOutputs ? 0..<k : 1..<k, shift = sigmoidOutputs ? 0 : 1
        maps.sampleDice = rows.map { c -> Double? in
            guard samples > 1 else { return nil }
            var pairs = 0.0, total = 0.0
            for v in 0..<n { let m = Double(votes[(c - shift) * n + v]); pairs += m * (m - 1); total += m }
            return total > 0 ? pairs / (Double(samples - 1) * total) : nil
        }
        return maps
    }
}
