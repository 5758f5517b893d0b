// The ABI's promises that are not numerics: layout against capabilities, noise counts against
// what sample reads, DOMAIN_ERROR for invalid parameters, and agreement under concurrency.
import Foundation

extension ConformanceSuite {
    func checkLayout() throws -> String {
        // The host already refuses a mismatch at load (Distribution.init); state what was found.
        "\(slots.count) slots (\(slots.map(\.name).joined(separator: ", "))); \(dist.normalsPerScalar) normals and \(dist.uniformsPerScalar) uniforms per scalar; capabilities \(family.capabilities)"
    }

    func checkNoise() throws -> String {
        guard canSample else { throw CheckSkipped("no sample capability") }
        let n = 1000, nz = dist.normalsPerScalar, nu = dist.uniformsPerScalar
        let z = noise(n, stream: 600)
        // Noise buffers end exactly at an inaccessible page (and begin right after one): reading
        // past the declared count faults, and the parent reports the crash in this check.
        let normals = GuardedFloats(z.normals), uniforms = GuardedFloats(z.uniforms)
        let params = slotArrays(basePoint, n: n)
        var x = [Float](repeating: 0, count: n)
        let note = "with noise buffers ending at guard pages (layout(): \(nz) normals, \(nu) uniforms per scalar; reading more crashes)"
        probe("sample at \(describe(basePoint)) \(note)")
        try withIn(params) { p in try dist.sample(n: n, params: p, normals: normals.pointer, uniforms: uniforms.pointer, out: &x) }
        let reference = try sample(params, n: n, z, describe(basePoint))
        guard x == reference else { throw CheckFailure("sample is not a deterministic function of its noise (two calls with the same noise differ).") }
        probe("sample_vjp at \(describe(basePoint)) \(note)")
        let g = [Float](repeating: 1, count: n)
        let bufs = params.map { _ in GuardedFloats([Float](repeating: 0, count: n)) }
        try withIn(params) { p in
            try dist.sampleVJP(n: n, params: p, normals: normals.pointer, uniforms: uniforms.pointer, x: x, g: g, gradParams: bufs.map { OutArray($0.pointer, stride: 1) })
        }
        // Every declared noise value matters: changing one scalar's noise changes its sample.
        if nz + nu > 0 {
            var zz = z
            for i in 0..<min(n, 50) {
                if nz > 0 { zz.normals[i * nz + nz - 1] += 0.5 } else { zz.uniforms[i * nu + nu - 1] = 1 - zz.uniforms[i * nu + nu - 1] * 0.5 }
            }
            let moved = try sample(params, n: n, zz, describe(basePoint))
            let changed = (0..<min(n, 50)).filter { moved[$0] != reference[$0] }.count
            guard changed > 0 else { throw CheckFailure("sample ignores the last declared noise value of every scalar: layout() declares more noise than sample reads.") }
        }
        return "sample and sample_vjp read within the declared \(nz) normals and \(nu) uniforms per scalar (guard pages), and use the last of them"
    }

    /// Values outside each slot's range, with the base point elsewhere.
    var invalidPoints: [(String, [Float])] {
        var out: [(String, [Float])] = []
        for k in slots.indices {
            let bad: [Float]
            switch slots[k].parameter.transform {
            case .identity: bad = [.nan]
            case .softplus, .exp: bad = [0, -1, .nan]
            case .sigmoid: bad = [-0.5, 1.5, .nan]
            }
            for v in bad { var p = basePoint; p[k] = v; out.append(("\(slots[k].name)=\(v)", p)) }
        }
        return out
    }

