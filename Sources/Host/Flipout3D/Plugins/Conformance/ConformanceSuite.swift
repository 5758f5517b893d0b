// The conformance checks of one family, run in-process (the child side of `flipout plugins check`).
import Foundation

/// A check failed: the message names the function and the parameter values.
struct CheckFailure: Error { let message: String; init(_ m: String) { message = m } }
/// A check does not apply to this family (no sample capability, no KL partner loaded, ...).
struct CheckSkipped: Error { let message: String; init(_ m: String) { message = m } }

/// Runs the checks of `flipout plugins check` on one family with its default hyperparameters.
/// Every plugin call is announced through `probe` first ("log_prob_vjp at loc=0, scale=0.001"),
/// so that a parent process can say where a child crashed or hung.
public final class ConformanceSuite {
    public let family: DistributionFamily
    let dist: Distribution
    /// Families a KL check may use as the posterior q (by id).
    let partner: (String) -> DistributionFamily?
    let announce: (String) -> Void
    /// Appended to every announcement while set ("with grad_params[1] (scale) = NULL").
    var note = ""
    func probe(_ s: String) { announce(s + note) }

    /// Every check, in the order they run. `applicable` filters by capability.
    public static let allChecks = ["layout", "log_prob", "log_prob_vjp", "add-not-overwrite", "null-gradients", "broadcast", "n=0",
                                   "domain-errors", "extremes", "sample", "sample_vjp", "center", "center_vjp", "symmetry", "noise",
                                   "kl", "kl_vjp", "threads"]

    public init(family: DistributionFamily, partner: @escaping (String) -> DistributionFamily?, probe: @escaping (String) -> Void) throws {
        self.family = family
        self.partner = partner
        announce = probe
        dist = try family.instantiate()
    }

    public func run(_ check: String) -> ConformanceResult {
        func result(_ o: ConformanceResult.Outcome, _ d: String) -> ConformanceResult {
            ConformanceResult(family: family.id, check: check, outcome: o, detail: d)
        }
        do {
            let detail = try body(check)
            return result(.pass, detail)
        } catch let s as CheckSkipped {
            return result(.skip, s.message)
        } catch let f as CheckFailure {
            return result(.fail, f.message)
        } catch {
            return result(.fail, "\(error)")
        }
    }

    private func body(_ check: String) throws -> String {
        switch check {
        case "layout": return try checkLayout()
        case "log_prob": return try checkLogProb()
        case "log_prob_vjp": return try checkLogProbVJP()
        case "add-not-overwrite": return try checkAddNotOverwrite()
        case "null-gradients": return try checkNullGradients()
        case "broadcast": return try checkBroadcast()
        case "n=0": return try checkEmpty()
        case "domain-errors": return try checkDomainErrors()
        case "extremes": return try checkExtremes()
        case "sample": return try checkSampleDistribution()
        case "sample_vjp": return try checkSampleVJP()
        case "center": return try checkCenter()
        case "center_vjp": return try checkCenterVJP()
        case "symmetry": return try checkSymmetry()
        case "noise": return try checkNoise()
        case "kl": return try checkKL()
        case "kl_vjp": return try checkKLVJP()
        case "threads": return try checkThreads()
        default: throw CheckFailure("unknown check \(check)")
        }
    }

    // MARK: Parameter points

    var slots: [ParameterSlot] { dist.slots }
    var canSample: Bool { family.canSample }

    /// The base point: every slot at its value as a prior.
    var basePoint: [Float] { slots.map { $0.parameter.priorValue } }
    /// The posterior's initial point (declared defaults).
    var defaultPoint: [Float] { slots.map { $0.parameter.defaultValue } }

    /// Values of one slot to try, extremes included, inside its transform's range.
    func gridValues(_ k: Int, around base: Float) -> [Float] {
        let raw: [Float]
        switch slots[k].parameter.transform {
        case .identity: raw = [base, base - 2, base + 3, -10, 10]
        case .softplus, .exp: raw = [base, 1e-3, 0.05, 1, 30]
        case .sigmoid: raw = [base, 1e-3, 0.3, 0.999]
        }
        var seen: [Float] = []
        for v in raw where !seen.contains(v) { seen.append(v) }
        return seen
    }

    /// The base point, then one slot at a time moved through its grid values (posterior
    /// families also start from their declared defaults).
    var points: [[Float]] {
        var out = [basePoint]
        if canSample && defaultPoint != basePoint { out.append(defaultPoint) }
        for k in slots.indices {
            for v in gridValues(k, around: basePoint[k]).dropFirst() {
                var p = basePoint; p[k] = v; out.append(p)
            }
        }
        return out
    }

    func describe(_ point: [Float]) -> String {
        zip(slots, point).map { "\($0.name)=\(Self.short($1))" }.joined(separator: ", ")
    }

    static func short(_ v: Float) -> String {
        if v == 0 { return "0" }
        if abs(v) >= 1e-3 && abs(v) < 1e5 {
            let s = String(format: "%.6g", Double(v))
            return s
        }
        return String(format: "%.3g", Double(v))
    }
    static func short(_ v: Double) -> String { short(Float(v)) }

    // MARK: Calls on arrays (parameters per scalar, stride 1, unless `broadcast`)

    func slotArrays(_ point: [Float], n: Int) -> [[Float]] { point.map { [Float](repeating: $0, count: n) } }

