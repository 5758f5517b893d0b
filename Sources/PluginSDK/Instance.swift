// One created distribution: the buffer loops over n scalars that the C functions call into.
import PluginABI

/// The non-generic face of an instance, so the C trampolines need no generic context.
class AnyInstance {
    var slots: Int { 0 }
    var normals: Int { 0 }
    var uniforms: Int { 0 }
    func logProb(_ n: Int, _ p: UnsafePointer<flipout_in_array>, _ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>) throws {}
    func logProbVJP(_ n: Int, _ p: UnsafePointer<flipout_in_array>, _ x: UnsafePointer<Float>, _ g: UnsafePointer<Float>,
                    _ gx: UnsafeMutablePointer<Float>?, _ gp: UnsafePointer<flipout_out_array>?) throws {}
    func sample(_ n: Int, _ p: UnsafePointer<flipout_in_array>, _ z: UnsafePointer<Float>?, _ u: UnsafePointer<Float>?, _ x: UnsafeMutablePointer<Float>) throws {}
    func sampleVJP(_ n: Int, _ p: UnsafePointer<flipout_in_array>, _ z: UnsafePointer<Float>?, _ u: UnsafePointer<Float>?,
                   _ x: UnsafePointer<Float>, _ g: UnsafePointer<Float>, _ gp: UnsafePointer<flipout_out_array>?) throws {}
    func center(_ n: Int, _ p: UnsafePointer<flipout_in_array>, _ out: UnsafeMutablePointer<Float>) throws {}
    func centerVJP(_ n: Int, _ p: UnsafePointer<flipout_in_array>, _ g: UnsafePointer<Float>, _ gp: UnsafePointer<flipout_out_array>?) throws {}
    func kl(_ n: Int, _ family: String, _ q: UnsafePointer<flipout_in_array>, _ p: UnsafePointer<flipout_in_array>, _ out: UnsafeMutablePointer<Float>) throws {}
    func klVJP(_ n: Int, _ family: String, _ q: UnsafePointer<flipout_in_array>, _ p: UnsafePointer<flipout_in_array>,
               _ g: UnsafePointer<Float>, _ gq: UnsafePointer<flipout_out_array>?, _ gp: UnsafePointer<flipout_out_array>?) throws {}
}

/// Scratch for one call: per-scalar parameter values and partials in Double, and Double
/// accumulators for broadcast (stride-0) gradient slots, flushed once at the end.
private struct Scratch {
    let values: UnsafeMutablePointer<Double>
    let partials: UnsafeMutablePointer<Double>
    let sums: UnsafeMutablePointer<Double>
    let count: Int
    init(_ count: Int) {
        self.count = count
        values = .allocate(capacity: max(count, 1)); partials = .allocate(capacity: max(count, 1))
        sums = .allocate(capacity: max(count, 1)); sums.initialize(repeating: 0, count: max(count, 1))
    }
    func free() { values.deallocate(); partials.deallocate(); sums.deallocate() }
    var params: Params { Params(base: values, count: count) }
    var gradient: ParamGradient { ParamGradient(base: partials, count: count) }

    func gather(_ p: UnsafePointer<flipout_in_array>, _ i: Int) {
        for k in 0..<count { values[k] = Double(p[k].data[i * p[k].stride]) }
    }
    func clearPartials() { partials.update(repeating: 0, count: count) }
    /// The first wanted slot of `out` whose contribution g * partial_k is not finite in Float.
    func firstNonFinite(_ out: UnsafePointer<flipout_out_array>?, _ g: Double) -> (slot: Int, value: Double)? {
        guard let out else { return nil }
        for k in 0..<count where out[k].data != nil {
            let v = g * partials[k]
            if !Float(v).isFinite { return (k, v) }
        }
        return nil
    }
    /// Add g * partial_k into slot k of `out` (stride 0: into the Double sum).
    func scatter(_ out: UnsafePointer<flipout_out_array>?, _ i: Int, _ g: Double) {
        guard let out else { return }
        for k in 0..<count where out[k].data != nil {
            if out[k].stride == 0 { sums[k] += g * partials[k] } else { out[k].data[i * out[k].stride] += Float(g * partials[k]) }
        }
    }
    /// Adds the broadcast sums; returns the first slot whose sum is not finite in Float (nothing is added then).
    func flush(_ out: UnsafePointer<flipout_out_array>?) -> (slot: Int, value: Double)? {
        guard let out else { return nil }
        for k in 0..<count where out[k].data != nil && out[k].stride == 0 && !Float(sums[k]).isFinite { return (k, sums[k]) }
        for k in 0..<count where out[k].data != nil && out[k].stride == 0 { out[k].data[0] += Float(sums[k]) }
        return nil
    }
    var described: String { (0..<count).map { String(values[$0]) }.joined(separator: ", ") }
}

