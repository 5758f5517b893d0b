// `flipout plugins check` on every bundled plugin (all pass) and on deliberately broken C plugins (each caught and named).
import Testing
import Foundation
import Flipout3D
import TestSupport

/// Builds each variant of Tests/Fixtures/conformance_plugin.c into its own temporary folder.
enum ConformanceFixture {
    static func build(_ defines: [String] = [], header: String = Fixtures.abiDirectory) throws -> String {
        let dir = try Fixtures.temporaryDirectory("flipout-conformance")
        let name = defines.first.map { $0.dropFirst(2).lowercased() } ?? "valid"
        let out = dir.appendingPathComponent("lib\(name).so")
        return try Fixtures.compileC([Fixtures.source("conformance_plugin.c")], output: out, flags: defines, header: header).path
    }
}

/// Runs `flipout plugins check TARGET --json` and decodes the report.
func checkReport(_ target: String, _ extra: [String] = []) throws -> (status: Int32, report: ConformanceReport, stderr: String) {
    let r = try FlipoutCLI.run(["plugins", "check", target, "--json"] + extra)
    let report = try JSONDecoder().decode(ConformanceReport.self, from: Data(r.stdout.utf8))
    return (r.status, report, r.stderr)
}

/// The generic check every bundled plugin's own tests call once: `flipout plugins check` passes.
func expectConformance(_ target: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let (status, report, stderr) = try checkReport(BuildProducts.plugin(target))
    let failures = report.results.filter { $0.outcome == .fail }
    #expect(failures.isEmpty, "\(failures.map { "\($0.check): \($0.detail)" }) \(stderr)", sourceLocation: sourceLocation)
    #expect(status == 0, sourceLocation: sourceLocation)
    // The checks the capabilities call for all ran: gradients, statistics, contracts.
    let ran = Set(report.results.filter { $0.outcome == .pass }.map(\.check))
    #expect(ran.isSuperset(of: ["log_prob", "log_prob_vjp", "add-not-overwrite", "null-gradients", "broadcast", "n=0", "domain-errors", "extremes", "threads"]), sourceLocation: sourceLocation)
    if report.results.contains(where: { $0.check == "sample" }) {
        #expect(ran.isSuperset(of: ["sample", "sample_vjp", "center", "center_vjp", "noise"]), sourceLocation: sourceLocation)
    }
}

@Suite struct PluginCheckTests {
    /// Normal, Gamma, ScaleMixture and StudentT call the check from their own test files.
    @Test(arguments: ["FlipoutBeta", "FlipoutGaussianMixture", "FlipoutLaplace"])
    func theOtherBundledPluginsPass(_ target: String) throws { try expectConformance(target) }

    @Test func theValidCFixturePassesEveryCheckAndPrintsATable() throws {
        let path = try ConformanceFixture.build()
        let (status, report, _) = try checkReport(path)
        #expect(status == 0)
        #expect(report.results.count == ConformanceSuite.allChecks.count, "\(report.results.map(\.check))")
        #expect(report.failures == 0, "\(report.results.filter { $0.outcome == .fail })")
        let table = try FlipoutCLI.run(["plugins", "check", path])
        #expect(table.status == 0)
        #expect(table.stdout.hasPrefix("FAMILY"))
        #expect(table.stdout.contains("org.test.cnormal  kl_vjp"))
        #expect(table.stdout.contains("18 passed, 0 failed\n"))
    }

    /// (defines, the check that must fail, text its detail must hold)
    static let broken: [(String, String, [String])] = [
        ("-DWRONG_GRADIENT", "log_prob_vjp", ["d/dscale", "central finite differences in Double"]),
        ("-DOVERWRITE", "add-not-overwrite", ["overwrites", "instead of adding"]),
        ("-DWRITES_NULL", "null-gradients", ["crashed (SIGSEGV) in log_prob_vjp", "(scale) = NULL"]),
        ("-DFALSE_SYMMETRY", "symmetry", ["declares FLIPOUT_CAP_SYMMETRIC", "Kolmogorov-Smirnov"]),
        ("-DUNDER_DECLARED_NOISE", "noise", ["crashed (SIGSEGV) in sample", "guard pages", "1 normals"]),
        ("-DTRAP", "log_prob_vjp", ["crashed (SIGILL) in log_prob_vjp at loc=0, scale=0.001"]),
        ("-DHANG", "log_prob", ["hung (no answer within 2.0 s; killed) in sample at loc=0, scale=0.001"]),
        ("-DNAN_OK", "domain-errors", ["with status OK", "must give FLIPOUT_STATUS_DOMAIN_ERROR"]),
        ("-DNONFINITE_OK", "extremes", ["calls returned NaN or an infinity with status OK", "must be FLIPOUT_STATUS_DOMAIN_ERROR"]),
        ("-DREFUSES_TAIL_NOISE", "extremes", ["draws at ordinary parameters failed with noise the host's generator draws", "normals 6.5", "noise beyond 6"]),
    ]

    @Test(arguments: broken.indices)
    func eachBrokenFixtureIsCaughtAndNamed(_ index: Int) throws {
        let (define, check, says) = Self.broken[index]
        let path = try ConformanceFixture.build([define])
        let (status, report, _) = try checkReport(path, ["--timeout", "2"])
        #expect(status == 1, "\(define): a failing check must exit 1")
        let failed = report.results.filter { $0.outcome == .fail }
        let named = try #require(failed.first { $0.check == check }, "\(define): \(check) did not fail; failures: \(failed.map { "\($0.check): \($0.detail)" })")
        for s in says { #expect(named.detail.contains(s), "\(define): \"\(named.detail)\" lacks \"\(s)\"") }
    }

    @Test func anUnknownIDIsACommandLineError() throws {
        let r = try FlipoutCLI.run(["plugins", "check", "org.example.nothing"])
        #expect(r.status == 64, "\(r.status) \(r.stderr)")
        #expect(r.stderr.contains("no loaded plugin provides \"org.example.nothing\""), "\(r.stderr)")
    }

    @Test func aPluginThatCrashesWhileLoadingIsReportedNotFatal() throws {
        let path = try BadPlugin.build("nullfn", ["-DNULL_LOG_PROB"])
        let (status, report, _) = try checkReport(path)
        #expect(status == 1)
        #expect(report.results.count == 1 && report.results[0].check == "load")
        #expect(report.results[0].detail.contains("log_prob is NULL"), "\(report.results[0].detail)")
    }
}
