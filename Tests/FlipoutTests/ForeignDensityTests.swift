// --foreign-prior: plain C log densities (Tests/Fixtures/foreign_densities.c) as prior families through libffi.
import Testing
import Foundation
import Flipout3D
import TestSupport

/// Tests/Fixtures/foreign_densities.c compiled once per test process.
enum ForeignFixture {
    private static let built: Result<String, Error> = Result {
        let dir = try Fixtures.temporaryDirectory("flipout-foreign")
        return try Fixtures.compileC([Fixtures.source("foreign_densities.c")], output: dir.appendingPathComponent("libforeign.so")).path
    }
    static func library() throws -> String { try built.get() }

    static func cauchySpec(id: String = "org.example.cauchy") throws -> String {
        "\(try library()):cauchy_logpdf(x:d, loc:d=0, scale:d=1)->d@\(id)"
    }
    static func logisticSpec() throws -> String { "\(try library()):logistic_logpdf_f(x:f,s:f=1)->f" }

    static func family(_ spec: String) throws -> DistributionFamily {
        let lib = try ForeignDensityFamily.load(spec)
        return try #require(lib.families.first)
    }

    // Closed forms and their derivatives.
    static func cauchy(_ x: Double, _ loc: Double, _ scale: Double) -> Double {
        let z = (x - loc) / scale
        return -Foundation.log(Double.pi * scale) - Foundation.log1p(z * z)
    }
    /// (d/dx, d/dloc, d/dscale) of cauchy.
    static func cauchyGradient(_ x: Double, _ loc: Double, _ scale: Double) -> (Double, Double, Double) {
        let z = (x - loc) / scale, q = 1 + z * z
        let dx = -2 * z / (scale * q)
        return (dx, -dx, -1 / scale + 2 * z * z / (scale * q))
    }
    static func logistic(_ x: Double, _ s: Double) -> Double {
        let z = x / s
        return -z - 2 * Foundation.log1p(Foundation.exp(-z)) - Foundation.log(s)
    }
    /// (d/dx, d/ds) of logistic.
    static func logisticGradient(_ x: Double, _ s: Double) -> (Double, Double) {
        let t = Foundation.tanh(x / s / 2)
        return (-t / s, x * t / (s * s) - 1 / s)
    }
}

/// log_prob over contiguous x with per-slot (values, stride) parameters.
private func logProb(_ d: Distribution, _ x: [Float], _ params: [([Float], Int)]) throws -> [Float] {
    var out = [Float](repeating: .nan, count: x.count)
    let copies = params.map { UnsafeMutableBufferPointer<Float>.allocate(capacity: $0.0.count) }
    defer { copies.forEach { $0.deallocate() } }
    for (c, p) in zip(copies, params) { _ = c.initialize(from: p.0) }
    try x.withUnsafeBufferPointer { xb in try out.withUnsafeMutableBufferPointer { ob in
        try d.logProb(n: x.count, params: zip(copies, params).map { InArray(UnsafePointer($0.0.baseAddress!), stride: $0.1.1) },
                      x: xb.baseAddress!, out: ob.baseAddress!)
    } }
    return out
}

/// log_prob_vjp: returns (grad_x, grad_params), starting from `initial` in every gradient cell
/// (the VJP adds). Gradient slots use the same strides as their parameters.
private func vjp(_ d: Distribution, _ x: [Float], _ params: [([Float], Int)], g: [Float], initial: Float = 0,
                 wantX: Bool = true) throws -> ([Float], [[Float]]) {
    var gx = [Float](repeating: initial, count: x.count)
    var grads = params.map { [Float](repeating: initial, count: $0.0.count) }
    let inCopies = params.map { UnsafeMutableBufferPointer<Float>.allocate(capacity: $0.0.count) }
    let outCopies = params.map { UnsafeMutableBufferPointer<Float>.allocate(capacity: $0.0.count) }
    defer { inCopies.forEach { $0.deallocate() }; outCopies.forEach { $0.deallocate() } }
    for k in params.indices {
        _ = inCopies[k].initialize(from: params[k].0)
        _ = outCopies[k].initialize(from: grads[k])
    }
    try x.withUnsafeBufferPointer { xb in try g.withUnsafeBufferPointer { gb in try gx.withUnsafeMutableBufferPointer { gxb in
        try d.logProbVJP(n: x.count, params: params.indices.map { InArray(UnsafePointer(inCopies[$0].baseAddress!), stride: params[$0].1) },
                         x: xb.baseAddress!, g: gb.baseAddress!, gradX: wantX ? gxb.baseAddress! : nil,
                         gradParams: params.indices.map { OutArray(outCopies[$0].baseAddress!, stride: params[$0].1) })
    } } }
    for k in params.indices { grads[k] = Array(outCopies[k]) }
    return (gx, grads)
}