final class Instance<D: ScalarDistribution>: AnyInstance {
    let d: D
    /// The family's block kernels, unless it has none or the per-scalar loop is forced (`PluginExport.scalarLoopOnly`).
    let block: (any BlockDistribution)?
    init(_ d: D) {
        self.d = d
        block = PluginExport.scalarLoopOnly ? nil : d as? any BlockDistribution
    }
    override var slots: Int { d.parameterSlotCount }
    override var normals: Int { d.normalsPerScalar }
    override var uniforms: Int { d.uniformsPerScalar }

    /// The header's rule: a result that would not be finite is FLIPOUT_STATUS_DOMAIN_ERROR, never a
    /// NaN or an infinity with status OK. `value` is the Double result; its Float must be finite
    /// (log_prob alone may be -inf: x outside the support, or a log density below Float's range).
    private func checked(_ value: Double, _ what: String, _ i: Int, _ s: Scratch, x: Double? = nil, allowMinusInfinity: Bool = false) throws -> Float {
        let f = Float(value)
        if f.isFinite || (allowMinusInfinity && f == -.infinity && !value.isNaN) { return f }
        throw nonFinite(value, what, i, s, x: x)
    }

    private func nonFinite(_ value: Double, _ what: String, _ i: Int, _ s: Scratch, x: Double? = nil, q: Scratch? = nil) -> PluginError {
        let shown = value.isNaN ? "NaN" : value.isInfinite ? (value > 0 ? "+inf" : "-inf") : "\(value), beyond float range,"
        let at = x.map { "x = \($0), " } ?? ""
        let qs = q.map { "posterior parameters: \($0.described); " } ?? ""
        return PluginError.domain("\(D.family.id): \(what) is \(shown) at index \(i) (\(at)\(qs)parameters: \(s.described))")
    }

    private func slotName(_ k: Int) -> String {
        // Slots of parameters that repeat (mixture components) are named "loc[1]".
        let ps = D.family.parameters, slots = d.parameterSlotCount
        if ps.count == slots { return ps[k].name }
        if ps.allSatisfy({ $0.countHyperparameter != nil }) && slots % ps.count == 0 {
            let c = slots / ps.count
            return "\(ps[k / c].name)[\(k % c)]"
        }
        return "parameter slot \(k)"
    }

    /// Scatter g * partials into `out`, or DOMAIN_ERROR naming the gradient that is not finite.
    private func scatter(_ s: Scratch, _ out: UnsafePointer<flipout_out_array>?, _ i: Int, _ g: Double, _ what: String,
                         x: Double? = nil, q: Scratch? = nil, names: (Int) -> String) throws {
        if let (k, v) = s.firstNonFinite(out, g) { throw nonFinite(v, "\(what)/d \(names(k))", i, s, x: x, q: q) }
        s.scatter(out, i, g)
    }

    private func flush(_ s: Scratch, _ out: UnsafePointer<flipout_out_array>?, _ n: Int, _ what: String, names: (Int) -> String) throws {
        if let (k, v) = s.flush(out) {
            let shown = v.isNaN ? "NaN" : v.isInfinite ? (v > 0 ? "+inf" : "-inf") : "\(v), beyond float range"
            throw PluginError.domain("\(D.family.id): the sum over \(n) scalars of \(what)/d \(names(k)) (a stride-0 gradient) is \(shown)")
        }
    }

    /// The per-scalar loop: run `body` for the scalars start..<n with their parameters gathered
    /// into `s` and validated. Stride-0 gradient sums stay in `s` for the caller to flush.
    private func each(_ n: Int, _ p: UnsafePointer<flipout_in_array>, _ s: Scratch, from start: Int = 0, _ body: (Int, Scratch) throws -> Void) throws {
        for i in start..<n {
            s.gather(p, i)
            do { try d.validate(s.params) } catch PluginError.domain(let m) {
                throw PluginError.domain("\(m) (scalar \(i))")
            }
            try body(i, s)
        }
    }

