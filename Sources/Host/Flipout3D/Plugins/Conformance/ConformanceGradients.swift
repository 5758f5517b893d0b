// Gradient checks: every VJP against central finite differences in Double, adding into sentinels,
// NULL outputs left alone, stride-0 broadcast, and n = 0.
import Foundation

/// Central finite differences of a Float-in, Float-out function, compared with an analytic value.
/// The steps shrink geometrically (2^-6 ... 2^-18 of the value's scale). A step is conclusive
/// when its rounding error, 3 ulp(f) / (2h), is small beside the derivative. A point AGREES if a
/// conclusive step's difference matches within a relative 3e-3 plus that rounding error. It
/// DISAGREES only if the last conclusive step misses by more than that plus the change since the
/// previous step (a bound on the truncation error, which shrinks with h^2): a large step's
/// truncation error is never mistaken for a wrong gradient. Otherwise it is inconclusive.
struct FiniteDifference {
    static let steps: [Double] = (0..<5).map { pow(2.0, -6.0 - 3.0 * Double($0)) }

    enum Verdict { case agrees, disagrees(best: Double), inconclusive }

    /// - f: the function of the perturbed vector (one value per scalar), in Double.
    /// - values: the point per scalar; scale: each value's step scale; lower/upper: bounds a step never crosses.
    static func compare(analytic: [Double], values: [Float], scale: [Double], lower: [Double?],
                        upper: [Double?] = [], _ f: ([Float]) throws -> [Double]) rethrows -> [Verdict] {
        let n = values.count
        var verdicts = [Verdict](repeating: .inconclusive, count: n)
        var previous = [Double?](repeating: nil, count: n)
        var open = Set(0..<n)
        for rel in steps where !open.isEmpty {
            var plus = values, minus = values
            for i in 0..<n {
                // Near a bound the step is a shrinking fraction of the distance to it, never a fixed one.
                var h = rel * scale[i]
                if let lo = lower[i] { h = min(h, 16 * rel * (Double(values[i]) - lo)) }
                if i < upper.count, let hi = upper[i] { h = min(h, 16 * rel * (hi - Double(values[i]))) }
                plus[i] = Float(Double(values[i]) + h); minus[i] = Float(Double(values[i]) - h)
            }
            let fp = try f(plus), fm = try f(minus)
            for i in open {
                let width = Double(plus[i]) - Double(minus[i])
                guard width > 0, fp[i].isFinite, fm[i].isFinite else { continue }
                let fd = (fp[i] - fm[i]) / width
                let rounding = 3 * Double(Float.ulpOfOne) * (abs(fp[i]) + abs(fm[i]) + 1e-30) / width
                let magnitude = max(abs(analytic[i]), abs(fd))
                guard rounding <= 0.05 * magnitude + 1e-4 else { continue }
                let miss = abs(analytic[i] - fd), tolerance = 3e-3 * magnitude + 3 * rounding + 1e-6
                if miss <= tolerance { verdicts[i] = .agrees; open.remove(i); continue }
                if let prev = previous[i], miss > tolerance + abs(fd - prev) { verdicts[i] = .disagrees(best: fd) }
                else { verdicts[i] = .inconclusive }
                previous[i] = fd
            }
        }
        return verdicts
    }
}

extension ConformanceSuite {
    /// A step scale per scalar for slot k at `point` (x and locations use the spread of `x`).
    func stepScale(_ k: Int?, _ v: Float, spread: Double) -> Double {
        guard let k else { return max(abs(Double(v)), spread) }
        switch slots[k].parameter.transform {
        case .identity: return max(abs(Double(v)), spread)
        case .softplus, .exp: return Double(v)
        case .sigmoid: return min(Double(v), 1 - Double(v))
        }
    }
    func lowerBound(_ k: Int?) -> Double? {
        guard let k else { return family.capabilities.contains(.positiveSupport) ? 0 : nil }
        switch slots[k].parameter.transform {
        case .identity: return nil
        case .softplus, .exp, .sigmoid: return 0
        }
    }
    func upperBound(_ k: Int?) -> Double? {
        guard let k else { return nil }
        return slots[k].parameter.transform == .sigmoid ? 1 : nil
    }

    static func spread(_ x: [Float]) -> Double {
        guard x.count > 1 else { return 1 }
        let m = x.reduce(0.0) { $0 + Double($1) } / Double(x.count)
        let v = x.reduce(0.0) { $0 + pow(Double($1) - m, 2) } / Double(x.count - 1)
        return max(sqrt(v), 1e-6)
    }

