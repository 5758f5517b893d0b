// Helpers for calling a loaded distribution on Swift arrays in tests, and finite differences.
import Flipout3D

/// Calls a plugin distribution on arrays of per-scalar parameters (one array per slot).
public struct PluginHarness {
    public let dist: Distribution
    public init(_ dist: Distribution) { self.dist = dist }

    /// Loads a bundled plugin target and instantiates the family `id`.
    public static func bundled(_ target: String, _ id: String, hyper: [String: Double] = [:]) throws -> PluginHarness {
        let lib = try PluginLibrary.load(BuildProducts.plugin(target))
        guard let f = lib.families.first(where: { $0.id == id }) else { fatalError("\(target) has no \(id)") }
        return PluginHarness(try f.instantiate(hyper))
    }

    func withIns<R>(_ params: [[Float]], _ n: Int, _ body: ([InArray]) throws -> R) rethrows -> R {
        var copies = params.map { p -> UnsafeMutablePointer<Float> in
            let b = UnsafeMutablePointer<Float>.allocate(capacity: max(p.count, 1)); b.initialize(from: p, count: p.count); return b
        }
        defer { for b in copies { b.deallocate() }; copies = [] }
        return try body(zip(copies, params).map { InArray($0.0, stride: $0.1.count == 1 && n > 1 ? 0 : 1) })
    }

    public func logProb(_ x: [Float], _ params: [[Float]]) throws -> [Float] {
        var out = [Float](repeating: 0, count: x.count)
        try withIns(params, x.count) { p in try dist.logProb(n: x.count, params: p, x: x, out: &out) }
        return out
    }

    /// (d/dx, d/dparam_k) of sum_i g_i log p(x_i), params broadcast when given one value.
    public func logProbVJP(_ x: [Float], _ params: [[Float]], g: [Float]) throws -> (dx: [Float], dp: [[Float]]) {
        var dx = [Float](repeating: 0, count: x.count)
        var dp = params.map { [Float](repeating: 0, count: $0.count) }
        try withIns(params, x.count) { p in
            try withOuts(&dp, x.count) { gp in try dist.logProbVJP(n: x.count, params: p, x: x, g: g, gradX: &dx, gradParams: gp) }
        }
        return (dx, dp)
    }

    public func sample(_ params: [[Float]], n: Int, normals: [Float], uniforms: [Float]) throws -> [Float] {
        var out = [Float](repeating: 0, count: n)
        try withIns(params, n) { p in try dist.sample(n: n, params: p, normals: normals.isEmpty ? nil : normals, uniforms: uniforms.isEmpty ? nil : uniforms, out: &out) }
        return out
    }

    public func sampleVJP(_ params: [[Float]], n: Int, normals: [Float], uniforms: [Float], x: [Float], g: [Float]) throws -> [[Float]] {
        var dp = params.map { [Float](repeating: 0, count: $0.count) }
        try withIns(params, n) { p in
            try withOuts(&dp, n) { gp in try dist.sampleVJP(n: n, params: p, normals: normals.isEmpty ? nil : normals, uniforms: uniforms.isEmpty ? nil : uniforms, x: x, g: g, gradParams: gp) }
        }
        return dp
    }

    public func center(_ params: [[Float]], n: Int) throws -> [Float] {
        var out = [Float](repeating: 0, count: n)
        try withIns(params, n) { p in try dist.center(n: n, params: p, out: &out) }
        return out
    }

    /// KL(q || self) with q a distribution of another (or the same) family.
    public func kl(posterior q: Distribution, _ qParams: [[Float]], _ params: [[Float]], n: Int) throws -> [Float] {
        var out = [Float](repeating: 0, count: n)
        try withIns(qParams, n) { qp in try withIns(params, n) { pp in try dist.kl(n: n, posterior: q, qParams: qp, params: pp, out: &out) } }
        return out
    }

    public func klVJP(posterior q: Distribution, _ qParams: [[Float]], _ params: [[Float]], n: Int, g: [Float]) throws -> (dq: [[Float]], dp: [[Float]]) {
        var dq = qParams.map { [Float](repeating: 0, count: $0.count) }
        var dp = params.map { [Float](repeating: 0, count: $0.count) }
        try withIns(qParams, n) { qp in try withIns(params, n) { pp in
            try withOuts(&dq, n) { gq in try withOuts(&dp, n) { gp in
                try dist.klVJP(n: n, posterior: q, qParams: qp, params: pp, g: g, gradQ: gq, gradParams: gp)
            } }
        } }
        return (dq, dp)
    }
}

func withOuts<R>(_ arrays: inout [[Float]], _ n: Int, _ body: ([OutArray]) throws -> R) rethrows -> R {
    let bufs = arrays.map { a -> UnsafeMutablePointer<Float> in
        let b = UnsafeMutablePointer<Float>.allocate(capacity: max(a.count, 1)); b.initialize(from: a, count: a.count); return b
    }
    defer { for b in bufs { b.deallocate() } }
    let r = try body(zip(bufs, arrays).map { OutArray($0.0, stride: $0.1.count == 1 && n > 1 ? 0 : 1) })
    for k in arrays.indices { arrays[k] = Array(UnsafeBufferPointer(start: bufs[k], count: arrays[k].count)) }
    return r
}

/// Central finite difference of f at x in Double.
public func centralDifference(_ f: (Double) -> Double, at x: Double, h: Double = 1e-5) -> Double {
    (f(x + h) - f(x - h)) / (2 * h)
}

/// |a - b| <= atol + rtol * |b|
public func isClose(_ a: Double, _ b: Double, rtol: Double = 1e-4, atol: Double = 1e-5) -> Bool {
    abs(a - b) <= atol + rtol * abs(b)
}

extension PluginHarness {
    /// d/dparam_k of sum_i g_i center_i, params broadcast when given one value.
    public func centerVJP(_ params: [[Float]], n: Int, g: [Float]) throws -> [[Float]] {
        var dp = params.map { [Float](repeating: 0, count: $0.count) }
        try withIns(params, n) { p in
            try withOuts(&dp, n) { gp in try dist.centerVJP(n: n, params: p, g: g, gradParams: gp) }
        }
        return dp
    }
}