    private func each(_ n: Int, _ p: UnsafePointer<flipout_in_array>, _ slots: Int, from start: Int = 0, _ body: (Int, Scratch) throws -> Void) throws {
        let s = Scratch(slots); defer { s.free() }
        try each(n, p, s, from: start, body)
    }

    /// x must be a number: log_prob(NaN) has no value (the header's "result that would not be finite").
    private func checkX(_ x: Double, _ i: Int, _ s: Scratch, _ what: String) throws {
        if x.isNaN { throw PluginError.domain("\(D.family.id): \(what) at x = NaN (index \(i), parameters: \(s.described)); x must be a number") }
    }

    override func logProb(_ n: Int, _ p: UnsafePointer<flipout_in_array>, _ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>) throws {
        let start = blocks(n, slots) { b, i0, m, k in
            let v = k.params(p, i0, m)
            return b.validate(block: v, m) && b.logProb(block: x + i0, v, m, k.values) && k.store(m, out + i0, allowMinusInfinity: true)
        }
        try each(n, p, slots, from: start) { i, s in
            let xi = Double(x[i])
            try checkX(xi, i, s, "log_prob")
            out[i] = try checked(d.logProb(xi, s.params), "log_prob", i, s, x: xi, allowMinusInfinity: true)
        }
    }

    override func logProbVJP(_ n: Int, _ p: UnsafePointer<flipout_in_array>, _ x: UnsafePointer<Float>, _ g: UnsafePointer<Float>,
                             _ gx: UnsafeMutablePointer<Float>?, _ gp: UnsafePointer<flipout_out_array>?) throws {
        let s = Scratch(slots); defer { s.free() }
        let start = blocks(n, slots) { b, i0, m, k in
            let v = k.params(p, i0, m), dp = k.partials(m)
            guard b.validate(block: v, m), b.logProbGradient(block: x + i0, v, m, k.values, dp) else { return false }
            // d log_prob/dx first (as the per-scalar loop checks it first), then the parameters'.
            let dx = k.values
            if gx != nil { for j in 0..<m { dx[j] *= Double(g[i0 + j]) } }
            guard gx == nil || Scratch.allFinite(dx, m), Scratch.allFinite(gp, dp, m, g + i0) else { return false }
            Scratch.scatter(gp, dp, i0, m, g + i0, s.sums)
            if let gx { for j in 0..<m { gx[i0 + j] += Float(dx[j]) } }
            return true
        }
        try each(n, p, s, from: start) { i, s in
            s.clearPartials()
            let xi = Double(x[i])
            try checkX(xi, i, s, "log_prob_vjp")
            let dx = d.logProbGradient(xi, s.params, s.gradient)
            let gi = Double(g[i])
            let gxi = try gx.map { _ in try checked(gi * dx, "g * d log_prob/dx", i, s, x: xi) }
            try scatter(s, gp, i, gi, "g * d log_prob", x: xi, names: slotName)
            if let gx, let gxi { gx[i] += gxi }
        }
        try flush(s, gp, n, "g * d log_prob", names: slotName)
    }

    override func sample(_ n: Int, _ p: UnsafePointer<flipout_in_array>, _ z: UnsafePointer<Float>?, _ u: UnsafePointer<Float>?, _ x: UnsafeMutablePointer<Float>) throws {
        let nz = normals, nu = uniforms
        guard nz == 0 || z != nil, nu == 0 || u != nil else { throw PluginError.invalidArgument("sample needs \(nz) normals and \(nu) uniforms per scalar") }
        let dummy = UnsafeMutablePointer<Float>.allocate(capacity: 1); defer { dummy.deallocate() }
        let start = blocks(n, slots) { b, i0, m, k in
            let v = k.params(p, i0, m)
            guard b.validate(block: v, m) else { return false }
            b.sample(block: v, m, normals: z.map { $0 + i0 * nz } ?? UnsafePointer(dummy), uniforms: u.map { $0 + i0 * nu } ?? UnsafePointer(dummy), k.values)
            return k.store(m, x + i0, allowMinusInfinity: false)
        }
        try each(n, p, slots, from: start) { i, s in
            x[i] = try checked(d.sample(s.params, normals: z.map { $0 + i * nz } ?? UnsafePointer(dummy),
                                        uniforms: u.map { $0 + i * nu } ?? UnsafePointer(dummy)), "sample", i, s)
            // A draw the noise made infinite (+inf normal) is caught above: samples are finite numbers.
        }
    }