@Suite struct ForeignDensityTests {
    let xs: [Float] = [-3, -0.7, 0, 0.25, 1.5, 4, 12]

    @Test func theForeignFunctionIsCalledWithTheDeclaredTypes() throws {
        let f = try ForeignFunction(ForeignPriorSpec(parsing: try ForeignFixture.cauchySpec()))
        #expect(f.arity == 3)
        #expect(abs(f(0.5, 0.25, 2) - ForeignFixture.cauchy(0.5, 0.25, 2)) < 1e-15)
        let l = try ForeignFunction(ForeignPriorSpec(parsing: try ForeignFixture.logisticSpec()))
        #expect(abs(l(0.5, 2) - Double(Float(ForeignFixture.logistic(0.5, 2)))) < 1e-6)
    }

    @Test func familyLooksLikeAPriorPlugin() throws {
        let family = try ForeignFixture.family(try ForeignFixture.cauchySpec())
        #expect(family.id == "org.example.cauchy")
        #expect(family.name == "cauchy_logpdf")
        #expect(family.capabilities == [])
        #expect(family.parameters.map(\.name) == ["loc", "scale"])
        #expect(family.parameters.map(\.defaultValue) == [0, 1])
        #expect(family.parameters.allSatisfy { $0.transform == .identity })
        #expect(family.hyperparameters.isEmpty && family.klFamilies.isEmpty)
        #expect(family.library.name == "foreign: cauchy_logpdf")
        #expect(family.file == DynamicLibrary.resolve(try ForeignFixture.library()))
        let digest = SHA256.hex(try Data(contentsOf: URL(fileURLWithPath: family.file)))
        #expect(family.library.sha256 == digest && digest.count == 64)
        #expect(family.summary.contains("finite differences"))
        // The same spec loads once per process.
        #expect(try ForeignDensityFamily.load(try ForeignFixture.cauchySpec()) === family.library)
        // No @ID: foreign.<symbol>.
        #expect(try ForeignFixture.family(try ForeignFixture.logisticSpec()).id == "foreign.logistic_logpdf_f")
    }

    @Test func logProbMatchesTheClosedForm() throws {
        let cauchy = try ForeignFixture.family(try ForeignFixture.cauchySpec()).instantiate()
        let locs: [Float] = xs.indices.map { Float($0) * 0.3 - 1 }
        let scales: [Float] = xs.indices.map { 0.5 + Float($0) * 0.4 }
        let out = try logProb(cauchy, xs, [(locs, 1), (scales, 1)])
        for i in xs.indices {
            let want = ForeignFixture.cauchy(Double(xs[i]), Double(locs[i]), Double(scales[i]))
            #expect(abs(Double(out[i]) - want) <= 1e-6 * (1 + abs(want)), "x=\(xs[i]): \(out[i]) vs \(want)")
        }
        let logistic = try ForeignFixture.family(try ForeignFixture.logisticSpec()).instantiate()
        let lout = try logProb(logistic, xs, [([0.8], 0)])
        for i in xs.indices {
            let want = ForeignFixture.logistic(Double(xs[i]), 0.8)
            #expect(abs(Double(lout[i]) - want) <= 2e-6 * (1 + abs(want)), "x=\(xs[i]): \(lout[i]) vs \(want)")
        }
    }

