// The non-finite probe of `flipout plugins check`: denormals, the largest floats, ±inf and NaN in every
// input of every function. The header's rule: no call returns a NaN or an infinity with status OK
// (a result that would not be finite is FLIPOUT_STATUS_DOMAIN_ERROR); and at ordinary parameters a
// posterior samples, with its gradient, for every noise value the host's generator can draw.
import Foundation

/// The inputs the probe sends.
enum ExtremeInputs {
    /// x for log_prob and its VJP: zeros, denormals, the edges of (0, 1), ordinary values, huge, ±inf, NaN.
    static let x: [Float] = [0, -0.0, .leastNonzeroMagnitude, -.leastNonzeroMagnitude, 1e-40, .leastNormalMagnitude, 1e-30, 1e-7,
                             0.1, 0.5, 1 - .ulpOfOne / 2, 1, 2, -0.1, -2, 1e20, -1e20,
                             .greatestFiniteMagnitude, -.greatestFiniteMagnitude, .infinity, -.infinity, .nan]
    static let normals: [Float] = [0, 1, -1, 8, -8, 1e20, -1e20, .greatestFiniteMagnitude, -.greatestFiniteMagnitude, .infinity, -.infinity, .nan]
    static let uniforms: [Float] = [.leastNonzeroMagnitude, 1e-40, .leastNormalMagnitude, 1e-30, 6e-8, 0.5, 1 - .ulpOfOne / 2,
                                    0, 1, -0.5, 1.5, .infinity, .nan]
    /// Upstream gradients g of the VJPs.
    static let g: [Float] = [1, -0.5, 0, 1e30, -1e30, .infinity, .nan]
    /// Noise the host's generator draws (RandomStream): uniforms clamped to [least normal float,
    /// 1 - 2^-24]; Box-Muller normals of 32-bit uniforms stay within ±6.7.
    static let hostUniforms: [Float] = [.leastNormalMagnitude, 1e-30, 1e-10, 6e-8, 0.5, 1 - .ulpOfOne / 2]
    static let hostNormals: [Float] = [0, 1, -1, 6.5, -6.5]

    /// Values of a parameter: its edges, denormals, huge, ±inf and NaN (invalid ones included: they must be refused or finite).
    static func parameter(_ t: ParameterTransform) -> [Float] {
        switch t {
        case .identity:
            return [0, .leastNonzeroMagnitude, -.leastNonzeroMagnitude, 1e-40, -1e-37, 1e20, -1e20,
                    .greatestFiniteMagnitude, -.greatestFiniteMagnitude, .infinity, -.infinity, .nan]
        case .softplus, .exp:
            return [.leastNonzeroMagnitude, 1e-40, .leastNormalMagnitude, 1e-30, 1e-7, 1e7, 1e20, .greatestFiniteMagnitude,
                    0, -1, .infinity, .nan]
        case .sigmoid:
            return [0, .leastNonzeroMagnitude, 1e-40, 1e-30, 1e-7, 1 - .ulpOfOne / 2, 1, 2, -.infinity, .nan]
        }
    }
}

/// Counts and the violations one probe run found.
struct ExtremesTally {
    var calls = 0, finite = 0, refused = 0
    /// Calls per ABI function, in the order first called.
    var perFunction: [(String, Int)] = []
    var violations: [String] = []
    var refusedOrdinary: [String] = []
}

extension ConformanceSuite {
    /// A call with n = 1 under the header's rule: its outputs when OK and finite (log_prob may be
    /// -inf: x outside the support), nil when refused with an error status; a non-finite output
    /// with status OK is a violation.
    func underRule(_ tally: inout ExtremesTally, _ function: String, _ at: @autoclosure () -> String, minusInfinity: Bool = false,
                   _ call: () throws -> [Float]) -> [Float]? {
        tally.calls += 1
        if let i = tally.perFunction.firstIndex(where: { $0.0 == function }) { tally.perFunction[i].1 += 1 } else { tally.perFunction.append((function, 1)) }
        do {
            let out = try call()
            if let bad = out.first(where: { !($0.isFinite || (minusInfinity && $0 == -.infinity)) }) {
                tally.violations.append("\(function) returned \(bad) with status OK at \(at())")
                return nil
            }
            tally.finite += 1
            return out
        } catch let e as PluginCallError where e.status == PluginCallError.nonFinite {
            tally.violations.append("\(function) returned a non-finite value with status OK at \(at()) (\(e.message))")
        } catch {
            tally.refused += 1
        }
        return nil
    }

