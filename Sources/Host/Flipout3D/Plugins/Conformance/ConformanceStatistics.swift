// Statistical checks: samples against the declared density (moments, Kolmogorov-Smirnov), the
// center, a declared symmetry, and analytic KL against Monte Carlo.
import Foundation

extension ConformanceSuite {
    static let sampleCount = 20_000
    /// Kolmogorov-Smirnov critical value at alpha = 0.001 is 1.95 / sqrt(N); plus room for the
    /// numerical integration of the density.
    static var ksLimit: Double { 1.95 / sqrt(Double(sampleCount)) + 0.005 }

    /// Points for the statistical checks: the prior values and (posteriors) the declared defaults.
    var statisticalPoints: [[Float]] { canSample && defaultPoint != basePoint ? [basePoint, defaultPoint] : [basePoint] }

    func draws(_ point: [Float], stream: Int) throws -> [Float] {
        let n = Self.sampleCount
        return try sample(slotArrays(point, n: n), n: n, noise(n, stream: stream), describe(point))
    }

    /// The CDF of the declared density by the trapezoid rule on a fine grid over the samples'
    /// range (padded), NOT normalised: a wrong normalising constant shows as a KS distance.
    func numericalCDF(_ point: [Float], over sorted: [Float]) throws -> (grid: [Double], cdf: [Double], mean: Double, variance: Double) {
        var lo = Double(sorted.first!), hi = Double(sorted.last!)
        let pad = 0.05 * (hi - lo)
        lo = family.capabilities.contains(.positiveSupport) && lo - pad <= 0 ? lo / 2 : lo - pad
        hi += pad
        let m = 8001
        let grid = (0..<m).map { lo + (hi - lo) * Double($0) / Double(m - 1) }
        let lp = try logProb(grid.map { Float($0) }, point.map { [$0] }, describe(point))
        let pdf = lp.map { $0.isFinite ? exp(Double($0)) : 0 }
        var cdf = [Double](repeating: 0, count: m)
        var mean = 0.0, second = 0.0
        for i in 1..<m {
            let h = grid[i] - grid[i - 1]
            cdf[i] = cdf[i - 1] + 0.5 * h * (pdf[i] + pdf[i - 1])
            mean += 0.5 * h * (grid[i] * pdf[i] + grid[i - 1] * pdf[i - 1])
            second += 0.5 * h * (grid[i] * grid[i] * pdf[i] + grid[i - 1] * grid[i - 1] * pdf[i - 1])
        }
        let mass = max(cdf[m - 1], 1e-300)
        mean /= mass
        return (grid, cdf, mean, second / mass - mean * mean)
    }

    static func moments(_ x: [Float]) -> (mean: Double, variance: Double) {
        let m = x.reduce(0.0) { $0 + Double($1) } / Double(x.count)
        let v = x.reduce(0.0) { $0 + (Double($1) - m) * (Double($1) - m) } / Double(x.count - 1)
        return (m, v)
    }

    func checkSampleDistribution() throws -> String {
        guard canSample else { throw CheckSkipped("no sample capability") }
        var notes: [String] = []
        for (j, point) in statisticalPoints.enumerated() {
            let x = try draws(point, stream: 200 + j).sorted()
            if let bad = x.first(where: { !$0.isFinite }) { throw CheckFailure("sample returned \(bad) at \(describe(point))") }
            let (grid, cdf, mean, variance) = try numericalCDF(point, over: x)
            var d = 0.0, k = 0
            let n = Double(x.count)
            for (i, v) in x.enumerated() {
                let t = Double(v)
                while k + 1 < grid.count - 1 && grid[k + 1] < t { k += 1 }
                let w = (t - grid[k]) / (grid[k + 1] - grid[k])
                let f = cdf[k] + w * (cdf[k + 1] - cdf[k])
                d = max(d, abs(f - Double(i) / n), abs(f - Double(i + 1) / n))
            }
            let s = Self.moments(x)
            let sd = sqrt(max(s.variance, 0))
            guard d <= Self.ksLimit else {
                throw CheckFailure("\(x.count) samples at \(describe(point)) do not follow exp(log_prob): Kolmogorov-Smirnov distance \(String(format: "%.4f", d)) > \(String(format: "%.4f", Self.ksLimit)) (sample mean \(Self.short(s.mean)), density mean \(Self.short(mean)); integral of the density over the samples' range \(String(format: "%.4f", cdf[cdf.count - 1]))).")
            }
            guard abs(s.mean - mean) <= 5 * sd / sqrt(n) + 1e-3 * sd + 1e-7 else {
                throw CheckFailure("sample mean \(Self.short(s.mean)) differs from the density's mean \(Self.short(mean)) by more than 5 standard errors at \(describe(point)).")
            }
            guard abs(s.variance - variance) <= 0.1 * variance + 1e-12 else {
                throw CheckFailure("sample variance \(Self.short(s.variance)) differs from the density's \(Self.short(variance)) by more than 10% at \(describe(point)).")
            }
            notes.append("KS \(String(format: "%.4f", d)) at \(describe(point))")
        }
        return "\(Self.sampleCount) draws match exp(log_prob) (mean, variance; \(notes.joined(separator: "; ")); limit \(String(format: "%.4f", Self.ksLimit)))"
    }

