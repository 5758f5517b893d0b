// Instance normalisation (Ulyanov et al. 2016; nnU-Net's default for small batches) with a learned per-channel affine, optionally fused with the ReLU after it; forward and backward side by side.
import Foundation

/// What `InstanceNorm.backward` needs from its forward pass.
public struct InstanceNormSaved {
    /// (N, C, D, H, W): x̂ = (x − μ_nc) · rstd_nc.
    let normalized: Tensor
    /// (N·C): 1 / sqrt(σ²_nc + ε).
    let rstd: [Float]
    /// Whether the forward pass applied ReLU to its output (the mask is γ x̂ + β > 0, recomputed
    /// from x̂ bit for bit, so it is not stored).
    let relu: Bool
}

/// y_nc = γ_c · (x_nc − μ_nc) / sqrt(σ²_nc + ε) + β_c, with μ and σ² (biased) over the spatial voxels
/// of each (example, channel), as PyTorch's `InstanceNorm3d(affine=True)`, ε = 1e-5.
/// Statistics are per example, so training and inference behave the same and batch size 1 works.
///
/// With `relu: true` the layer is norm · ReLU in one pass (a U-Net block's norm and activation):
/// y = max(γ x̂ + β, 0), and backward masks dy itself, so no ReLU mask is stored.
/// Each (example, channel) plane is one work item, threaded (`Parallel.items`) and reduced in a
/// fixed order (blocks of `block` voxels in Float SIMD lanes, block sums in Double): the same bits
/// for every thread count.
public final class InstanceNorm {
    public let name: String
    public let channels: Int
    public let epsilon: Float = 1e-5
    /// (C) scale γ (initialised to 1) and shift β (initialised to 0), with their gradients.
    public let scale: Tensor, shift: Tensor
    public let scaleGradient: Tensor, shiftGradient: Tensor

    public init(name: String, channels: Int) {
        self.name = name; self.channels = channels
        scale = Tensor(shape: [channels]); scale.fill(1)
        shift = Tensor(shape: [channels])
        scaleGradient = Tensor(shape: [channels]); shiftGradient = Tensor(shape: [channels])
    }

    public var trainable: [NamedParameter] {
        [NamedParameter(name: "\(name).scale", value: scale, gradient: scaleGradient),
         NamedParameter(name: "\(name).shift", value: shift, gradient: shiftGradient)]
    }

    public func zeroGradients() { scaleGradient.zero(); shiftGradient.zero() }

    /// x (N, C, D, H, W) -> y (N, C, D, H, W), then max(y, 0) if `relu`.
    /// `consuming: true` lets the layer keep x̂ in x's storage (x must not be used afterwards):
    /// one activation-sized tensor less per block.
    public func forward(_ x: Tensor, relu: Bool = false, consuming: Bool = false) -> (y: Tensor, saved: InstanceNormSaved) {
        let y = Tensor(uninitializedShape: x.shape)
        return (y, run(x, xh: consuming ? x : Tensor(uninitializedShape: x.shape), y: y, relu: relu))
    }

    /// `forward`'s y (the same bits) written over x, nothing kept: for an output recomputed only to
    /// be read (a skip remade from x, `MemoryPlan.recomputesSkip`). Returns x.
    public func forwardInPlace(_ x: Tensor, relu: Bool) -> Tensor {
        _ = run(x, xh: x, y: x, relu: relu)
        return x
    }

    /// What `forward(x, relu:, consuming: true)` saves, without its output: x̂ written over x
    /// (the same bits), for a block that recomputes its activations in backward (`MemoryPlan`).
    public func standardize(_ x: Tensor, relu: Bool) -> InstanceNormSaved {
        run(x, xh: x, y: nil, relu: relu)
    }

