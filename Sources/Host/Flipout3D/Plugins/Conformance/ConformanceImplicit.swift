// The reference for implicitly reparameterized samples: dx/dθ = -(∂F/∂θ)(x) / p(x), with F the
// CDF of the declared density, found by quadrature and central differences (never by the sampler).
import Foundation

extension ConformanceSuite {
    /// Gauss-Kronrod 7-15 on [-1, 1]: Kronrod nodes (x >= 0 half) and weights, and the Gauss
    /// weights of the 7 nodes among them (odd indices and 0).
    static let kronrodNodes = [0.991455371120812639206854697526329, 0.949107912342758524526189684047851, 0.864864423359769072789712788640926,
                               0.741531185599394439863864773280788, 0.586087235467691130294144845693013, 0.405845151377397166906606412076961,
                               0.207784955007898467600689403773245, 0.0]
    static let kronrodWeights = [0.022935322010529224963732008058970, 0.063092092629978553290700663189204, 0.104790010322250183839876322541518,
                                 0.140653259715525918745189590510238, 0.169004726639267902826583426598550, 0.190350578064785409913256402421014,
                                 0.204432940075298892414161999234649, 0.209482141084727828012999174891714]
    static let gaussWeights = [0.0, 0.129484966168869693270611432679082, 0.0, 0.279705391489276667901467771423780, 0.0,
                               0.381830050505118944950369775488975, 0.0, 0.417959183673469387755102040816327]

    /// ∫_a^b exp(log_prob(t)) dt at `point` by adaptive Gauss-Kronrod 7-15: every panel whose
    /// Kronrod and Gauss estimates differ is halved, level by level, one log_prob call per level
    /// (narrow mixture components and endpoint singularities get resolved; nodes never sit on an
    /// endpoint). Also a bound on the error that log_prob's Float output alone causes.
    func integral(_ a: Double, _ b: Double, _ point: [Float], _ what: String) throws -> (value: Double, rounding: Double) {
        var panels = (0..<16).map { (a + (b - a) * Double($0) / 16, a + (b - a) * Double($0 + 1) / 16) }
        var total = 0.0, rounding = 0.0
        for level in 0..<40 where !panels.isEmpty {
            var nodes: [Float] = []
            for (lo, hi) in panels {
                let c = (lo + hi) / 2, r = (hi - lo) / 2
                for (j, t) in Self.kronrodNodes.enumerated() {
                    nodes.append(Float(c - r * t))
                    if j < 7 { nodes.append(Float(c + r * t)) }
                }
            }
            let lp = try logProb(nodes, point.map { [$0] }, what)
            var refine: [(Double, Double)] = []
            var results: [(k: Double, err: Double, round: Double)] = []
            for (p, (lo, hi)) in panels.enumerated() {
                let r = (hi - lo) / 2
                var k = 0.0, g = 0.0, round = 0.0, at = p * 15
                for j in 0..<8 {
                    for side in 0..<(j < 7 ? 2 : 1) {
                        let l = lp[at]; at += 1
                        _ = side
                        guard l.isFinite else { continue }
                        let f = exp(Double(l))
                        k += r * Self.kronrodWeights[j] * f
                        g += r * Self.gaussWeights[j] * f
                        round += r * Self.kronrodWeights[j] * f * (abs(Double(l)) + 1) * Double(Float.ulpOfOne)
                    }
                }
                results.append((k, abs(k - g), round))
            }
            let estimate = total + results.reduce(0) { $0 + $1.k }
            for (p, res) in results.enumerated() {
                let (lo, hi) = panels[p]
                if level < 39 && res.err > 1e-9 * estimate + 1e-300 && Float((lo + hi) / 2) != Float(lo) && Float((lo + hi) / 2) != Float(hi) {
                    refine.append((lo, (lo + hi) / 2)); refine.append(((lo + hi) / 2, hi))
                } else {
                    total += res.k; rounding += res.round + res.err
                }
            }
            panels = refine.count > 4096 ? [] : refine
            if refine.count > 4096 { return (total, .infinity) }
        }
        return (total, rounding)
    }

    /// Where the upper tail beyond x ends: the support's edge (log_prob = -inf, bisected) or
    /// where the density is 60 nats below its value at x.
    func upperLimit(_ x: Float, _ point: [Float], spread: Double, _ what: String) throws -> Double? {
        let lx = Double(try logProb([x], point.map { [$0] }, what)[0])
        guard lx.isFinite else { return nil }
        var d = max(abs(Double(x)) * 1e-3, spread, 1e-6)
        var lastFinite = Double(x)
        for _ in 0..<80 {
            let t = Double(x) + d
            let lt = Double(try logProb([Float(t)], point.map { [$0] }, what)[0])
            if !lt.isFinite {
                var lo = lastFinite, hi = t
                for _ in 0..<60 {
                    let mid = (lo + hi) / 2
                    if Double(try logProb([Float(mid)], point.map { [$0] }, what)[0]).isFinite { lo = mid } else { hi = mid }
                }
                return hi
            }
            if lt < lx - 60 && d > 10 * spread { return t }
            lastFinite = t
            d *= 2
        }
        return nil
    }