    func checkCenter() throws -> String {
        guard canSample else { throw CheckSkipped("no sample capability (center is for posteriors)") }
        var notes: [String] = []
        for (j, point) in statisticalPoints.enumerated() {
            let x = try draws(point, stream: 300 + j)
            let c = Double(try center(slotArrays(point, n: 1), n: 1, describe(point))[0])
            let s = Self.moments(x), se = sqrt(s.variance / Double(x.count))
            guard abs(c - s.mean) <= 5 * se + 1e-6 * (1 + abs(c)) else {
                throw CheckFailure("center is \(Self.short(c)) but the sample mean is \(Self.short(s.mean)) ± \(Self.short(se)) at \(describe(point)) (the center is the mean; for a symmetric family also the location).")
            }
            notes.append("\(Self.short(c)) vs mean \(Self.short(s.mean)) ± \(Self.short(se))")
        }
        return "center equals the sample mean (\(notes.joined(separator: "; ")))"
    }

    func checkSymmetry() throws -> String {
        guard family.isSymmetric else { throw CheckSkipped("no symmetry claimed") }
        var notes: [String] = []
        for (j, point) in statisticalPoints.enumerated() {
            let c = Double(try center(slotArrays(point, n: 1), n: 1, describe(point))[0])
            let a = try draws(point, stream: 400 + 2 * j).map { Double($0) - c }.sorted()
            let b = try draws(point, stream: 401 + 2 * j).map { c - Double($0) }.sorted()
            let d = Self.twoSampleKS(a, b)
            let limit = 1.95 * sqrt(2.0 / Double(a.count)) + 0.002
            guard d <= limit else {
                throw CheckFailure("declares FLIPOUT_CAP_SYMMETRIC, but x - center and center - x are distributed differently at \(describe(point)): two-sample Kolmogorov-Smirnov distance \(String(format: "%.4f", d)) > \(String(format: "%.4f", limit)). Flipout's sign flips would change the posterior; drop the claim (use --estimator per-example).")
            }
            notes.append(String(format: "%.4f", d))
        }
        return "x - center and center - x agree (two-sample KS \(notes.joined(separator: ", ")) ≤ \(String(format: "%.4f", 1.95 * sqrt(2.0 / Double(Self.sampleCount)) + 0.002)))"
    }

    static func twoSampleKS(_ a: [Double], _ b: [Double]) -> Double {
        var i = 0, j = 0, d = 0.0
        while i < a.count && j < b.count {
            let t = min(a[i], b[j])
            while i < a.count && a[i] <= t { i += 1 }
            while j < b.count && b[j] <= t { j += 1 }
            d = max(d, abs(Double(i) / Double(a.count) - Double(j) / Double(b.count)))
        }
        return d
    }

    // MARK: KL

    /// The posterior families this prior has an analytic KL against that are loaded.
    func klPartners() throws -> [(DistributionFamily, Distribution)] {
        guard !family.klFamilies.isEmpty else { throw CheckSkipped("no analytic KL declared (the host uses Monte Carlo)") }
        let found = try family.klFamilies.compactMap { id in try partner(id).map { ($0, try $0.instantiate()) } }
        guard !found.isEmpty else { throw CheckSkipped("none of the posterior families \(family.klFamilies.joined(separator: ", ")) is loaded (add it with --plugin)") }
        return found
    }

    func kl(_ q: Distribution, _ qp: [[Float]], _ pp: [[Float]], n: Int, _ what: String) throws -> [Float] {
        probe("kl at \(what)")
        var out = [Float](repeating: 0, count: n)
        try withIn(qp) { qa in try withIn(pp) { pa in try dist.kl(n: n, posterior: q, qParams: qa, params: pa, out: &out) } }
        return out
    }

    func klVJP(_ q: Distribution, _ qp: [[Float]], _ pp: [[Float]], n: Int, _ what: String) throws -> (dq: [[Float]], dp: [[Float]]) {
        probe("kl_vjp at \(what)")
        let bq = qp.map { GuardedFloats([Float](repeating: 0, count: $0.count)) }, bp = pp.map { GuardedFloats([Float](repeating: 0, count: $0.count)) }
        try withIn(qp) { qa in try withIn(pp) { pa in
            try dist.klVJP(n: n, posterior: q, qParams: qa, params: pa, g: [Float](repeating: 1, count: n),
                           gradQ: bq.map { OutArray($0.pointer, stride: 1) }, gradParams: bp.map { OutArray($0.pointer, stride: 1) })
        } }
        return (bq.map { Array(UnsafeBufferPointer(start: $0.pointer, count: $0.count)) }, bp.map { Array(UnsafeBufferPointer(start: $0.pointer, count: $0.count)) })
    }

