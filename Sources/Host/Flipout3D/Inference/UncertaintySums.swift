// Per-voxel sums over windows and Monte Carlo draws, turned into predictive maps once at the end.
//
// For every voxel v, over every window covering it and every draw t (weight w = the window's
// Gaussian importance at v):  S_k = Σ w·p_k,  S_H = Σ w·H(p),  W = Σ w.  At the end
//   E p_k = S_k / W                 (the predictive distribution)
//   H[E p] = −Σ_k E p_k ln E p_k   (predictive entropy: total uncertainty)
//   E H[p] = S_H / W                (expected entropy: aleatoric)
//   MI = H[E p] − E H[p] ≥ 0        (mutual information: epistemic)
// Averaging per-window MI maps instead would be wrong: MI is not linear in the samples.
import Foundation

/// Uncertainty maps of one case on its (prepared) grid.
public struct PredictiveMaps {
    /// (K, D, H, W)
    public var probabilities: Tensor
    /// (D, H, W), nats
    public var predictiveEntropy: Tensor
    public var expectedEntropy: Tensor
    public var mutualInformation: Tensor
    /// Draws per window (Monte Carlo samples, pooled over ensemble members).
    public var draws: Int
    public var windows: Int

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

public final class UncertaintySums {
    /// (D, H, W)
    public let shape: [Int]
    public let classes: Int
    let sumP: Tensor   // (K, D, H, W)
    let sumH: Tensor   // (D, H, W)
    let sumW: Tensor   // (D, H, W)

    public init(shape: [Int], classes: Int) {
        precondition(shape.count == 3 && classes >= 2, "UncertaintySums: shape \(shape), classes \(classes)")
        self.shape = shape; self.classes = classes
        sumP = Tensor(shape: [classes] + shape); sumH = Tensor(shape: shape); sumW = Tensor(shape: shape)
    }

    /// Adds one draw of one window: `p` points at (K, d, h, w) probabilities, `origin` is the
    /// window's first voxel in this grid (parts outside the grid are skipped), `weights` (d, h, w).
    public func add(_ p: UnsafePointer<Float>, window: [Int], origin: [Int], weights: [Float]) {
        let (d, h, w) = (window[0], window[1], window[2])
        let (D, H, W) = (shape[0], shape[1], shape[2])
        let wn = d * h * w, n = D * H * W, k = classes
        let x0 = max(0, -origin[2]), x1 = min(w, W - origin[2])
        guard x0 < x1 else { return }
        for z in 0..<d {
            let gz = origin[0] + z
            guard gz >= 0 && gz < D else { continue }
            for y in 0..<h {
                let gy = origin[1] + y
                guard gy >= 0 && gy < H else { continue }
                let src = (z * h + y) * w, dst = (gz * H + gy) * W + origin[2]
                for x in x0..<x1 {
                    let wt = weights[src + x]
                    var ent: Float = 0
                    for c in 0..<k {
                        let q = p[c * wn + src + x]
                        sumP.data[c * n + dst + x] += wt * q
                        if q > 0 { ent -= q * logf(q) }
                    }
                    sumH.data[dst + x] += wt * ent
                    sumW.data[dst + x] += wt
                }
            }
        }
    }

    /// The maps, computed once from the sums (this object's storage is reused: call once).
    public func finish(draws: Int, windows: Int) -> PredictiveMaps {
        let n = sumW.count, k = classes
        let pe = sumW, mi = Tensor(shape: shape) // H[E p] overwrites W voxel by voxel
        for v in 0..<n {
            let wsum = Double(sumW.data[v])
            precondition(wsum > 0, "UncertaintySums.finish: voxel \(v) was covered by no window")
            var hMean = 0.0
            for c in 0..<k {
                let m = Double(sumP.data[c * n + v]) / wsum
                sumP.data[c * n + v] = Float(m)
                hMean -= Entropy.term(m)
            }
            let eh = Double(sumH.data[v]) / wsum
            sumH.data[v] = Float(eh)
            pe.data[v] = Float(hMean)
            mi.data[v] = Float(max(hMean - eh, 0)) // Jensen: H[E p] >= E H[p]; clamp rounding
        }
        return PredictiveMaps(probabilities: sumP, predictiveEntropy: pe, expectedEntropy: sumH, mutualInformation: mi,
                              draws: draws, windows: windows)
    }
}