    func withIn<R>(_ params: [[Float]], _ body: ([InArray]) throws -> R) rethrows -> R {
        let bufs = params.map { GuardedFloats($0) }
        return try withExtendedLifetime(bufs) { try body(bufs.map { InArray(UnsafePointer($0.pointer), stride: $0.count == 1 ? 0 : 1) }) }
    }

    func logProb(_ x: [Float], _ params: [[Float]], _ what: String) throws -> [Float] {
        probe("log_prob at \(what)")
        var out = [Float](repeating: 0, count: x.count)
        try withIn(params) { p in try dist.logProb(n: x.count, params: p, x: x, out: &out) }
        return out
    }

    /// (d/dx, d/dslot) of sum_i g_i log p(x_i); outputs start at `fill`; `want` false passes NULL.
    func logProbVJP(_ x: [Float], _ params: [[Float]], g: [Float], fill: Float = 0, wantX: Bool = true, want: [Bool]? = nil,
                    _ what: String) throws -> (dx: [Float], dp: [[Float]]) {
        probe("log_prob_vjp at \(what)")
        var dx = [Float](repeating: fill, count: x.count)
        let outs = params.map { [Float](repeating: fill, count: $0.count) }
        let bufs = outs.map { GuardedFloats($0) }
        try withIn(params) { p in
            let gp = bufs.enumerated().map { k, b in (want?[k] ?? true) ? OutArray(b.pointer, stride: b.count == 1 ? 0 : 1) : OutArray(nil, stride: b.count == 1 ? 0 : 1) }
            if wantX {
                try dist.logProbVJP(n: x.count, params: p, x: x, g: g, gradX: &dx, gradParams: gp)
            } else {
                try dist.logProbVJP(n: x.count, params: p, x: x, g: g, gradX: nil, gradParams: gp)
            }
        }
        return (dx, bufs.map { Array(UnsafeBufferPointer(start: $0.pointer, count: $0.count)) })
    }

    /// Noise for n scalars, drawn from the host's generator keyed by `stream`.
    func noise(_ n: Int, stream: Int) -> (normals: [Float], uniforms: [Float]) {
        var s = RandomStream(seed: 20_261_201, layer: stream, step: 0, purpose: .test)
        return (s.normals(n * dist.normalsPerScalar), s.uniforms(n * dist.uniformsPerScalar))
    }

    func sample(_ params: [[Float]], n: Int, _ noise: (normals: [Float], uniforms: [Float]), _ what: String) throws -> [Float] {
        probe("sample at \(what)")
        var out = [Float](repeating: 0, count: n)
        try withIn(params) { p in
            try dist.sample(n: n, params: p, normals: noise.normals.isEmpty ? nil : noise.normals, uniforms: noise.uniforms.isEmpty ? nil : noise.uniforms, out: &out)
        }
        return out
    }

    func sampleVJP(_ params: [[Float]], n: Int, _ noise: (normals: [Float], uniforms: [Float]), x: [Float], g: [Float], fill: Float = 0,
                   want: [Bool]? = nil, _ what: String) throws -> [[Float]] {
        probe("sample_vjp at \(what)")
        let bufs = params.map { GuardedFloats([Float](repeating: fill, count: $0.count)) }
        try withIn(params) { p in
            let gp = bufs.enumerated().map { k, b in OutArray((want?[k] ?? true) ? b.pointer : nil, stride: b.count == 1 ? 0 : 1) }
            try dist.sampleVJP(n: n, params: p, normals: noise.normals.isEmpty ? nil : noise.normals, uniforms: noise.uniforms.isEmpty ? nil : noise.uniforms,
                               x: x, g: g, gradParams: gp)
        }
        return bufs.map { Array(UnsafeBufferPointer(start: $0.pointer, count: $0.count)) }
    }

    func center(_ params: [[Float]], n: Int, _ what: String) throws -> [Float] {
        probe("center at \(what)")
        var out = [Float](repeating: 0, count: n)
        try withIn(params) { p in try dist.center(n: n, params: p, out: &out) }
        return out
    }

    func centerVJP(_ params: [[Float]], n: Int, g: [Float], fill: Float = 0, want: [Bool]? = nil, _ what: String) throws -> [[Float]] {
        probe("center_vjp at \(what)")
        let bufs = params.map { GuardedFloats([Float](repeating: fill, count: $0.count)) }
        try withIn(params) { p in
            let gp = bufs.enumerated().map { k, b in OutArray((want?[k] ?? true) ? b.pointer : nil, stride: b.count == 1 ? 0 : 1) }
            try dist.centerVJP(n: n, params: p, g: g, gradParams: gp)
        }
        return bufs.map { Array(UnsafeBufferPointer(start: $0.pointer, count: $0.count)) }
    }

    /// x values to evaluate the density at for `point`: draws from the family when it can be
    /// sampled, else a fixed spread (positive for positive support); only where log_prob is finite.
    func xs(_ point: [Float], _ stream: Int) throws -> [Float] {
        var candidates: [Float]
        if canSample {
            candidates = try sample(slotArrays(point, n: 8), n: 8, noise(8, stream: stream), describe(point))
        } else if family.capabilities.contains(.positiveSupport) {
            candidates = [0.05, 0.3, 1, 2.5, 7]
        } else {
            candidates = [-3, -1, -0.2, 0.1, 0.7, 2.5]
        }
        let lp = try logProb(candidates, slotArrays(point, n: candidates.count), describe(point))
        return zip(candidates, lp).filter { $0.1.isFinite }.map(\.0)
    }
}