    /// Statistics of x, x̂ into xh (may be x), and y = γ x̂ + β (then ReLU) into y unless nil (may
    /// be xh: each element's x̂ is written before its y, from registers).
    private func run(_ x: Tensor, xh: Tensor, y: Tensor?, relu: Bool) -> InstanceNormSaved {
        precondition(x.rank == 5 && x.shape[1] == channels, "\(name): input \(x.shape), expected (N, \(channels), D, H, W)")
        let v = x.shape[2...].reduce(1, *), planes = x.shape[0] * channels
        var rstd = [Float](repeating: 0, count: planes)
        let eps = Double(epsilon)
        rstd.withUnsafeMutableBufferPointer { rs in
            x.withUnsafeValues { xs in (y ?? xh).withUnsafeMutableValues { ys in xh.withUnsafeMutableValues { hs in
                scale.withUnsafeValues { gs in shift.withUnsafeValues { bs in
                    let (src, hat, r) = (xs.baseAddress!, hs.baseAddress!, rs.baseAddress!)
                    let dst: UnsafeMutablePointer<Float>? = y == nil ? nil : ys.baseAddress!
                    let (gp, bp) = (gs.baseAddress!, bs.baseAddress!)
                    Parallel.items(planes, elementsPerItem: v) { begin, end in
                        for nc in begin..<end {
                            let c = nc % channels, p = src + nc * v
                            let mean = PlaneMath.sum(p, v) / Double(v)
                            let m = Float(mean)
                            let variance = PlaneMath.centredSquares(p, v, m) / Double(v)
                            let rr = Float(1 / (variance + eps).squareRoot())
                            r[nc] = rr
                            if let dst {
                                PlaneMath.normalize(p, hat + nc * v, dst + nc * v, v, mean: m, rstd: rr, gamma: gp[c], beta: bp[c], relu: relu)
                            } else {
                                PlaneMath.standardize(p, hat + nc * v, v, mean: m, rstd: rr)
                            }
                        }
                    }
                } }
            } } }
        }
        return InstanceNormSaved(normalized: xh, rstd: rstd, relu: relu)
    }

    /// dy (N, C, D, H, W) -> dx (N, C, D, H, W); ADDS dγ = Σ dy'·x̂ and dβ = Σ dy', where dy' is dy
    /// masked by the ReLU when forward applied one. dx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ · x̂)) with
    /// ĝ = γ · dy'. `consuming: true` writes dx into dy's storage (dy must not be used afterwards).
    public func backward(_ dy: Tensor, _ saved: InstanceNormSaved, consuming: Bool = false) -> Tensor {
        dy.checkShape(saved.normalized.shape, "\(name).backward dy")
        let v = dy.shape[2...].reduce(1, *), planes = dy.shape[0] * channels
        let dx = consuming ? dy : Tensor(uninitializedShape: dy.shape)
        // Per plane (Σ dy', Σ dy'·x̂), added into the parameter gradients in plane order afterwards.
        var sums = [Double](repeating: 0, count: 2 * planes)
        let relu = saved.relu
        sums.withUnsafeMutableBufferPointer { ss in saved.rstd.withUnsafeBufferPointer { rs in
            dy.withUnsafeValues { gs in saved.normalized.withUnsafeValues { hs in dx.withUnsafeMutableValues { ds in
                scale.withUnsafeValues { gammas in shift.withUnsafeValues { betas in
                    let (g, hat, out, s, r) = (gs.baseAddress!, hs.baseAddress!, ds.baseAddress!, ss.baseAddress!, rs.baseAddress!)
                    let (gp, bp) = (gammas.baseAddress!, betas.baseAddress!)
                    Parallel.items(planes, elementsPerItem: v) { begin, end in
                        for nc in begin..<end {
                            let c = nc % channels, o = nc * v
                            let (sumG, sumGH) = PlaneMath.gradientSums(g + o, hat + o, v, gamma: gp[c], beta: bp[c], relu: relu)
                            s[2 * nc] = sumG; s[2 * nc + 1] = sumGH
                            let gamma = gp[c]
                            let meanG = Float(sumG / Double(v)) * gamma, meanGH = Float(sumGH / Double(v)) * gamma
                            PlaneMath.inputGradient(g + o, hat + o, out + o, v, rstd: r[nc], gamma: gamma, beta: bp[c],
                                                    meanG: meanG, meanGH: meanGH, relu: relu)
                        }
                    }
                } }
            } } }
        } }
        for nc in 0..<planes {
            let c = nc % channels
            scaleGradient[c] += Float(sums[2 * nc + 1])
            shiftGradient[c] += Float(sums[2 * nc])
        }
        return dx
    }
}

/// The per-plane passes of instance norm: SIMD16 over the voxels, blocks of `block` voxels summed
/// in Float lanes and the block sums in Double (a fixed order: the same bits on every machine).
enum PlaneMath {
    typealias V = SIMD16<Float>
    static let block = 2048

