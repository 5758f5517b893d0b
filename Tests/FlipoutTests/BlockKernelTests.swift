// The SDK's block kernels (BlockDistribution) against its per-scalar loop: every bundled family, bit for bit, errors included.
import Testing
import Foundation
import Flipout3D
import TestSupport

/// One plugin holding every bundled family twice: as written (block kernels) and wrapped in
/// `ScalarLoop`, which hides the BlockDistribution conformance so the SDK runs its per-scalar loop.
/// Ids are renamed (org.flipout3d. -> org.blocktest.) so nothing clashes with the bundled plugins.
enum BlockKernelPlugin {
    static let families = ["Normal", "Laplace", "Gamma", "Beta", "GaussianMixture", "ScaleMixture", "StudentT"]

    static let wrapper = """
    /// The family `D` without its block kernels: the SDK's per-scalar reference loop runs it.
    struct ScalarLoop<D: ScalarDistribution>: ScalarDistribution {
        static var family: FamilyInfo { var f = D.family; f.id += ".scalar-loop"; return f }
        let d: D
        init(hyperparameters: [Double]) throws { d = try D(hyperparameters: hyperparameters) }
        var parameterSlotCount: Int { d.parameterSlotCount }
        var normalsPerScalar: Int { d.normalsPerScalar }
        var uniformsPerScalar: Int { d.uniformsPerScalar }
        func validate(_ p: Params) throws { try d.validate(p) }
        func logProb(_ x: Double, _ p: Params) -> Double { d.logProb(x, p) }
        func logProbGradient(_ x: Double, _ p: Params, _ dp: ParamGradient) -> Double { d.logProbGradient(x, p, dp) }
        func sample(_ p: Params, normals: UnsafePointer<Float>, uniforms: UnsafePointer<Float>) -> Double { d.sample(p, normals: normals, uniforms: uniforms) }
        func sampleGradient(_ x: Double, _ p: Params, normals: UnsafePointer<Float>, uniforms: UnsafePointer<Float>, _ dp: ParamGradient) {
            d.sampleGradient(x, p, normals: normals, uniforms: uniforms, dp)
        }
        func center(_ p: Params) -> Double { d.center(p) }
        func centerGradient(_ p: Params, _ dp: ParamGradient) { d.centerGradient(p, dp) }
        func kl(qFamily: String, q: Params, p: Params) throws -> Double { try d.kl(qFamily: qFamily, q: q, p: p) }
        func klGradient(qFamily: String, q: Params, p: Params, dq: ParamGradient, dp: ParamGradient) throws {
            try d.klGradient(qFamily: qFamily, q: q, p: p, dq: dq, dp: dp)
        }
    }
    """

    static let built: Result<String, Error> = Result(catching: {
        let dir = try Fixtures.temporaryDirectory("flipout-block-kernels")
        var files: [String] = []
        for f in families {
            var text = try String(contentsOf: Fixtures.packageRoot.appendingPathComponent("Plugins/\(f)/\(f).swift"), encoding: .utf8)
            guard let entry = text.range(of: "@_cdecl(\"flipout_plugin_entry_v1\")") else { throw FixtureError("Plugins/\(f): no entry point") }
            text = String(text[..<entry.lowerBound]).replacingOccurrences(of: "\"org.flipout3d.", with: "\"org.blocktest.")
                .replacingOccurrences(of: "import PluginSDK\n", with: "")
            try text.write(to: dir.appendingPathComponent("\(f).swift"), atomically: true, encoding: .utf8)
            files.append("\(f).swift")
        }
        let list = families.map { "\($0).self, ScalarLoop<\($0)>.self" }.joined(separator: ", ")
        let entry = """
        import PluginABI
        \(wrapper)
        @_cdecl("flipout_plugin_entry_v1")
        public func flipoutPluginEntry(_ host: UnsafePointer<flipout_host>?) -> UnsafeRawPointer? {
            PluginExport.library(name: "Block kernel test", host: host, families: [\(list)])
        }
        """
        try entry.write(to: dir.appendingPathComponent("Entry.swift"), atomically: true, encoding: .utf8)
        let r = try Subprocess.run(Fixtures.packageRoot.appendingPathComponent("scripts/build-plugin").path,
                                   ["-o", "libBlockKernelTest.so"] + files + ["Entry.swift"], in: dir)
        guard r.status == 0 else { throw FixtureError("scripts/build-plugin failed (\(r.status)):\n\(r.stderr)\(r.stdout)") }
        return dir.appendingPathComponent("libBlockKernelTest.so").path
    })
}