    func describe(_ slots: [ParameterSlot], _ point: [Float]) -> String {
        zip(slots, point).map { "\($0.name)=\(Self.short($1))" }.joined(separator: ", ")
    }

    /// The base point, the posterior defaults, each slot alone at each extreme, and every positive
    /// slot at once at each positive extreme (Beta(1e-30, 1e-30): both shapes small together).
    func extremePoints(_ slots: [ParameterSlot], base: [Float]) -> [[Float]] {
        var out = [base]
        for k in slots.indices {
            for v in ExtremeInputs.parameter(slots[k].parameter.transform) { var p = base; p[k] = v; out.append(p) }
        }
        let positive = slots.indices.filter { [.softplus, .exp].contains(slots[$0].parameter.transform) }
        if positive.count > 1 {
            for v in ExtremeInputs.parameter(.softplus) {
                var p = base
                for k in positive { p[k] = v }
                out.append(p)
            }
        }
        return out
    }

    /// The grid of ordinary valid points, plus every positive slot at once at each grid value.
    var ordinaryPoints: [[Float]] {
        var out = points
        let positive = slots.indices.filter { [.softplus, .exp].contains(slots[$0].parameter.transform) }
        if positive.count > 1 {
            for v: Float in [1e-3, 0.05, 1, 30] {
                var p = basePoint
                for k in positive { p[k] = v }
                out.append(p)
            }
        }
        return out
    }

    /// Noise for one scalar: every value at `e`, or only the first at `e` (the rest ordinary).
    func noiseVariants(_ normals: [Float], _ uniforms: [Float]) -> [(z: [Float], u: [Float], what: String)] {
        let nz = dist.normalsPerScalar, nu = dist.uniformsPerScalar
        let zOrdinary = [Float](repeating: 0.3, count: nz), uOrdinary = [Float](repeating: 0.5, count: nu)
        var out: [([Float], [Float], String)] = [(zOrdinary, uOrdinary, "ordinary noise")]
        if nz > 0 {
            for e in normals {
                out.append(([Float](repeating: e, count: nz), uOrdinary, "normals \(Self.short(e))"))
                if nz > 1 { var z = zOrdinary; z[0] = e; out.append((z, uOrdinary, "first normal \(Self.short(e))")) }
            }
        }
        if nu > 0 {
            for e in uniforms {
                out.append((zOrdinary, [Float](repeating: e, count: nu), "uniforms \(Self.short(e))"))
                if nu > 1 { var u = uOrdinary; u[0] = e; out.append((zOrdinary, u, "first uniform \(Self.short(e))")) }
            }
        }
        return out
    }