    override func sampleVJP(_ n: Int, _ p: UnsafePointer<flipout_in_array>, _ z: UnsafePointer<Float>?, _ u: UnsafePointer<Float>?,
                            _ x: UnsafePointer<Float>, _ g: UnsafePointer<Float>, _ gp: UnsafePointer<flipout_out_array>?) throws {
        let nz = normals, nu = uniforms
        guard nz == 0 || z != nil, nu == 0 || u != nil else { throw PluginError.invalidArgument("sample_vjp needs \(nz) normals and \(nu) uniforms per scalar") }
        let dummy = UnsafeMutablePointer<Float>.allocate(capacity: 1); defer { dummy.deallocate() }
        let s = Scratch(slots); defer { s.free() }
        let start = blocks(n, slots) { b, i0, m, k in
            let v = k.params(p, i0, m), dp = k.partials(m)
            guard b.validate(block: v, m) else { return false }
            b.sampleGradient(block: x + i0, v, m, normals: z.map { $0 + i0 * nz } ?? UnsafePointer(dummy),
                             uniforms: u.map { $0 + i0 * nu } ?? UnsafePointer(dummy), dp)
            guard Scratch.allFinite(gp, dp, m, g + i0) else { return false }
            Scratch.scatter(gp, dp, i0, m, g + i0, s.sums)
            return true
        }
        try each(n, p, s, from: start) { i, s in
            s.clearPartials()
            d.sampleGradient(Double(x[i]), s.params, normals: z.map { $0 + i * nz } ?? UnsafePointer(dummy),
                             uniforms: u.map { $0 + i * nu } ?? UnsafePointer(dummy), s.gradient)
            try scatter(s, gp, i, Double(g[i]), "g * d sample", x: Double(x[i]), names: slotName)
        }
        try flush(s, gp, n, "g * d sample", names: slotName)
    }

    override func center(_ n: Int, _ p: UnsafePointer<flipout_in_array>, _ out: UnsafeMutablePointer<Float>) throws {
        let start = blocks(n, slots) { b, i0, m, k in
            let v = k.params(p, i0, m)
            guard b.validate(block: v, m) else { return false }
            b.center(block: v, m, k.values)
            return k.store(m, out + i0, allowMinusInfinity: false)
        }
        try each(n, p, slots, from: start) { i, s in out[i] = try checked(d.center(s.params), "center", i, s) }
    }

    override func centerVJP(_ n: Int, _ p: UnsafePointer<flipout_in_array>, _ g: UnsafePointer<Float>, _ gp: UnsafePointer<flipout_out_array>?) throws {
        let s = Scratch(slots); defer { s.free() }
        let start = blocks(n, slots) { b, i0, m, k in
            let v = k.params(p, i0, m), dp = k.partials(m)
            guard b.validate(block: v, m) else { return false }
            b.centerGradient(block: v, m, dp)
            guard Scratch.allFinite(gp, dp, m, g + i0) else { return false }
            Scratch.scatter(gp, dp, i0, m, g + i0, s.sums)
            return true
        }
        try each(n, p, s, from: start) { i, s in
            s.clearPartials()
            d.centerGradient(s.params, s.gradient)
            try scatter(s, gp, i, Double(g[i]), "g * d center", names: slotName)
        }
        try flush(s, gp, n, "g * d center", names: slotName)
    }

    private func qSlots(_ family: String) throws -> Int {
        guard let k = D.family.klFamilies.first(where: { $0.id == family }) else {
            throw PluginError.unsupported("\(D.family.id) has no analytic KL against posterior family \(family)")
        }
        return k.parameterSlots
    }