/// What a call gave: its outputs' bits, or its error's status and message (the wrapper's id suffix removed).
private enum Outcome: Equatable {
    case values([[UInt32]])
    case failed(Int32, String)
    init(_ body: () throws -> [[Float]]) {
        do { self = .values(try body().map { $0.map(\.bitPattern) }) } catch let e as PluginCallError {
            self = .failed(e.status, e.message.replacingOccurrences(of: ".scalar-loop", with: ""))
        } catch { self = .failed(-1, "\(error)") }
    }
}

@Suite struct BlockKernelTests {
    /// More than three blocks of 256 scalars, the last one partial.
    static let n = 1000

    /// Constrained values of slot k for n scalars: the host's transform of N(0, 1.5^2) draws (one value if `broadcast`).
    static func parameters(_ d: Distribution, n: Int, broadcast: Bool, seed: UInt64) -> [[Float]] {
        var s = RandomStream(seed: seed, layer: 0, step: 0, purpose: .initialization)
        return d.slots.map { slot in
            var u = [Float](repeating: 0, count: broadcast ? 1 : n)
            u.withUnsafeMutableBufferPointer { s.fillNormal($0.baseAddress!, count: $0.count) }
            return u.map { slot.parameter.transform.forward(1.5 * $0) }
        }
    }

    static func noise(_ count: Int, seed: UInt64, uniform: Bool) -> [Float] {
        var s = RandomStream(seed: seed, layer: 1, step: 0, purpose: .initialization)
        var v = [Float](repeating: 0, count: count)
        v.withUnsafeMutableBufferPointer { uniform ? s.fillUniform($0.baseAddress!, count: count) : s.fillNormal($0.baseAddress!, count: count) }
        return v
    }

    /// Both versions of a family: (block kernels, per-scalar loop).
    static func pair(_ name: String) throws -> (block: PluginHarness, loop: PluginHarness) {
        let lib = try PluginLibrary.load(try BlockKernelPlugin.built.get())
        let id = "org.blocktest.\(name)"
        guard let b = lib.families.first(where: { $0.id == id }), let l = lib.families.first(where: { $0.id == id + ".scalar-loop" }) else {
            throw FixtureError("the test plugin has no \(id)")
        }
        return (PluginHarness(try b.instantiate()), PluginHarness(try l.instantiate()))
    }

    static let ids = ["normal", "laplace", "gamma", "beta", "gaussian-mixture", "scale-mixture", "student-t"]