    /// Compares `analytic` (per scalar) with finite differences of `f` in slot k (nil: in `input`).
    /// Returns how many scalars were conclusive; throws naming the first disagreement.
    @discardableResult
    func expectDerivative(_ function: String, _ wrt: String, analytic: [Float], at values: [Float], slot k: Int?, spread: Double,
                          where point: (Int) -> String, _ f: ([Float]) throws -> [Double]) throws -> Int {
        let verdicts = try FiniteDifference.compare(
            analytic: analytic.map(Double.init), values: values,
            scale: values.map { stepScale(k, $0, spread: spread) },
            lower: values.map { _ in lowerBound(k) }, upper: values.map { _ in upperBound(k) }, f)
        var conclusive = 0
        for (i, v) in verdicts.enumerated() {
            switch v {
            case .agrees: conclusive += 1
            case .inconclusive: continue
            case .disagrees(let fd):
                throw CheckFailure("\(function): d/d\(wrt) = \(Self.short(analytic[i])) but central finite differences in Double give \(Self.short(fd)) at \(point(i)).")
            }
        }
        return conclusive
    }

    func checkLogProb() throws -> String {
        var count = 0
        for (j, point) in points.enumerated() {
            var x = canSample ? try sample(slotArrays(point, n: 8), n: 8, noise(8, stream: j), describe(point)) : try xs(point, j)
            // A positive draw that underflowed onto the edge (a Gamma at concentration 1e-3 gives 0 in float) is rounding, not a bug.
            if family.capabilities.contains(.positiveSupport) { x = x.filter { $0 != 0 && $0 != 1 } }
            let lp = try logProb(x, slotArrays(point, n: x.count), describe(point))
            count += lp.count
            if let i = lp.firstIndex(where: { $0 == .infinity }) { throw CheckFailure("log_prob is +inf at x=\(Self.short(x[i])), \(describe(point)).") }
            if canSample, let i = lp.firstIndex(where: { !$0.isFinite }) {
                throw CheckFailure("log_prob is \(lp[i]) at its own sample x=\(Self.short(x[i])), \(describe(point)): a sample must lie inside the support.")
            }
        }
        return "finite at \(count) values over \(points.count) parameter points (extremes included)"
    }

    func checkLogProbVJP() throws -> String {
        var conclusive = 0, total = 0
        for (j, point) in points.enumerated() {
            let x = try xs(point, j)
            guard !x.isEmpty else { continue }
            let n = x.count, params = slotArrays(point, n: n), g = [Float](repeating: 1, count: n), spread = Self.spread(x)
            let (dx, dp) = try logProbVJP(x, params, g: g, describe(point))
            let at: (Int) -> String = { "x=\(Self.short(x[$0])), \(self.describe(point))" }
            total += n * (slots.count + 1)
            conclusive += try expectDerivative("log_prob_vjp", "x", analytic: dx, at: x, slot: nil, spread: spread, where: at) { xv in
                try logProb(xv, params, describe(point)).map(Double.init)
            }
            for k in slots.indices {
                conclusive += try expectDerivative("log_prob_vjp", slots[k].name, analytic: dp[k], at: params[k], slot: k, spread: spread, where: at) { pv in
                    var q = params; q[k] = pv
                    return try logProb(x, q, describe(point)).map(Double.init)
                }
            }
        }
        guard conclusive > 0 else { throw CheckFailure("no finite difference was conclusive (rounding swamped every step)") }
        return "d/dx and \(slots.count) parameter partials agree with central differences at \(conclusive) of \(total) (value, point) pairs over \(points.count) points"
    }

    func checkSampleVJP() throws -> String {
        guard canSample else { throw CheckSkipped("no sample capability") }
        if family.capabilities.contains(.implicitReparameterization) { return try checkImplicitSampleVJP() }
        var conclusive = 0, total = 0
        for (j, point) in points.enumerated() {
            let n = 8, params = slotArrays(point, n: n), z = noise(n, stream: 100 + j), g = [Float](repeating: 1, count: n)
            let x = try sample(params, n: n, z, describe(point))
            let dp = try sampleVJP(params, n: n, z, x: x, g: g, describe(point))
            let spread = Self.spread(x)
            total += n * slots.count
            for k in slots.indices {
                conclusive += try expectDerivative("sample_vjp", slots[k].name, analytic: dp[k], at: params[k], slot: k, spread: spread,
                                                   where: { "noise #\($0), \(self.describe(point))" }) { pv in
                    var q = params; q[k] = pv
                    return try sample(q, n: n, z, describe(point)).map(Double.init)
                }
            }
        }
        guard conclusive > 0 else { throw CheckFailure("no finite difference was conclusive") }
        return "dx/d(each parameter) agrees with central differences of sample (same noise) at \(conclusive) of \(total) pairs"
    }

