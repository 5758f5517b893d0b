// Every function of every bundled plugin, through the C ABI, at denormal, huge, ±inf and NaN inputs:
// no NaN or infinity with status OK (the header's rule); and the reproducers of issue 20, one by one.
import Testing
import Foundation
import Flipout3D
import TestSupport

@Suite struct ExtremeInputsPluginTests {
    static let targets = ["FlipoutNormal", "FlipoutGamma", "FlipoutBeta", "FlipoutLaplace", "FlipoutScaleMixture", "FlipoutStudentT", "FlipoutGaussianMixture"]

    static func allFamilies() throws -> [DistributionFamily] {
        try targets.flatMap { try PluginLibrary.load(BuildProducts.plugin($0)).families }
    }

    /// Issue 20, must show: the `extremes` probe of `plugins check`, run in process on each bundled
    /// family (KL partners from the other bundled plugins): denormal, huge, ±inf and NaN parameters,
    /// x, noise and upstream gradients through log_prob, log_prob_vjp, sample, sample_vjp, center,
    /// center_vjp, kl and kl_vjp, n = 1 per call. No call returns a non-finite value with status OK,
    /// every function the family has was reached, and ordinary parameters sample for all host noise.
    @Test(arguments: targets)
    func noNonFiniteValueWithStatusOK(_ target: String) throws {
        let all = try Self.allFamilies()
        for family in try PluginLibrary.load(BuildProducts.plugin(target)).families {
            let suite = try ConformanceSuite(family: family, partner: { id in all.first { $0.id == id } }, probe: { _ in })
            let r = suite.run("extremes")
            #expect(r.outcome == .pass, "\(family.id): \(r.detail)")
            var functions = ["log_prob", "log_prob_vjp"]
            if family.canSample { functions += ["sample", "sample_vjp", "center", "center_vjp"] }
            if !family.klFamilies.isEmpty { functions += ["kl", "kl_vjp"] }
            for f in functions {
                #expect(r.detail.contains(", \(f) ") || r.detail.contains("(\(f) "), "\(family.id): \(f) was not probed: \(r.detail)")
            }
            let calls = Int(r.detail.prefix { $0.isNumber }) ?? 0
            #expect(calls >= 5000, "\(family.id): only \(calls) calls")
        }
    }

    func expectDomainError(_ what: String, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
        do {
            try body()
            Issue.record("\(what): status OK, expected DOMAIN_ERROR", sourceLocation: sourceLocation)
        } catch let e as PluginCallError {
            #expect(e.status == 3, "\(what): \(e.statusName): \(e.message)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("\(what): \(error)", sourceLocation: sourceLocation)
        }
    }

    /// Each failure the issue lists, by value: a result beyond float is DOMAIN_ERROR.
    @Test func theIssuesReproducersAreDomainErrors() throws {
        let normal = try PluginHarness.bundled("FlipoutNormal", "org.flipout3d.normal")
        let gamma = try PluginHarness.bundled("FlipoutGamma", "org.flipout3d.gamma")
        let beta = try PluginHarness.bundled("FlipoutBeta", "org.flipout3d.beta")
        let laplace = try PluginHarness.bundled("FlipoutLaplace", "org.flipout3d.laplace")
        let mixture = try PluginHarness.bundled("FlipoutGaussianMixture", "org.flipout3d.gaussian-mixture")
        // d/dscale = (z^2 - 1)/scale = 1e111 at scale 1e-37, x = 1.
        expectDomainError("Normal d/dscale at scale 1e-37") { _ = try normal.logProbVJP([1], [[0], [1e-37]], g: [1]) }
        // d/dx = (a - 1)/x - rate = 1e40 at x = 1e-40 (Beta: (alpha - 1)/x = 1.9e41).
        expectDomainError("Gamma d/dx at x = 1e-40") { _ = try gamma.logProbVJP([1e-40], [[2], [20]], g: [1]) }
        expectDomainError("Beta d/dx at x = 1e-40") { _ = try beta.logProbVJP([1e-40], [[20], [200]], g: [1]) }
        expectDomainError("Laplace d/dscale at x = NaN") { _ = try laplace.logProbVJP([.nan], [[0], [1]], g: [1]) }
        for loc: Float in [.nan, .infinity, -.infinity] {
            expectDomainError("Normal kl_vjp at posterior loc \(loc)") { _ = try normal.klVJP(posterior: normal.dist, [[loc], [0.1]], [[0], [1]], n: 1, g: [1]) }
            expectDomainError("Normal kl at posterior loc \(loc)") { _ = try normal.kl(posterior: normal.dist, [[loc], [0.1]], [[0], [1]], n: 1) }
        }
        expectDomainError("Normal sample at noise +inf") { _ = try normal.sample([[0], [1]], n: 1, normals: [.infinity], uniforms: []) }
        expectDomainError("mixture sample at noise +inf") {
            _ = try mixture.sample([[0], [0], [0], [1], [1], [1]], n: 1, normals: [.infinity], uniforms: [0.5])
        }
        // Finite where the true value is finite: ordinary neighbours of those points.
        #expect(try normal.logProbVJP([1], [[0], [1e-3]], g: [1]).dp[1][0].isFinite)
        let dx = try gamma.logProbVJP([1e-30], [[2], [20]], g: [1]).dx[0]
        #expect(isClose(Double(dx), 1 / Double(Float(1e-30)) - 20, rtol: 1e-6, atol: 0), "\(dx)")
    }

    /// log_prob(NaN) is DOMAIN_ERROR in every bundled family (the header's "result that would not
    /// be finite"; Gamma, Beta and the scale mixture answered -inf with OK), and so is its VJP.
    @Test(arguments: targets)
    func logProbOfNaNIsADomainError(_ target: String) throws {
        for family in try PluginLibrary.load(BuildProducts.plugin(target)).families {
            let h = PluginHarness(try family.instantiate())
            let point = h.dist.slots.map { [$0.parameter.priorValue] }
            expectDomainError("\(family.id) log_prob(NaN)") { _ = try h.logProb([.nan], point) }
            expectDomainError("\(family.id) log_prob_vjp(NaN)") { _ = try h.logProbVJP([.nan], point, g: [1]) }
            // Outside the support (or at ±inf) log_prob is -inf with OK, never NaN.
            let lp = try h.logProb([.infinity, -.infinity], point)
            #expect(lp == [-.infinity, -.infinity], "\(family.id): \(lp)")
        }
    }
}