    /// dx/dθ_k at the sample x by implicit differentiation of the declared density, at two steps
    /// (h and h/4), with the larger one's rounding noise; nil where the tail cannot be bounded
    /// or the density underflows.
    func implicitDerivative(_ x: Float, _ point: [Float], _ k: Int, spread: Double) throws -> (Double, Double, noise: Double)? {
        let what = "x=\(Self.short(x)), \(describe(point)) (implicit reference)"
        guard let upper = try upperLimit(x, point, spread: spread, what) else { return nil }
        let px = exp(Double(try logProb([x], point.map { [$0] }, what)[0]))
        guard px > 1e-300, px.isFinite else { return nil }
        var out: [Double] = [], noise = 0.0
        for rel in [1e-2, 2.5e-3] {
            var h = rel * stepScale(k, point[k], spread: spread)
            if let lo = lowerBound(k) { h = min(h, 16 * rel * (Double(point[k]) - lo)) }
            if let hi = upperBound(k) { h = min(h, 16 * rel * (hi - Double(point[k]))) }
            var plus = point, minus = point
            plus[k] = Float(Double(point[k]) + h); minus[k] = Float(Double(point[k]) - h)
            let width = Double(plus[k]) - Double(minus[k])
            guard width > 0 else { return nil }
            let tailPlus = try integral(Double(x), upper, plus, what), tailMinus = try integral(Double(x), upper, minus, what)
            // F = 1 - tail, so dx/dθ = -(∂F/∂θ)/p = (∂ tail/∂θ)/p.
            out.append((tailPlus.value - tailMinus.value) / width / px)
            noise = max(noise, (tailPlus.rounding + tailMinus.rounding) / width / px)
        }
        return (out[0], out[1], noise)
    }

    /// sample_vjp of an implicitly reparameterized family. Each partial must equal either the
    /// implicit derivative of the declared density, -(dF/dθ)/p at the sample (Figurnov et al.
    /// 2018; a mixture's component choice makes the sampler's own path piecewise constant), or
    /// the pathwise derivative of the sampler with its noise held fixed (a Beta drawn as
    /// G1/(G1 + G2) from two implicitly differentiated Gammas is that, and differs per draw
    /// from the Beta's own implicit derivative while being just as unbiased).
    func checkImplicitSampleVJP() throws -> String {
        var viaCDF = 0, viaPath = 0, total = 0
        for (j, point) in points.enumerated() {
            let n = 4, params = slotArrays(point, n: n), z = noise(n, stream: 100 + j), g = [Float](repeating: 1, count: n)
            let x = try sample(params, n: n, z, describe(point))
            let dp = try sampleVJP(params, n: n, z, x: x, g: g, describe(point))
            let spread = Self.spread(x)
            let pathwise = try slots.indices.map { k in
                try FiniteDifference.compare(analytic: dp[k].map(Double.init), values: params[k],
                                             scale: params[k].map { stepScale(k, $0, spread: spread) },
                                             lower: params[k].map { _ in lowerBound(k) }, upper: params[k].map { _ in upperBound(k) }) { pv in
                    var q = params; q[k] = pv
                    return try sample(q, n: n, z, describe(point)).map(Double.init)
                }
            }
            for i in 0..<n {
                // A draw that rounded onto the edge of the support (a Gamma at concentration 1e-3 underflows to 0) says nothing.
                guard Double(try logProb([x[i]], point.map { [$0] }, describe(point))[0]).isFinite else { continue }
                for k in slots.indices {
                    total += 1
                    if case .agrees = pathwise[k][i] { viaPath += 1; continue }
                    guard let (a, b, noise) = try implicitDerivative(x[i], point, k, spread: spread) else { continue }
                    let analytic = Double(dp[k][i]), magnitude = max(abs(analytic), abs(a), 1e-6 * max(abs(Double(x[i])), spread))
                    let error = abs(a - b) + noise
                    guard error < 0.05 * magnitude else { continue }  // the reference is too noisy here
                    if abs(analytic - b) <= 1e-2 * magnitude + 3 * error { viaCDF += 1; continue }
                    var path = "inconclusive"
                    if case .disagrees(let fd) = pathwise[k][i] { path = Self.short(fd) }
                    throw CheckFailure("sample_vjp: dx/d\(slots[k].name) = \(Self.short(analytic)), but the implicit derivative of the declared density, -(dF/d\(slots[k].name))/p at the sample, is \(Self.short(b)) and central differences of sample with its noise fixed give \(path) (x=\(Self.short(x[i])), \(describe(point))).")
                }
            }
        }
        guard viaCDF + viaPath > 0 else { throw CheckFailure("no reference for the implicit sample gradient was conclusive") }
        return "dx/d(each parameter) equals -(dF/dθ)/p of the declared density (quadrature) at \(viaCDF) and the sampler's pathwise derivative at \(viaPath) of \(total) pairs"
    }
}