    @Test func vjpMatchesTheAnalyticDerivative() throws {
        let cauchy = try ForeignFixture.family(try ForeignFixture.cauchySpec()).instantiate()
        let locs: [Float] = xs.indices.map { Float($0) * 0.3 - 1 }
        let scales: [Float] = xs.indices.map { 0.5 + Float($0) * 0.4 }
        let g: [Float] = xs.indices.map { 0.5 + Float($0) * 0.25 }
        let (gx, gp) = try vjp(cauchy, xs, [(locs, 1), (scales, 1)], g: g)
        // A double function: central differences with h = 1e-5 |v| are good to ~1e-9 here;
        // the float outputs bound what can be checked.
        for i in xs.indices {
            let (dx, dloc, dscale) = ForeignFixture.cauchyGradient(Double(xs[i]), Double(locs[i]), Double(scales[i]))
            let gi = Double(g[i])
            for (got, want, what) in [(gx[i], gi * dx, "x"), (gp[0][i], gi * dloc, "loc"), (gp[1][i], gi * dscale, "scale")] {
                #expect(abs(Double(got) - want) <= 1e-5 * (1 + abs(want)), "d/d\(what) at \(i): \(got) vs \(want)")
            }
        }
        // A float function: rounding to float limits finite differences to about 1e-4 here.
        let logistic = try ForeignFixture.family(try ForeignFixture.logisticSpec()).instantiate()
        let s: [Float] = xs.indices.map { 0.6 + Float($0) * 0.2 }
        let (lgx, lgp) = try vjp(logistic, xs, [(s, 1)], g: g)
        for i in xs.indices {
            let (dx, ds) = ForeignFixture.logisticGradient(Double(xs[i]), Double(s[i]))
            let gi = Double(g[i])
            #expect(abs(Double(lgx[i]) - gi * dx) <= 1e-3 * (1 + abs(gi * dx)), "d/dx at \(i): \(lgx[i]) vs \(gi * dx)")
            #expect(abs(Double(lgp[0][i]) - gi * ds) <= 1e-3 * (1 + abs(gi * ds)), "d/ds at \(i): \(lgp[0][i]) vs \(gi * ds)")
        }
    }

    @Test func broadcastGradientSlotsAccumulateTheSum() throws {
        let cauchy = try ForeignFixture.family(try ForeignFixture.cauchySpec()).instantiate()
        let g: [Float] = xs.indices.map { 1 - Float($0) * 0.2 }
        // Broadcast loc and scale; gradient cells start at 1 (the VJP adds), grad_x not wanted.
        let (gx, gp) = try vjp(cauchy, xs, [([0.5], 0), ([2], 0)], g: g, initial: 1, wantX: false)
        #expect(gx.allSatisfy { $0 == 1 }, "grad_x was not wanted but written: \(gx)")
        var sumLoc = 0.0, sumScale = 0.0
        for i in xs.indices {
            let (_, dloc, dscale) = ForeignFixture.cauchyGradient(Double(xs[i]), 0.5, 2)
            sumLoc += Double(g[i]) * dloc; sumScale += Double(g[i]) * dscale
        }
        #expect(gp[0].count == 1 && gp[1].count == 1)
        #expect(abs(Double(gp[0][0]) - (1 + sumLoc)) <= 1e-5 * (1 + abs(sumLoc)), "loc: \(gp[0][0]) vs \(1 + sumLoc)")
        #expect(abs(Double(gp[1][0]) - (1 + sumScale)) <= 1e-5 * (1 + abs(sumScale)), "scale: \(gp[1][0]) vs \(1 + sumScale)")
        // The same as the per-scalar gradients summed.
        let (_, perScalar) = try vjp(cauchy, xs, [(Array(repeating: 0.5, count: xs.count), 1), (Array(repeating: 2, count: xs.count), 1)], g: g)
        #expect(abs(gp[1][0] - 1 - perScalar[1].reduce(0, +)) <= 1e-5)
    }