    @inline(__always) static func load(_ p: UnsafePointer<Float>) -> V { UnsafeRawPointer(p).loadUnaligned(as: V.self) }
    @inline(__always) static func store(_ v: V, _ p: UnsafeMutablePointer<Float>) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: V.self) }

    /// The ReLU of z: z where z > 0, else +0 (also for NaN), as `ReLU.forward`.
    @inline(__always) static func relu(_ z: V) -> V { z.replacing(with: 0, where: .!(z .> 0)) }
    @inline(__always) static func relu(_ z: Float) -> Float { z > 0 ? z : 0 }

    /// Σ p[i] over [0, v).
    static func sum(_ p: UnsafePointer<Float>, _ v: Int) -> Double {
        var total = 0.0, start = 0
        while start < v {
            let end = min(v, start + block)
            var acc = V(), i = start
            while i + 16 <= end { acc += load(p + i); i += 16 }
            var tail: Float = 0
            while i < end { tail += p[i]; i += 1 }
            total += Double(acc.sum()) + Double(tail)
            start = end
        }
        return total
    }

    /// Σ (p[i] − m)² over [0, v).
    static func centredSquares(_ p: UnsafePointer<Float>, _ v: Int, _ m: Float) -> Double {
        var total = 0.0, start = 0
        let mv = V(repeating: m)
        while start < v {
            let end = min(v, start + block)
            var acc = V(), i = start
            while i + 16 <= end { let d = load(p + i) - mv; acc += d * d; i += 16 }
            var tail: Float = 0
            while i < end { let d = p[i] - m; tail += d * d; i += 1 }
            total += Double(acc.sum()) + Double(tail)
            start = end
        }
        return total
    }

    /// hat = (x − m) · r; y = γ hat + β, then ReLU if `relu`.
    static func normalize(_ x: UnsafePointer<Float>, _ hat: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ v: Int,
                          mean m: Float, rstd r: Float, gamma g: Float, beta b: Float, relu useReLU: Bool) {
        let (mv, rv, gv, bv) = (V(repeating: m), V(repeating: r), V(repeating: g), V(repeating: b))
        var i = 0
        while i + 16 <= v {
            let h = (load(x + i) - mv) * rv
            store(h, hat + i)
            let z = gv * h + bv
            store(useReLU ? relu(z) : z, y + i)
            i += 16
        }
        while i < v {
            let h = (x[i] - m) * r
            hat[i] = h
            let z = g * h + b
            y[i] = useReLU ? relu(z) : z
            i += 1
        }
    }

    /// hat = (x − m) · r alone, as `normalize` computes it.
    static func standardize(_ x: UnsafePointer<Float>, _ hat: UnsafeMutablePointer<Float>, _ v: Int, mean m: Float, rstd r: Float) {
        let (mv, rv) = (V(repeating: m), V(repeating: r))
        var i = 0
        while i + 16 <= v { store((load(x + i) - mv) * rv, hat + i); i += 16 }
        while i < v { hat[i] = (x[i] - m) * r; i += 1 }
    }

    /// (Σ dy', Σ dy'·hat) with dy' = dy where γ hat + β > 0 (if `relu`), else dy.
    static func gradientSums(_ g: UnsafePointer<Float>, _ hat: UnsafePointer<Float>, _ v: Int,
                             gamma: Float, beta: Float, relu useReLU: Bool) -> (Double, Double) {
        let (gv, bv) = (V(repeating: gamma), V(repeating: beta))
        var sumG = 0.0, sumGH = 0.0, start = 0
        while start < v {
            let end = min(v, start + block)
            var a = V(), ah = V(), i = start
            while i + 16 <= end {
                let h = load(hat + i)
                var d = load(g + i)
                if useReLU { d = d.replacing(with: 0, where: .!(gv * h + bv .> 0)) }
                a += d; ah += d * h
                i += 16
            }
            var t: Float = 0, th: Float = 0
            while i < end {
                let h = hat[i]
                let d = !useReLU || gamma * h + beta > 0 ? g[i] : 0
                t += d; th += d * h
                i += 1
            }
            sumG += Double(a.sum()) + Double(t)
            sumGH += Double(ah.sum()) + Double(th)
            start = end
        }
        return (sumG, sumGH)
    }

    /// out = r · (γ dy' − meanG − hat · meanGH); out may be g itself.
    static func inputGradient(_ g: UnsafePointer<Float>, _ hat: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, _ v: Int,
                              rstd r: Float, gamma: Float, beta: Float, meanG: Float, meanGH: Float, relu useReLU: Bool) {
        let (rv, gv, bv, mg, mgh) = (V(repeating: r), V(repeating: gamma), V(repeating: beta), V(repeating: meanG), V(repeating: meanGH))
        var i = 0
        while i + 16 <= v {
            let h = load(hat + i)
            var d = load(g + i)
            if useReLU { d = d.replacing(with: 0, where: .!(gv * h + bv .> 0)) }
            store(rv * (gv * d - mg - h * mgh), out + i)
            i += 16
        }
        while i < v {
            let h = hat[i]
            let d = !useReLU || gamma * h + beta > 0 ? g[i] : 0
            out[i] = r * (gamma * d - meanG - h * meanGH)
            i += 1
        }
    }
}