    override func kl(_ n: Int, _ family: String, _ q: UnsafePointer<flipout_in_array>, _ p: UnsafePointer<flipout_in_array>, _ out: UnsafeMutablePointer<Float>) throws {
        let qn = try qSlots(family)
        let start = blocks(n, slots, qSlots: qn) { b, i0, m, k in
            let v = k.params(p, i0, m), qv = k.qParams(q, i0, m)
            return b.validate(block: v, m) && b.kl(block: family, q: qv, p: v, m, k.values) && k.store(m, out + i0, allowMinusInfinity: false)
        }
        let qs = Scratch(qn); defer { qs.free() }
        try each(n, p, slots, from: start) { i, s in
            qs.gather(q, i)
            let v = try d.kl(qFamily: family, q: qs.params, p: s.params)
            if !Float(v).isFinite { throw nonFinite(v, "KL(\(family) || \(D.family.id))", i, s, q: qs) }
            out[i] = Float(v)
        }
    }

    override func klVJP(_ n: Int, _ family: String, _ q: UnsafePointer<flipout_in_array>, _ p: UnsafePointer<flipout_in_array>,
                        _ g: UnsafePointer<Float>, _ gq: UnsafePointer<flipout_out_array>?, _ gp: UnsafePointer<flipout_out_array>?) throws {
        let qs = Scratch(try qSlots(family)); defer { qs.free() }
        let s = Scratch(slots); defer { s.free() }
        let start = blocks(n, slots, qSlots: qs.count) { b, i0, m, k in
            let v = k.params(p, i0, m), qv = k.qParams(q, i0, m), dp = k.partials(m), dq = k.qPartials(m)
            guard b.validate(block: v, m), b.klGradient(block: family, q: qv, p: v, m, dq: dq, dp: dp),
                  Scratch.allFinite(gq, dq, m, g + i0), Scratch.allFinite(gp, dp, m, g + i0) else { return false }
            Scratch.scatter(gp, dp, i0, m, g + i0, s.sums)
            Scratch.scatter(gq, dq, i0, m, g + i0, qs.sums)
            return true
        }
        let kl = "g * d KL(\(family) || \(D.family.id))"
        let qName: (Int) -> String = { "posterior slot \($0)" }
        try each(n, p, s, from: start) { i, s in
            qs.gather(q, i)
            qs.clearPartials(); s.clearPartials()
            try d.klGradient(qFamily: family, q: qs.params, p: s.params, dq: qs.gradient, dp: s.gradient)
            let gi = Double(g[i])
            // Both checked before either is written.
            if let (k, v) = qs.firstNonFinite(gq, gi) { throw nonFinite(v, "\(kl)/d \(qName(k))", i, s, q: qs) }
            try scatter(s, gp, i, gi, kl, q: qs, names: { "prior \(self.slotName($0))" })
            qs.scatter(gq, i, gi)
        }
        try flush(qs, gq, n, kl, names: qName)
        try flush(s, gp, n, kl, names: { "prior \(self.slotName($0))" })
    }

    // MARK: Block kernels

    /// Runs `body(block kernels, i0, m, buffers)` over blocks of `BlockBuffers.capacity` scalars
    /// while it returns true; returns where the per-scalar loop must take over: n when every block
    /// ran, else the start of the block that failed (which wrote nothing a rerun would add twice:
    /// VJP blocks scatter only after every check passed; value blocks are overwritten).
    private func blocks(_ n: Int, _ slots: Int, qSlots: Int = 0, _ body: (any BlockDistribution, Int, Int, BlockBuffers) -> Bool) -> Int {
        guard let b = block, n > 0 else { return 0 }
        let k = BlockBuffers(slots: slots, qSlots: qSlots); defer { k.free() }
        var i0 = 0
        while i0 < n {
            let m = min(BlockBuffers.capacity, n - i0)
            if !body(b, i0, m, k) { return i0 }
            i0 += m
        }
        return n
    }
}

/// Buffers for the block kernels of one call: parameters and partials scalar-major in Double
/// (`ScalarBlock`), the posterior's too for KL, and one Double result per scalar.
private struct BlockBuffers {
    /// Scalars per block: its Double buffers (a few slots each) stay in L1.
    static let capacity = 256
    let slots: Int, qSlots: Int
    let storage: UnsafeMutablePointer<Double>
    init(slots: Int, qSlots: Int) {
        self.slots = slots; self.qSlots = qSlots
        storage = .allocate(capacity: Self.capacity * (2 * slots + 2 * qSlots + 1))
    }
    func free() { storage.deallocate() }
    var values: UnsafeMutablePointer<Double> { storage }
    private var p: UnsafeMutablePointer<Double> { storage + Self.capacity }
    private var dp: UnsafeMutablePointer<Double> { p + Self.capacity * slots }
    private var q: UnsafeMutablePointer<Double> { dp + Self.capacity * slots }
    private var dq: UnsafeMutablePointer<Double> { q + Self.capacity * qSlots }