    /// Pairs (q point, p point) for KL: q at its defaults and prior values, p at this family's base point and grid.
    func klPoints(_ q: Distribution) -> [(q: [Float], p: [Float])] {
        let qDefault = q.slots.map { $0.parameter.defaultValue }, qPrior = q.slots.map { $0.parameter.priorValue }
        var out = [(qDefault, basePoint), (qPrior, basePoint)]
        for p in points.dropFirst() { out.append((qDefault, p)) }
        return out
    }

    func checkKL() throws -> String {
        var notes: [String] = []
        for (qf, q) in try klPartners() {
            for (j, (qp, pp)) in klPoints(q).enumerated() {
                let what = "q=\(qf.id)(\(zip(q.slots, qp).map { "\($0.name)=\(Self.short($1))" }.joined(separator: ", "))), p: \(describe(pp))"
                let analytic = Double(try kl(q, qp.map { [$0] }, pp.map { [$0] }, n: 1, what)[0])
                guard analytic >= -1e-6 else { throw CheckFailure("KL is negative (\(Self.short(analytic))) at \(what).") }
                guard j < 2 else { continue }
                // Monte Carlo: mean of log q(w) - log p(w) over w ~ q.
                let n = Self.sampleCount
                var s = RandomStream(seed: 20_261_201, layer: 500 + j, step: 0, purpose: .test)
                let z = s.normals(n * q.normalsPerScalar), u = s.uniforms(n * q.uniformsPerScalar)
                var w = [Float](repeating: 0, count: n), lq = w, lp = w
                probe("sample of the posterior \(qf.id) for a Monte Carlo KL at \(what)")
                try withIn(qp.map { [$0] }) { qa in try q.sample(n: n, params: qa, normals: z.isEmpty ? nil : z, uniforms: u.isEmpty ? nil : u, out: &w) }
                try withIn(qp.map { [$0] }) { qa in try q.logProb(n: n, params: qa, x: w, out: &lq) }
                lp = try logProb(w, pp.map { [$0] }, describe(pp))
                let d = (0..<n).map { Double(lq[$0]) - Double(lp[$0]) }
                let mc = d.reduce(0, +) / Double(n)
                let se = sqrt(d.reduce(0.0) { $0 + ($1 - mc) * ($1 - mc) } / Double(n - 1) / Double(n))
                guard abs(analytic - mc) <= 5 * se + 1e-3 * (1 + abs(mc)) else {
                    throw CheckFailure("analytic KL \(Self.short(analytic)) differs from Monte Carlo \(Self.short(mc)) ± \(Self.short(se)) (\(n) draws) at \(what).")
                }
                notes.append("\(Self.short(analytic)) vs MC \(Self.short(mc)) ± \(Self.short(se))")
            }
            if qf.id == family.id {
                for point in points {
                    let v = Double(try kl(q, point.map { [$0] }, point.map { [$0] }, n: 1, "q = p at \(describe(point))")[0])
                    guard abs(v) <= 1e-5 else { throw CheckFailure("KL(q || q) is \(Self.short(v)), not 0, at \(describe(point)).") }
                }
                notes.append("KL(q‖q) = 0 at \(points.count) points")
            }
        }
        return "KL ≥ 0 on the grid; \(notes.joined(separator: "; "))"
    }

    func checkKLVJP() throws -> String {
        var conclusive = 0
        for (qf, q) in try klPartners() {
            for (qp, pp) in klPoints(q) {
                let what = "q=\(qf.id)(\(zip(q.slots, qp).map { "\($0.name)=\(Self.short($1))" }.joined(separator: ", "))), p: \(describe(pp))"
                let qa = qp.map { [$0] }, pa = pp.map { [$0] }
                let (dq, dp) = try klVJP(q, qa, pa, n: 1, what)
                for k in q.slots.indices {
                    let t = q.slots[k].parameter.transform
                    let scale = t == .identity ? max(abs(Double(qp[k])), 1) : Double(qp[k])
                    let verdict = try FiniteDifference.compare(analytic: [Double(dq[k][0])], values: [qp[k]], scale: [scale],
                                                               lower: [t == .identity ? nil : 0]) { v in
                        var a = qa; a[k] = v
                        return try kl(q, a, pa, n: 1, what).map(Double.init)
                    }[0]
                    if case .disagrees(let fd) = verdict { throw CheckFailure("kl_vjp: dKL/d q.\(q.slots[k].name) = \(Self.short(dq[k][0])) but central differences give \(Self.short(fd)) at \(what).") }
                    if case .agrees = verdict { conclusive += 1 }
                }
                for k in slots.indices {
                    conclusive += try expectDerivative("kl_vjp", "p.\(slots[k].name)", analytic: dp[k], at: pa[k], slot: k, spread: 1, where: { _ in what }) { v in
                        var b = pa; b[k] = v
                        return try kl(q, qa, b, n: 1, what).map(Double.init)
                    }
                }
            }
        }
        return "dKL/dq and dKL/dp agree with central differences at \(conclusive) (parameter, point) pairs"
    }
}