    func checkExtremes() throws -> String {
        var t = ExtremesTally()
        let pts = extremePoints(slots, base: canSample ? defaultPoint : basePoint) + (canSample && defaultPoint != basePoint ? [basePoint] : [])
        let noise = canSample ? noiseVariants(ExtremeInputs.normals, ExtremeInputs.uniforms) : []
        for point in pts {
            let at = describe(point), p = point.map { [$0] }
            probe("log_prob and log_prob_vjp at \(at) for \(ExtremeInputs.x.count) x values (denormal, huge, ±inf, NaN)")
            for x in ExtremeInputs.x {
                _ = underRule(&t, "log_prob", "x=\(Self.short(x)), \(at)", minusInfinity: true) { try rawLogProb([x], p) }
            }
            for g in ExtremeInputs.g {
                for x in ExtremeInputs.x {
                    _ = underRule(&t, "log_prob_vjp", "x=\(Self.short(x)), g=\(Self.short(g)), \(at)") {
                        let r = try rawLogProbVJP([x], p, g: [g]); return r.dx + r.dp.flatMap { $0 }
                    }
                }
            }
            guard canSample else { continue }
            probe("sample, sample_vjp, center and center_vjp at \(at) with \(noise.count) noise settings (denormal, ±inf, NaN)")
            let sampled = noise.map { (z, u, what) in underRule(&t, "sample", "\(what), \(at)") { try rawSample(p, z, u) } }
            for g in ExtremeInputs.g {
                for ((z, u, what), x) in zip(noise, sampled) {
                    _ = underRule(&t, "sample_vjp", "\(what), x=\(x.map { Self.short($0[0]) } ?? "0.5"), g=\(Self.short(g)), \(at)") {
                        try rawSampleVJP(p, z, u, x: x ?? [0.5], g: [g]).flatMap { $0 }
                    }
                }
            }
            let ordinary = noise[0]
            for x in ExtremeInputs.x {
                _ = underRule(&t, "sample_vjp", "x=\(Self.short(x)) (not the sample), ordinary noise, \(at)") {
                    try rawSampleVJP(p, ordinary.z, ordinary.u, x: [x], g: [1]).flatMap { $0 }
                }
            }
            _ = underRule(&t, "center", at) { try rawCenter(p) }
            for g in ExtremeInputs.g {
                _ = underRule(&t, "center_vjp", "g=\(Self.short(g)), \(at)") { try rawCenterVJP(p, g: [g]).flatMap { $0 } }
            }
        }
        if !family.klFamilies.isEmpty, let partners = try? klPartners() {
            for (qf, q) in partners {
                let qBase = q.slots.map { $0.parameter.defaultValue }
                // q at its extremes against p at its base, then p at its extremes against q at its defaults.
                let pairs = extremePoints(q.slots, base: qBase).map { ($0, basePoint) } + pts.map { (qBase, $0) }
                probe("kl and kl_vjp from \(qf.id) at \(pairs.count) (q, p) pairs (denormal, huge, ±inf, NaN)")
                for (qp, pp) in pairs {
                    let at = "q=\(qf.id)(\(describe(q.slots, qp))), p: \(describe(pp))"
                    _ = underRule(&t, "kl", at) { try rawKL(q, qp.map { [$0] }, pp.map { [$0] }) }
                    for g in ExtremeInputs.g {
                        _ = underRule(&t, "kl_vjp", "g=\(Self.short(g)), \(at)") {
                            let r = try rawKLVJP(q, qp.map { [$0] }, pp.map { [$0] }, g: [g]); return r.dq.flatMap { $0 } + r.dp.flatMap { $0 }
                        }
                    }
                }
            }
        }
        var ordinaryCount = 0
        if canSample {
            let hostNoise = noiseVariants(ExtremeInputs.hostNormals, ExtremeInputs.hostUniforms)
            for point in ordinaryPoints {
                let at = describe(point), p = point.map { [$0] }
                probe("sample and sample_vjp at ordinary \(at) with \(hostNoise.count) noise settings the host draws")
                for (z, u, what) in hostNoise {
                    ordinaryCount += 1
                    guard let x = underRule(&t, "sample", "\(what), \(at)", { try rawSample(p, z, u) }) else {
                        t.refusedOrdinary.append("sample at \(at) with \(what): \(refusal { try rawSample(p, z, u) })")
                        continue
                    }
                    if underRule(&t, "sample_vjp", "\(what), x=\(Self.short(x[0])), \(at)", { try rawSampleVJP(p, z, u, x: x, g: [1]).flatMap { $0 } }) == nil {
                        t.refusedOrdinary.append("sample_vjp at \(at) with \(what), x=\(Self.short(x[0])): \(refusal { try rawSampleVJP(p, z, u, x: x, g: [1]).flatMap { $0 } })")
                    }
                }
            }
        }
        if let first = t.violations.first {
            throw CheckFailure("\(t.violations.count) of \(t.calls) calls returned NaN or an infinity with status OK; first: \(first). A result that would not be finite must be FLIPOUT_STATUS_DOMAIN_ERROR (flipout_plugin.h, ERRORS).")
        }
        if let first = t.refusedOrdinary.first {
            throw CheckFailure("\(t.refusedOrdinary.count) draws at ordinary parameters failed with noise the host's generator draws; first: \(first). A valid draw must not be refused (compute in log space where it underflows).")
        }
        let ordinary = canSample ? "; sample and sample_vjp accept all \(ordinaryCount) (ordinary point, host noise) settings" : ""
        return "\(t.calls) calls with denormal, huge, ±inf and NaN inputs at \(pts.count) parameter points: \(t.finite) finite with OK, \(t.refused) refused with an error status, none non-finite with OK (\(t.perFunction.map { "\($0.0) \($0.1)" }.joined(separator: ", ")))\(ordinary)"
    }

    /// The error a call gives, for a message.
    func refusal(_ call: () throws -> [Float]) -> String {
        do { _ = try call(); return "OK" } catch let e as PluginCallError { return "\(e.statusName): \(e.message)" } catch { return "\(error)" }
    }