    @Test(arguments: ids)
    func everyCallGivesTheScalarLoopsBits(_ name: String) throws {
        let (b, l) = try Self.pair(name)
        let d = b.dist, n = Self.n
        let g = Self.noise(n, seed: 3, uniform: false)
        for broadcast in [false, true] {
            let p = Self.parameters(d, n: n, broadcast: broadcast, seed: broadcast ? 2 : 1)
            // x: the family's own samples where it samples, else normals (some outside a positive support: -inf).
            var x = Self.noise(n, seed: 4, uniform: false)
            if d.family.canSample {
                let z = Self.noise(n * d.normalsPerScalar, seed: 5, uniform: false), u = Self.noise(n * d.uniformsPerScalar, seed: 6, uniform: true)
                let sb = Outcome { [try b.sample(p, n: n, normals: z, uniforms: u)] }
                #expect(sb == Outcome { [try l.sample(p, n: n, normals: z, uniforms: u)] }, "\(name) sample")
                if case .values(let v) = sb { x = v[0].map(Float.init(bitPattern:)) }
                #expect(Outcome { try b.sampleVJP(p, n: n, normals: z, uniforms: u, x: x, g: g) }
                        == Outcome { try l.sampleVJP(p, n: n, normals: z, uniforms: u, x: x, g: g) }, "\(name) sample_vjp")
                #expect(Outcome { [try b.center(p, n: n)] } == Outcome { [try l.center(p, n: n)] }, "\(name) center")
                #expect(Outcome { try b.centerVJP(p, n: n, g: g) } == Outcome { try l.centerVJP(p, n: n, g: g) }, "\(name) center_vjp")
            }
            let lb = Outcome { [try b.logProb(x, p)] }
            #expect(lb == Outcome { [try l.logProb(x, p)] }, "\(name) log_prob (broadcast \(broadcast))")
            #expect(Outcome { let r = try b.logProbVJP(x, p, g: g); return [r.dx] + r.dp }
                    == Outcome { let r = try l.logProbVJP(x, p, g: g); return [r.dx] + r.dp }, "\(name) log_prob_vjp (broadcast \(broadcast))")
            if case .values = lb {} else { Issue.record("\(name): log_prob failed on valid parameters: \(lb)") }
            // KL against every posterior family it lists (as the host calls it: posterior per weight, prior broadcast or not).
            for qid in d.family.klFamilies {
                let qName = String(qid.dropFirst("org.blocktest.".count))
                let q = try Self.pair(qName).block.dist
                let qp = Self.parameters(q, n: n, broadcast: false, seed: 7)
                #expect(Outcome { [try b.kl(posterior: q, qp, p, n: n)] } == Outcome { [try l.kl(posterior: q, qp, p, n: n)] }, "\(name) kl from \(qName)")
                #expect(Outcome { let r = try b.klVJP(posterior: q, qp, p, n: n, g: g); return r.dq + r.dp }
                        == Outcome { let r = try l.klVJP(posterior: q, qp, p, n: n, g: g); return r.dq + r.dp }, "\(name) kl_vjp from \(qName)")
            }
        }
    }

    /// A bad scalar in the third block: both paths report the same error, naming the same index.
    @Test(arguments: ids)
    func errorsAreTheScalarLoopsErrors(_ name: String) throws {
        let (b, l) = try Self.pair(name)
        let d = b.dist, n = Self.n
        let g = Self.noise(n, seed: 3, uniform: false)
        var p = Self.parameters(d, n: n, broadcast: false, seed: 1)
        var x = Self.noise(n, seed: 4, uniform: false)
        x[700] = .nan
        let good = p
        #expect(Outcome { [try b.logProb(x, good)] } == Outcome { [try l.logProb(x, good)] }, "\(name) log_prob at x = NaN")
        let bad = Outcome { let r = try b.logProbVJP(x, good, g: g); return [r.dx] + r.dp }
        #expect(bad == Outcome { let r = try l.logProbVJP(x, good, g: g); return [r.dx] + r.dp }, "\(name) log_prob_vjp at x = NaN")
        if case .values = bad { Issue.record("\(name): log_prob_vjp accepted x = NaN") }
        x[700] = 0.5
        // A parameter outside its space (NaN is outside every space), in each slot in turn.
        for k in d.slots.indices {
            p = good
            p[k][300 + 50 * k] = .nan
            #expect(Outcome { [try b.logProb(x, p)] } == Outcome { [try l.logProb(x, p)] }, "\(name) log_prob, bad parameter in slot \(k)")
            #expect(Outcome { let r = try b.logProbVJP(x, p, g: g); return [r.dx] + r.dp }
                    == Outcome { let r = try l.logProbVJP(x, p, g: g); return [r.dx] + r.dp }, "\(name) log_prob_vjp, bad parameter in slot \(k)")
            guard d.family.canSample else { continue }
            let z = Self.noise(n * d.normalsPerScalar, seed: 5, uniform: false), u = Self.noise(n * d.uniformsPerScalar, seed: 6, uniform: true)
            let sb = Outcome { [try b.sample(p, n: n, normals: z, uniforms: u)] }
            #expect(sb == Outcome { [try l.sample(p, n: n, normals: z, uniforms: u)] }, "\(name) sample, bad parameter in slot \(k)")
            if case .values = sb { Issue.record("\(name): sample accepted a NaN parameter in slot \(k)") }
            #expect(Outcome { try b.sampleVJP(p, n: n, normals: z, uniforms: u, x: x, g: g) }
                    == Outcome { try l.sampleVJP(p, n: n, normals: z, uniforms: u, x: x, g: g) }, "\(name) sample_vjp, bad parameter in slot \(k)")
            #expect(Outcome { [try b.center(p, n: n)] } == Outcome { [try l.center(p, n: n)] }, "\(name) center, bad parameter in slot \(k)")
            let cb = Outcome { try b.centerVJP(p, n: n, g: g) }
            #expect(cb == Outcome { try l.centerVJP(p, n: n, g: g) }, "\(name) center_vjp, bad parameter in slot \(k)")
            if case .values = cb { Issue.record("\(name): center_vjp accepted a NaN parameter in slot \(k)") }
        }
        if d.family.canSample {
            // An infinite gradient seed: the gradient is not finite at that scalar.
            var gi = g
            gi[900] = .infinity
            #expect(Outcome { try b.centerVJP(good, n: n, g: gi) } == Outcome { try l.centerVJP(good, n: n, g: gi) }, "\(name) center_vjp, g = inf")
        }
        for qid in d.family.klFamilies {
            let qName = String(qid.dropFirst("org.blocktest.".count))
            let q = try Self.pair(qName).block.dist
            var qp = Self.parameters(q, n: n, broadcast: false, seed: 7)
            qp[q.slots.count - 1][800] = .nan
            #expect(Outcome { [try b.kl(posterior: q, qp, good, n: n)] } == Outcome { [try l.kl(posterior: q, qp, good, n: n)] }, "\(name) kl, bad posterior")
            #expect(Outcome { let r = try b.klVJP(posterior: q, qp, good, n: n, g: g); return r.dq + r.dp }
                    == Outcome { let r = try l.klVJP(posterior: q, qp, good, n: n, g: g); return r.dq + r.dp }, "\(name) kl_vjp, bad posterior")
        }
    }
}