    func checkDomainErrors() throws -> String {
        let x = try xs(basePoint, 13)
        guard !x.isEmpty else { throw CheckSkipped("no finite log_prob at the base point") }
        let n = x.count
        var checked = 0
        for (label, point) in invalidPoints {
            let params = slotArrays(point, n: n), g = [Float](repeating: 1, count: n)
            var calls: [(String, () throws -> [Float])] = [
                ("log_prob", { try self.logProb(x, params, label) }),
                ("log_prob_vjp", { let r = try self.logProbVJP(x, params, g: g, label); return r.dx + r.dp.flatMap { $0 } }),
            ]
            if canSample {
                let z = noise(n, stream: 14), ok = try sample(slotArrays(basePoint, n: n), n: n, z, describe(basePoint))
                calls += [
                    ("sample", { try self.sample(params, n: n, z, label) }),
                    ("sample_vjp", { try self.sampleVJP(params, n: n, z, x: ok, g: g, label).flatMap { $0 } }),
                    ("center", { try self.center(params, n: n, label) }),
                    ("center_vjp", { try self.centerVJP(params, n: n, g: g, label).flatMap { $0 } }),
                ]
            }
            for (name, call) in calls {
                do {
                    let out = try call()
                    if let bad = out.first(where: { !$0.isFinite }) {
                        throw CheckFailure("\(name) with \(label) returned \(bad) with status OK; invalid parameters must give FLIPOUT_STATUS_DOMAIN_ERROR.")
                    }
                    throw CheckFailure("\(name) accepted \(label) (status OK, finite results); invalid parameters must give FLIPOUT_STATUS_DOMAIN_ERROR.")
                } catch let e as PluginCallError {
                    if e.status == PluginCallError.nonFinite {
                        throw CheckFailure("\(name) with \(label) returned a non-finite value with status OK (\(e.message)); invalid parameters must give FLIPOUT_STATUS_DOMAIN_ERROR.")
                    }
                    guard e.status == Status.domainError.rawValue else {
                        throw CheckFailure("\(name) with \(label) gave \(e.statusName) (\(e.message)); invalid parameters must give FLIPOUT_STATUS_DOMAIN_ERROR.")
                    }
                    checked += 1
                }
            }
        }
        return "\(checked) calls with invalid parameters (\(invalidPoints.map(\.0).joined(separator: ", "))) give DOMAIN_ERROR"
    }

    func checkThreads() throws -> String {
        let n = 2048, threads = 4, rounds = 8
        let point = basePoint
        var rng = RandomStream(seed: 7, layer: 700, step: 0, purpose: .test)
        // Per-scalar parameters jittered around the base point, inside each range.
        let params: [[Float]] = slots.indices.map { k in
            (0..<n).map { _ in
                let u = Float(rng.uniforms(1)[0])
                switch slots[k].parameter.transform {
                case .identity: return point[k] + (u - 0.5)
                case .softplus, .exp: return point[k] * (0.5 + u)
                case .sigmoid: return min(max(point[k] * (0.5 + u), 1e-3), 0.999)
                }
            }
        }
        let z = noise(n, stream: 701)
        let x: [Float] = canSample ? try sample(params, n: n, z, "per-scalar parameters near \(describe(point))")
            : (0..<n).map { i in family.capabilities.contains(.positiveSupport) ? 0.1 + Float(i % 50) / 10 : Float(i % 60) / 10 - 3 }
        let g = [Float](repeating: 1, count: n)
        probe("log_prob, log_prob_vjp\(canSample ? ", sample, sample_vjp" : "") from \(threads) threads at once")
        func once() throws -> [[Float]] {
            var out = [Float](repeating: 0, count: n), dx = out
            var dp = params.map { _ in [Float](repeating: 0, count: n) }
            try withIn(params) { p in
                try dist.logProb(n: n, params: p, x: x, out: &out)
                let bufs = dp.map { GuardedFloats($0) }
                try dist.logProbVJP(n: n, params: p, x: x, g: g, gradX: &dx, gradParams: bufs.map { OutArray($0.pointer, stride: 1) })
                dp = bufs.map { Array(UnsafeBufferPointer(start: $0.pointer, count: n)) }
            }
            var r = [out, dx] + dp
            if canSample {
                var s = [Float](repeating: 0, count: n)
                try withIn(params) { p in try dist.sample(n: n, params: p, normals: z.normals.isEmpty ? nil : z.normals, uniforms: z.uniforms.isEmpty ? nil : z.uniforms, out: &s) }
                r.append(s)
            }
            return r
        }
        let reference = try once()
        let lock = NSLock()
        var mismatch: String?
        var failure: Error?
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            for _ in 0..<rounds {
                do {
                    let r = try once()
                    if r != reference { lock.lock(); mismatch = mismatch ?? "thread \(t)"; lock.unlock() }
                } catch { lock.lock(); failure = failure ?? error; lock.unlock() }
            }
        }
        if let failure { throw failure }
        if let mismatch {
            throw CheckFailure("results from \(threads) concurrent threads differ from a single thread's (first: \(mismatch)); functions marked [reentrant] must keep no mutable state per call.")
        }
        return "\(threads) threads × \(rounds) rounds of \(n) scalars agree bit for bit with one thread"
    }
}
