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
    /// Add g * partial_k into slot k of `out` (stride 0: into the Double sum).
    func scatter(_ out: UnsafePointer<flipout_out_array>?, _ i: Int, _ g: Double) {
        guard let out else { return }
        for k in 0..<count where out[k].data != nil {
            if out[k].stride == 0 { sums[k] += g * partials[k] } else { out[k].data[i * out[k].stride] += Float(g * partials[k]) }
        }
    }
    func flush(_ out: UnsafePointer<flipout_out_array>?) {
        guard let out else { return }
        for k in 0..<count where out[k].data != nil && out[k].stride == 0 { out[k].data[0] += Float(sums[k]) }
    }
}

final class Instance<D: ScalarDistribution>: AnyInstance {
    let d: D
    init(_ d: D) { self.d = d }
    override var slots: Int { d.parameterSlotCount }
    override var normals: Int { d.normalsPerScalar }
    override var uniforms: Int { d.uniformsPerScalar }

    private func checked(_ value: Double, _ what: String, _ i: Int, _ s: Scratch) throws -> Float {
        if value.isNaN {
            let ps = (0..<s.count).map { String(s.values[$0]) }.joined(separator: ", ")
            throw PluginError.domain("\(D.family.id): \(what) is NaN at index \(i) (parameters: \(ps))")
        }
        return Float(value)
    }

    /// Run `body` for each scalar with its parameters gathered and validated.
    /// Broadcast gradient sums accumulated in the scratch are flushed into `flush` at the end.
    private func each(_ n: Int, _ p: UnsafePointer<flipout_in_array>, _ slots: Int, flush: UnsafePointer<flipout_out_array>? = nil,
                      _ body: (Int, Scratch) throws -> Void) throws {
        let s = Scratch(slots)
        defer { s.free() }
        for i in 0..<n {
            s.gather(p, i)
            do { try d.validate(s.params) } catch PluginError.domain(let m) {
                throw PluginError.domain("\(m) (scalar \(i))")
            }
            try body(i, s)
        }
        s.flush(flush)
    }

    override func logProb(_ n: Int, _ p: UnsafePointer<flipout_in_array>, _ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>) throws {
        try each(n, p, slots) { i, s in out[i] = try checked(d.logProb(Double(x[i]), s.params), "log_prob", i, s) }
    }

    override func logProbVJP(_ n: Int, _ p: UnsafePointer<flipout_in_array>, _ x: UnsafePointer<Float>, _ g: UnsafePointer<Float>,
                             _ gx: UnsafeMutablePointer<Float>?, _ gp: UnsafePointer<flipout_out_array>?) throws {
        try each(n, p, slots, flush: gp) { i, s in
            s.clearPartials()
            let dx = d.logProbGradient(Double(x[i]), s.params, s.gradient)
            let gi = Double(g[i])
            if let gx { gx[i] += try checked(gi * dx, "d log_prob/dx", i, s) }
            s.scatter(gp, i, gi)
        }
    }

    override func sample(_ n: Int, _ p: UnsafePointer<flipout_in_array>, _ z: UnsafePointer<Float>?, _ u: UnsafePointer<Float>?, _ x: UnsafeMutablePointer<Float>) throws {
        let nz = normals, nu = uniforms
        guard nz == 0 || z != nil, nu == 0 || u != nil else { throw PluginError.invalidArgument("sample needs \(nz) normals and \(nu) uniforms per scalar") }
        let dummy = UnsafeMutablePointer<Float>.allocate(capacity: 1); defer { dummy.deallocate() }
        try each(n, p, slots) { i, s in
            x[i] = try checked(d.sample(s.params, normals: z.map { $0 + i * nz } ?? UnsafePointer(dummy),
                                        uniforms: u.map { $0 + i * nu } ?? UnsafePointer(dummy)), "sample", i, s)
        }
    }

    override func sampleVJP(_ n: Int, _ p: UnsafePointer<flipout_in_array>, _ z: UnsafePointer<Float>?, _ u: UnsafePointer<Float>?,
                            _ x: UnsafePointer<Float>, _ g: UnsafePointer<Float>, _ gp: UnsafePointer<flipout_out_array>?) throws {
        let nz = normals, nu = uniforms
        guard nz == 0 || z != nil, nu == 0 || u != nil else { throw PluginError.invalidArgument("sample_vjp needs \(nz) normals and \(nu) uniforms per scalar") }
        let dummy = UnsafeMutablePointer<Float>.allocate(capacity: 1); defer { dummy.deallocate() }
        try each(n, p, slots, flush: gp) { i, s in
            s.clearPartials()
            d.sampleGradient(Double(x[i]), s.params, normals: z.map { $0 + i * nz } ?? UnsafePointer(dummy),
                             uniforms: u.map { $0 + i * nu } ?? UnsafePointer(dummy), s.gradient)
            for k in 0..<s.count where s.partials[k].isNaN { _ = try checked(.nan, "d sample/d parameter \(k)", i, s) }
            s.scatter(gp, i, Double(g[i]))
        }
    }

    override func center(_ n: Int, _ p: UnsafePointer<flipout_in_array>, _ out: UnsafeMutablePointer<Float>) throws {
        try each(n, p, slots) { i, s in out[i] = try checked(d.center(s.params), "center", i, s) }
    }

    override func centerVJP(_ n: Int, _ p: UnsafePointer<flipout_in_array>, _ g: UnsafePointer<Float>, _ gp: UnsafePointer<flipout_out_array>?) throws {
        try each(n, p, slots, flush: gp) { i, s in
            s.clearPartials()
            d.centerGradient(s.params, s.gradient)
            s.scatter(gp, i, Double(g[i]))
        }
    }

    private func qSlots(_ family: String) throws -> Int {
        guard let k = D.family.klFamilies.first(where: { $0.id == family }) else {
            throw PluginError.unsupported("\(D.family.id) has no analytic KL against posterior family \(family)")
        }
        return k.parameterSlots
    }

    override func kl(_ n: Int, _ family: String, _ q: UnsafePointer<flipout_in_array>, _ p: UnsafePointer<flipout_in_array>, _ out: UnsafeMutablePointer<Float>) throws {
        let qs = Scratch(try qSlots(family)); defer { qs.free() }
        try each(n, p, slots) { i, s in
            qs.gather(q, i)
            out[i] = try checked(try d.kl(qFamily: family, q: qs.params, p: s.params), "KL", i, s)
        }
    }

    override func klVJP(_ n: Int, _ family: String, _ q: UnsafePointer<flipout_in_array>, _ p: UnsafePointer<flipout_in_array>,
                        _ g: UnsafePointer<Float>, _ gq: UnsafePointer<flipout_out_array>?, _ gp: UnsafePointer<flipout_out_array>?) throws {
        let qs = Scratch(try qSlots(family)); defer { qs.free() }
        try each(n, p, slots, flush: gp) { i, s in
            qs.gather(q, i)
            qs.clearPartials(); s.clearPartials()
            try d.klGradient(qFamily: family, q: qs.params, p: s.params, dq: qs.gradient, dp: s.gradient)
            let gi = Double(g[i])
            qs.scatter(gq, i, gi)
            s.scatter(gp, i, gi)
        }
        qs.flush(gq)
    }
}