    // MARK: Calls with n = 1, plain buffers, no announcement (the probe announces each group)

    func rawLogProb(_ x: [Float], _ params: [[Float]]) throws -> [Float] {
        var out = [Float](repeating: 0, count: x.count)
        try withPlain(params) { p in try dist.logProb(n: x.count, params: p, x: x, out: &out) }
        return out
    }

    func rawLogProbVJP(_ x: [Float], _ params: [[Float]], g: [Float]) throws -> (dx: [Float], dp: [[Float]]) {
        var dx = [Float](repeating: 0, count: x.count)
        var dp = params.map { [Float](repeating: 0, count: $0.count) }
        try withPlain(params) { p in
            try withPlainOut(&dp) { gp in try dist.logProbVJP(n: x.count, params: p, x: x, g: g, gradX: &dx, gradParams: gp) }
        }
        return (dx, dp)
    }

    func rawSample(_ params: [[Float]], _ z: [Float], _ u: [Float]) throws -> [Float] {
        var out: [Float] = [0]
        try withPlain(params) { p in try dist.sample(n: 1, params: p, normals: z.isEmpty ? nil : z, uniforms: u.isEmpty ? nil : u, out: &out) }
        return out
    }

    func rawSampleVJP(_ params: [[Float]], _ z: [Float], _ u: [Float], x: [Float], g: [Float]) throws -> [[Float]] {
        var dp = params.map { [Float](repeating: 0, count: $0.count) }
        try withPlain(params) { p in
            try withPlainOut(&dp) { gp in
                try dist.sampleVJP(n: 1, params: p, normals: z.isEmpty ? nil : z, uniforms: u.isEmpty ? nil : u, x: x, g: g, gradParams: gp)
            }
        }
        return dp
    }

    func rawCenter(_ params: [[Float]]) throws -> [Float] {
        var out: [Float] = [0]
        try withPlain(params) { p in try dist.center(n: 1, params: p, out: &out) }
        return out
    }

    func rawCenterVJP(_ params: [[Float]], g: [Float]) throws -> [[Float]] {
        var dp = params.map { [Float](repeating: 0, count: $0.count) }
        try withPlain(params) { p in try withPlainOut(&dp) { gp in try dist.centerVJP(n: 1, params: p, g: g, gradParams: gp) } }
        return dp
    }

    func rawKL(_ q: Distribution, _ qp: [[Float]], _ pp: [[Float]]) throws -> [Float] {
        var out: [Float] = [0]
        try withPlain(qp) { qa in try withPlain(pp) { pa in try dist.kl(n: 1, posterior: q, qParams: qa, params: pa, out: &out) } }
        return out
    }

    func rawKLVJP(_ q: Distribution, _ qp: [[Float]], _ pp: [[Float]], g: [Float]) throws -> (dq: [[Float]], dp: [[Float]]) {
        var dq = qp.map { [Float](repeating: 0, count: $0.count) }, dp = pp.map { [Float](repeating: 0, count: $0.count) }
        try withPlain(qp) { qa in try withPlain(pp) { pa in try withPlainOut(&dq) { gq in try withPlainOut(&dp) { gp in
            try dist.klVJP(n: 1, posterior: q, qParams: qa, params: pa, g: g, gradQ: gq, gradParams: gp)
        } } } }
        return (dq, dp)
    }

    /// One value per slot, stride 1.
    func withPlain<R>(_ params: [[Float]], _ body: ([InArray]) throws -> R) rethrows -> R {
        let flat = params.flatMap { $0 }
        return try flat.withUnsafeBufferPointer { b in
            var offset = 0
            var arrays: [InArray] = []
            for p in params { arrays.append(InArray(b.baseAddress! + offset, stride: 1)); offset += p.count }
            return try body(arrays)
        }
    }

    func withPlainOut<R>(_ outs: inout [[Float]], _ body: ([OutArray]) throws -> R) rethrows -> R {
        var flat = outs.flatMap { $0 }
        let counts = outs.map(\.count)
        let r = try flat.withUnsafeMutableBufferPointer { b in
            var offset = 0
            var arrays: [OutArray] = []
            for c in counts { arrays.append(OutArray(b.baseAddress! + offset, stride: 1)); offset += c }
            return try body(arrays)
        }
        var offset = 0
        for k in outs.indices { outs[k] = Array(flat[offset..<(offset + counts[k])]); offset += counts[k] }
        return r
    }
}