    @Test func aNaNFromTheFunctionIsADomainErrorNamingTheCall() throws {
        let cauchy = try ForeignFixture.family(try ForeignFixture.cauchySpec()).instantiate()
        #expect {
            _ = try logProb(cauchy, [0.1, 0.2], [([0], 0), ([-1], 0)])
        } throws: { error in
            guard let e = error as? PluginCallError else { return false }
            return e.status == 3 && e.function == "log_prob" && e.family == "org.example.cauchy"
                && e.message.contains("cauchy_logpdf(x=0.10000000149011612, loc=0.0, scale=-1.0) returned nan")
        }
        #expect {
            _ = try vjp(cauchy, [0.1], [([0], 0), ([-1], 0)], g: [1])
        } throws: { error in
            guard let e = error as? PluginCallError else { return false }
            return e.status == 3 && e.function == "log_prob_vjp" && e.message.contains("cauchy_logpdf(") && e.message.contains("returned nan")
        }
    }

    @Test(arguments: [
        ("libx.so:f(x:d,s:d=1)", "no return type after ')'"),
        ("libx.so:f(x:d,s:d=1)->q", "unsupported return type \"q\""),
        ("f(x:d,s:d=1)->d", "no ':' between the library path and the symbol"),
        ("libx.so:f x:d,s:d=1)->d", "')' without '('"),
        ("libx.so:f(x:i,s:d=1)->d", "unsupported type \"i\" for argument x"),
        ("libx.so:f(x:d,s:long=1)->d", "unsupported type \"long\" for argument s"),
        ("libx.so:f(x:d,s)->d", "argument 2 \"s\" needs a name and a type"),
        ("libx.so:f(loc:d,scale:d=1)->d", "the first argument is \"loc\", but it must be x"),
        ("libx.so:f(x:d)->d", "a prior family needs at least one parameter"),
        ("libx.so:f(x:d,scale:d)->d", "parameter scale has no value; give it a default, e.g. scale:d=1"),
        ("libx.so:f(x:d,s:d=1,s:d=2)->d", "argument name s appears twice"),
        ("libx.so:f(x:d,s:d=wide)->d", "the default of s, \"wide\", is not a finite number"),
        ("libx.so:f(x:d=0,s:d=1)->d", "x cannot have a default"),
        ("libx.so:f(x:d,s:d=1)->d@cauchy", "id \"cauchy\" is not a reverse-DNS name"),
        ("libx.so:3f(x:d,s:d=1)->d", "\"3f\" is not a C symbol name"),
    ])
    func badSpecsSayWhatIsWrong(spec: String, says: String) throws {
        do {
            _ = try ForeignDensityFamily.load(spec)
            Issue.record("\(spec) loaded")
        } catch let e as PluginLoadError {
            #expect(e.kind == .badForeignSpec, "\(e)")
            #expect(e.description.contains("--foreign-prior \"\(spec)\""), "\(e)")
            #expect(e.description.contains(says), "\(e)")
            #expect(e.description.contains("The form is PATH:SYMBOL("), "\(e)")
        }
    }

    @Test func missingSymbolAndMissingFileNameTheFile() throws {
        let lib = try ForeignFixture.library()
        do {
            _ = try ForeignDensityFamily.load("\(lib):gauss_logpdf(x:d,s:d=1)->d")
            Issue.record("a missing symbol loaded")
        } catch let e as PluginLoadError {
            #expect(e.kind == .missingSymbol)
            #expect(e.description.contains(DynamicLibrary.resolve(lib)) && e.description.contains("does not export gauss_logpdf")
                    && e.description.contains("nm -D"), "\(e)")
        }
        let missing = try Fixtures.temporaryDirectory().appendingPathComponent("libnone.so").path
        do {
            _ = try ForeignDensityFamily.load("\(missing):f(x:d,s:d=1)->d")
            Issue.record("a missing file loaded")
        } catch let e as PluginLoadError {
            #expect(e.kind == .notFound)
            #expect(e.description.contains(missing) && e.description.contains("--foreign-prior"), "\(e)")
        }
    }

    @Test func theRegistryTreatsForeignPriorsLikePlugins() throws {
        let search = PluginSearch(environmentPath: nil, bundledDirectory: nil,
                                  foreignPriors: [try ForeignFixture.cauchySpec(), try ForeignFixture.logisticSpec(), try ForeignFixture.cauchySpec()])
        let registry = try PluginRegistry(search)
        #expect(registry.families.map(\.id) == ["org.example.cauchy", "foreign.logistic_logpdf_f"])
        #expect(try registry.family("org.example.cauchy").library.name == "foreign: cauchy_logpdf")
        // One id from two specs is a duplicate, like two plugins.
        let twice = PluginSearch(environmentPath: nil, bundledDirectory: nil,
                                 foreignPriors: [try ForeignFixture.cauchySpec(), "\(try ForeignFixture.library()):logistic_logpdf_f(x:f,s:f=1)->f@org.example.cauchy"])
        do {
            _ = try PluginRegistry(twice)
            Issue.record("a duplicate id was accepted")
        } catch let e as PluginLoadError {
            #expect(e.kind == .duplicateID && e.description.contains("org.example.cauchy") && e.description.contains("@ID"), "\(e)")
        }
    }

    @Test func cliInspectShowsTheForeignPrior() throws {
        let spec = try ForeignFixture.cauchySpec()
        let r = try FlipoutCLI.run(["plugins", "inspect", "--foreign-prior", spec, "org.example.cauchy"])
        #expect(r.status == 0, "\(r.stderr)")
        for s in ["library  foreign: cauchy_logpdf", "file     \(DynamicLibrary.resolve(try ForeignFixture.library()))",
                  "org.example.cauchy  (cauchy_logpdf 0.0.0)", "double cauchy_logpdf(double x, double loc, double scale)",
                  "capabilities     none", "loc    identity   0 ", "scale  identity   1 ", "hyperparameters  none",
                  "analytic KL      none (Monte Carlo)"] {
            #expect(r.stdout.contains(s), "missing \"\(s)\" in:\n\(r.stdout)")
        }
        let list = try FlipoutCLI.run(["plugins", "list", "--no-bundled", "--foreign-prior", spec])
        #expect(list.status == 0 && list.stdout.contains("org.example.cauchy"), "\(list.stdout)\(list.stderr)")
        // A malformed spec is a command-line error (exit 64) with the message.
        let bad = try FlipoutCLI.run(["plugins", "inspect", "--foreign-prior", "libx.so:f(y:d,s:d=1)->d", "foreign.f"])
        #expect(bad.status == 64 && bad.stderr.contains("must be x"), "\(bad.status) \(bad.stderr)")
    }
}