    /// Scalars i0..<i0+m of the ABI's strided Float slots, in Double, scalar-major.
    private static func gather(_ a: UnsafePointer<flipout_in_array>, _ slots: Int, _ i0: Int, _ m: Int, _ v: UnsafeMutablePointer<Double>) -> ScalarBlock {
        for k in 0..<slots {
            let data = a[k].data!, stride = a[k].stride
            switch stride {
            case 0: let x = Double(data[0]); for j in 0..<m { v[j * slots + k] = x }
            case 1: let src = data + i0; for j in 0..<m { v[j * slots + k] = Double(src[j]) }
            default: for j in 0..<m { v[j * slots + k] = Double(data[(i0 + j) * stride]) }
            }
        }
        return ScalarBlock(base: v, slots: slots)
    }
    func params(_ a: UnsafePointer<flipout_in_array>, _ i0: Int, _ m: Int) -> ScalarBlock { Self.gather(a, slots, i0, m, p) }
    func qParams(_ a: UnsafePointer<flipout_in_array>, _ i0: Int, _ m: Int) -> ScalarBlock { Self.gather(a, qSlots, i0, m, q) }
    /// Zeroed partials for m scalars.
    func partials(_ m: Int) -> ScalarBlock { dp.update(repeating: 0, count: m * slots); return ScalarBlock(base: dp, slots: slots) }
    func qPartials(_ m: Int) -> ScalarBlock { dq.update(repeating: 0, count: m * qSlots); return ScalarBlock(base: dq, slots: qSlots) }

    /// out[j] = Float(values[j]); false if one is not finite (log_prob may be -inf, never NaN).
    func store(_ m: Int, _ out: UnsafeMutablePointer<Float>, allowMinusInfinity: Bool) -> Bool {
        var ok = true
        for j in 0..<m {
            let f = Float(values[j])
            out[j] = f
            ok = ok && (f.isFinite || (allowMinusInfinity && f == -.infinity))
        }
        return ok
    }
}

extension Scratch {
    /// Whether Float(v[j]) is finite for every j < m.
    static func allFinite(_ v: UnsafePointer<Double>, _ m: Int) -> Bool {
        var ok = true
        for j in 0..<m { ok = ok && Float(v[j]).isFinite }
        return ok
    }
    /// Whether every wanted g[j] * partial_k of a block is finite in Float (the per-scalar loop's check).
    static func allFinite(_ out: UnsafePointer<flipout_out_array>?, _ dp: ScalarBlock, _ m: Int, _ g: UnsafePointer<Float>) -> Bool {
        guard let out else { return true }
        let slots = dp.slots, v = dp.base
        var ok = true
        for k in 0..<slots where out[k].data != nil {
            for j in 0..<m { ok = ok && Float(Double(g[j]) * v[j * slots + k]).isFinite }
        }
        return ok
    }
    /// Adds g[j] * partial_k of a block into `out` as the per-scalar loop does (stride 0: into the Double sums, in scalar order).
    static func scatter(_ out: UnsafePointer<flipout_out_array>?, _ dp: ScalarBlock, _ i0: Int, _ m: Int, _ g: UnsafePointer<Float>, _ sums: UnsafeMutablePointer<Double>) {
        guard let out else { return }
        let slots = dp.slots, v = dp.base
        for k in 0..<slots where out[k].data != nil {
            let data = out[k].data!, stride = out[k].stride
            switch stride {
            case 0: var sum = sums[k]; for j in 0..<m { sum += Double(g[j]) * v[j * slots + k] }; sums[k] = sum
            case 1: let dst = data + i0; for j in 0..<m { dst[j] += Float(Double(g[j]) * v[j * slots + k]) }
            default: for j in 0..<m { data[(i0 + j) * stride] += Float(Double(g[j]) * v[j * slots + k]) }
            }
        }
    }
}