    func checkCenterVJP() throws -> String {
        guard canSample else { throw CheckSkipped("no sample capability (center is for posteriors)") }
        var conclusive = 0
        for point in points {
            let n = 1, params = slotArrays(point, n: n)
            let dp = try centerVJP(params, n: n, g: [1], describe(point))
            for k in slots.indices {
                conclusive += try expectDerivative("center_vjp", slots[k].name, analytic: dp[k], at: params[k], slot: k, spread: 1,
                                                   where: { _ in self.describe(point) }) { pv in
                    var q = params; q[k] = pv
                    return try center(q, n: n, describe(point)).map(Double.init)
                }
            }
        }
        return "d center/d(each parameter) agrees with central differences at \(conclusive) of \(points.count * slots.count) pairs"
    }

    // MARK: Outputs are added to, NULL outputs untouched, broadcast, n = 0

    /// The VJPs this family has, each returning its gradient outputs (x first for log_prob_vjp)
    /// given a prefill value and which slots are wanted.
    func vjps(_ point: [Float]) throws -> [(name: String, run: (Float, [Bool], Bool) throws -> [[Float]])] {
        let x = try xs(point, 7)
        guard !x.isEmpty else { throw CheckFailure("log_prob is -inf at every probe value at \(describe(point))") }
        let n = x.count, params = slotArrays(point, n: n)
        let g = (0..<n).map { Float(0.5 + 0.25 * Double($0 % 4)) }
        let what = describe(point)
        var out: [(String, (Float, [Bool], Bool) throws -> [[Float]])] = [
            ("log_prob_vjp", { fill, want, wantX in
                let r = try self.logProbVJP(x, params, g: g, fill: fill, wantX: wantX, want: want, what)
                return [wantX ? r.dx : []] + r.dp
            }),
        ]
        if canSample {
            let z = noise(n, stream: 9)
            let s = try sample(params, n: n, z, what)
            out.append(("sample_vjp", { fill, want, _ in [[]] + (try self.sampleVJP(params, n: n, z, x: s, g: g, fill: fill, want: want, what)) }))
            out.append(("center_vjp", { fill, want, _ in [[]] + (try self.centerVJP(params, n: n, g: g, fill: fill, want: want, what)) }))
        }
        return out
    }

    func checkAddNotOverwrite() throws -> String {
        let sentinel: Float = 3
        var names: [String] = []
        for (name, run) in try vjps(basePoint) {
            let all = [Bool](repeating: true, count: slots.count)
            let zero = try run(0, all, true), filled = try run(sentinel, all, true)
            for (k, (a, b)) in zip(zero, filled).enumerated() {
                for i in a.indices {
                    let added = Double(b[i]) - Double(sentinel)
                    guard abs(added - Double(a[i])) <= 4e-7 * (Double(sentinel) + abs(Double(a[i]))) * 4 + 1e-6 else {
                        let what = k == 0 ? "grad_x" : "the \(slots[k - 1].name) gradient"
                        throw CheckFailure("\(name) overwrites \(what) instead of adding to it: prefilled with \(Self.short(sentinel)), it holds \(Self.short(b[i])) where \(Self.short(sentinel)) + \(Self.short(a[i])) was due (scalar \(i)). VJPs must ADD (+=) into gradient buffers.")
                    }
                }
            }
            names.append(name)
        }
        return "\(names.joined(separator: ", ")) add into outputs prefilled with sentinels"
    }