@Suite struct ForeignConstrainedParameterTests {
    var positiveSpec: String { get throws { "\(try ForeignFixture.library()):cauchy_logpdf(x:d, loc:d=0, scale:d=1>0)->d@org.example.positive" } }

    @Test func aParameterDeclaredPositiveIsStoredThroughSoftplus() throws {
        let spec = try ForeignPriorSpec(parsing: try positiveSpec)
        #expect(spec.arguments.map(\.positive) == [false, false, true])
        #expect(spec.signature == "cauchy_logpdf(x:d, loc:d=0, scale:d=1>0)->d")
        let f = try ForeignFixture.family(try positiveSpec)
        #expect(f.parameters.map(\.transform) == [.identity, .softplus])
        let h = PluginHarness(try f.instantiate())
        let lp = try h.logProb([0.5], [[0], [2]])
        #expect(isClose(Double(lp[0]), ForeignFixture.cauchy(0.5, 0, 2), rtol: 1e-6, atol: 1e-6))
        // A value <= 0 never reaches the function: it is a domain error naming the parameter.
        do { _ = try h.logProb([0.5], [[0], [-1]]); Issue.record("scale -1 was accepted") } catch let e as PluginCallError {
            #expect(e.status == 3 && e.message.contains("scale = -1.0") && e.message.contains("> 0"), "\(e)")
        }
    }

    @Test func learningThePriorKeepsItValid() throws {
        // A large gradient step in the unconstrained storage still gives a positive scale.
        let prior = try ForeignFixture.family(try positiveSpec)
        let posterior = try PluginLibrary.load(BuildProducts.plugin("FlipoutNormal")).families[0]
        var s = RandomStream(seed: 3, layer: 0, step: 0, purpose: .test)
        let w = try VariationalWeights(name: "w", count: 16, posterior: try posterior.instantiate(), prior: try prior.instantiate(),
                                       priorValues: ["scale": 0.5], learnPrior: true, klMode: .monteCarlo(samples: 1), initStream: &s)
        w.priorParameters[1] -= 50
        w.refresh()
        let scale = try #require(w.priorValues.first { $0.0 == "scale" }?.1)
        #expect(scale > 0, "softplus storage keeps the scale positive (got \(scale))")
        #expect(try w.kl(gradientScale: 1, stream: &s).isFinite)
    }

    @Test func malformedConstraintsAreCommandLineErrors() throws {
        for (bad, says) in [("scale:d=1>1", "the only constraint is >0"), ("scale:d=-1>0", "declared >0 but its default is -1")] {
            #expect(throws: PluginLoadError.self) { _ = try ForeignPriorSpec(parsing: "libx.so:f(x:d,\(bad))->d") }
            do { _ = try ForeignPriorSpec(parsing: "libx.so:f(x:d,\(bad))->d") } catch { #expect("\(error)".contains(says), "\(error)") }
        }
    }

    @Test func aForeignPriorPassesPluginsCheck() throws {
        let r = try FlipoutCLI.run(["plugins", "check", "org.example.positive", "--foreign-prior", try positiveSpec, "--json"])
        let report = try JSONDecoder().decode(ConformanceReport.self, from: Data(r.stdout.utf8))
        #expect(r.status == 0 && report.failures == 0, "\(report.results.filter { $0.outcome == .fail }) \(r.stderr)")
    }
}