    func checkNullGradients() throws -> String {
        var names: [String] = []
        for (name, run) in try vjps(basePoint) {
            let all = [Bool](repeating: true, count: slots.count)
            let full = try run(0, all, true)
            for k in -1..<slots.count {
                var want = all
                if k >= 0 { want[k] = false }
                note = " with \(k < 0 ? "grad_x" : "grad_params[\(k)] (\(slots[k].name))") = NULL"
                defer { note = "" }
                let r = try run(0, want, k >= 0)
                for j in 0...slots.count where j != k + 1 && !(k < 0 && j == 0) && !full[j].isEmpty {
                    guard r[j] == full[j] else {
                        throw CheckFailure("\(name): with \(k < 0 ? "grad_x" : slots[k].name + "'s gradient") NULL, the \(j == 0 ? "x" : slots[j - 1].name) gradient changed (\(r[j].prefix(3)) vs \(full[j].prefix(3))).")
                    }
                }
            }
            names.append(name)
        }
        return "\(names.joined(separator: ", ")) leave each NULL output alone (and the others unchanged)"
    }

    func checkBroadcast() throws -> String {
        let point = basePoint, x = try xs(point, 11)
        guard !x.isEmpty else { throw CheckSkipped("no finite log_prob at the base point") }
        let n = x.count, expanded = slotArrays(point, n: n), broadcast = point.map { [$0] }
        let what = describe(point) + " (stride 0)"
        let a = try logProb(x, expanded, what), b = try logProb(x, broadcast, what)
        for i in 0..<n where abs(Double(a[i]) - Double(b[i])) > 1e-6 * (1 + abs(Double(a[i]))) {
            throw CheckFailure("log_prob with stride-0 parameters gives \(b[i]) where the expanded form gives \(a[i]) (scalar \(i)).")
        }
        let g = [Float](repeating: 1, count: n)
        let ge = try logProbVJP(x, expanded, g: g, what), gb = try logProbVJP(x, broadcast, g: g, what)
        for k in slots.indices {
            let sum = ge.dp[k].reduce(0.0) { $0 + Double($1) }, got = Double(gb.dp[k][0])
            guard abs(sum - got) <= 1e-4 * (abs(sum) + 1) else {
                throw CheckFailure("log_prob_vjp into a stride-0 \(slots[k].name) gradient gives \(Self.short(got)); the sum over scalars of the expanded form is \(Self.short(sum)).")
            }
        }
        if canSample {
            let z = noise(n, stream: 12)
            let se = try sample(expanded, n: n, z, what), sb = try sample(broadcast, n: n, z, what)
            guard se == sb else { throw CheckFailure("sample with stride-0 parameters differs from the expanded form (\(sb.prefix(3)) vs \(se.prefix(3))).") }
            let ve = try sampleVJP(expanded, n: n, z, x: se, g: g, what), vb = try sampleVJP(broadcast, n: n, z, x: sb, g: g, what)
            for k in slots.indices {
                let sum = ve[k].reduce(0.0) { $0 + Double($1) }
                guard abs(sum - Double(vb[k][0])) <= 1e-4 * (abs(sum) + 1) else {
                    throw CheckFailure("sample_vjp into a stride-0 \(slots[k].name) gradient gives \(Self.short(vb[k][0])); the expanded sum is \(Self.short(sum)).")
                }
            }
        }
        return "stride-0 parameters equal the expanded form; stride-0 gradients receive the sum"
    }

    func checkEmpty() throws -> String {
        // Every buffer points AT a guard page: touching any element faults.
        let none = GuardedFloats(0)
        let p = none.pointer
        let ins = slots.map { _ in InArray(UnsafePointer(p), stride: 1) }
        let outs = slots.map { _ in OutArray(p, stride: 1) }
        probe("log_prob with n = 0 (buffers at a guard page)")
        try dist.logProb(n: 0, params: ins, x: p, out: p)
        probe("log_prob_vjp with n = 0 (buffers at a guard page)")
        try dist.logProbVJP(n: 0, params: ins, x: p, g: p, gradX: p, gradParams: outs)
        var names = ["log_prob", "log_prob_vjp"]
        if canSample {
            probe("sample with n = 0 (buffers at a guard page)")
            try dist.sample(n: 0, params: ins, normals: p, uniforms: p, out: p)
            probe("sample_vjp with n = 0 (buffers at a guard page)")
            try dist.sampleVJP(n: 0, params: ins, normals: p, uniforms: p, x: p, g: p, gradParams: outs)
            probe("center with n = 0 (buffers at a guard page)")
            try dist.center(n: 0, params: ins, out: p)
            probe("center_vjp with n = 0 (buffers at a guard page)")
            try dist.centerVJP(n: 0, params: ins, g: p, gradParams: outs)
            names += ["sample", "sample_vjp", "center", "center_vjp"]
        }
        return "\(names.joined(separator: ", ")) with n = 0 return OK without touching a buffer"
    }
}
