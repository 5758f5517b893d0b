// A third-party Swift prior built with scripts/build-plugin in a temporary folder, loaded into the built host.
import Testing
import Foundation
import Flipout3D
import TestSupport

/// The plugin source a newcomer would write (the same shape as docs/write-your-own-prior.md).
enum OutOfTreePlugin {
    static let source = #"""
    // A Cauchy prior built out of tree: the SDK's sources are compiled into this module.
    import PluginABI
    #if canImport(Glibc)
    import Glibc
    #endif

    struct Cauchy: ScalarDistribution {
        static let family = FamilyInfo(
            id: "org.example.cauchy", name: "Cauchy", version: "0.2.0",
            description: "Cauchy(loc, scale): heavy-tailed prior.",
            capabilities: [],
            parameters: [
                ParameterSpec("loc", "location (median)", default: 0),
                ParameterSpec("scale", "scale, > 0", transform: .softplus, default: 0.1),
            ])

        init(hyperparameters: [Double]) throws {}

        func validate(_ p: Params) throws {
            guard p[1] > 0 else { throw PluginError.domain("Cauchy: scale must be > 0 (got \(p[1]))") }
        }

        // log p(x) = -log(pi * s * (1 + z^2)), z = (x - loc) / s
        func logProb(_ x: Double, _ p: Params) -> Double {
            let z = (x - p[0]) / p[1]
            return -log(Double.pi * p[1] * (1 + z * z))
        }

        func logProbGradient(_ x: Double, _ p: Params, _ dp: ParamGradient) -> Double {
            let s = p[1], z = (x - p[0]) / s, d = 1 + z * z
            dp[0] = 2 * z / (s * d)
            dp[1] = -1 / s + 2 * z * z / (s * d)
            return -2 * z / (s * d)
        }
    }

    @_cdecl("flipout_plugin_entry_v1")
    public func flipoutPluginEntry(_ host: UnsafePointer<flipout_host>?) -> UnsafeRawPointer? {
        PluginExport.library(name: "Example priors", host: host, families: [Cauchy.self])
    }
    """#

    /// Built once per test process: (the folder, the .so path), or the build error.
    static let built: Result<(dir: URL, so: String), Error> = Result(catching: {
        let dir = try Fixtures.temporaryDirectory("flipout-oot")
        try source.write(to: dir.appendingPathComponent("MyPrior.swift"), atomically: true, encoding: .utf8)
        // Run from the plugin's folder with relative paths, as a newcomer would.
        let script = Fixtures.packageRoot.appendingPathComponent("scripts/build-plugin").path
        let r = try Subprocess.run(script, ["-o", "libMyPrior.so", "--module-name", "ExampleCauchyPrior", "MyPrior.swift"], in: dir)
        guard r.status == 0 else { throw FixtureError("scripts/build-plugin failed (\(r.status)):\n\(r.stderr)\(r.stdout)") }
        return (dir, dir.appendingPathComponent("libMyPrior.so").path)
    })

    static func so() throws -> String { try built.get().so }
}

enum CauchyReference {
    static func logPDF(_ x: Double, _ m: Double, _ s: Double) -> Double { -log(Double.pi * s * (1 + pow((x - m) / s, 2))) }
}

@Suite struct OutOfTreePluginTests {
    @Test func buildsLoadsAndMatchesClosedForm() throws {
        let lib = try PluginLibrary.load(try OutOfTreePlugin.so())
        #expect(lib.name == "Example priors")
        let family = try #require(lib.families.first)
        #expect(family.id == "org.example.cauchy")
        #expect(family.version == "0.2.0")
        #expect(family.stdlib == "dynamic")
        let h = PluginHarness(try family.instantiate())

        let xs: [Float] = [-3, -0.2, 0, 0.4, 5]
        let locs: [Float] = [0, 0.1, -0.5, 0.4, 1]
        let scales: [Float] = [1, 0.1, 2, 0.5, 3]
        let lp = try h.logProb(xs, [locs, scales])
        for i in xs.indices {
            let ref = CauchyReference.logPDF(Double(xs[i]), Double(locs[i]), Double(scales[i]))
            #expect(isClose(Double(lp[i]), ref, rtol: 1e-6, atol: 1e-6), "i=\(i): \(lp[i]) vs \(ref)")
        }
        let g: [Float] = [1, 0.5, -1, 2, 1]
        let (dx, dp) = try h.logProbVJP(xs, [locs, scales], g: g)
        for i in xs.indices {
            let x = Double(xs[i]), m = Double(locs[i]), s = Double(scales[i]), gi = Double(g[i])
            #expect(isClose(Double(dx[i]), gi * centralDifference({ CauchyReference.logPDF($0, m, s) }, at: x), rtol: 1e-4, atol: 1e-4), "dx i=\(i)")
            #expect(isClose(Double(dp[0][i]), gi * centralDifference({ CauchyReference.logPDF(x, $0, s) }, at: m), rtol: 1e-4, atol: 1e-4), "dloc i=\(i)")
            #expect(isClose(Double(dp[1][i]), gi * centralDifference({ CauchyReference.logPDF(x, m, $0) }, at: s, h: 1e-6), rtol: 1e-4, atol: 1e-4), "dscale i=\(i)")
        }
        // Swift errors become status codes with the author's message.
        do {
            _ = try h.logProb([1], [[0], [-1]])
            Issue.record("a negative scale was accepted")
        } catch let e as PluginCallError {
            #expect(e.status == 3 && e.message.contains("Cauchy: scale must be > 0"), "\(e)")
        }
    }

    @Test func exportsOnlyTheEntrySymbol() throws {
        #expect(try ExportedSymbols.definedFunctions(try OutOfTreePlugin.so()) == ["flipout_plugin_entry_v1"])
    }

    @Test func cliInspectsTheBuiltFile() throws {
        let so = try OutOfTreePlugin.so()
        let r = try FlipoutCLI.run(["plugins", "inspect", so])
        #expect(r.status == 0, "\(r.stderr)")
        for s in ["library  Example priors", "file     \(so)", "org.example.cauchy  (Cauchy 0.2.0)", "scale  softplus", "dynamic stdlib"] {
            #expect(r.stdout.contains(s), "missing \"\(s)\" in:\n\(r.stdout)")
        }
        let sha = try #require(r.stdout.split(separator: "\n").first { $0.hasPrefix("sha256") })
        #expect(sha.split(separator: " ").last.map { $0.count == 64 } == true)
        // A relative path from the plugin's folder works too.
        let rel = try FlipoutCLI.run(["plugins", "inspect", "./libMyPrior.so"], in: try OutOfTreePlugin.built.get().dir)
        #expect(rel.status == 0 && rel.stdout.contains("org.example.cauchy"), "\(rel.stderr)")
    }

    @Test func cliListsItBesideTheBundledPlugins() throws {
        let so = try OutOfTreePlugin.so()
        let r = try FlipoutCLI.run(["plugins", "list", "--plugin", so])
        #expect(r.status == 0, "\(r.stderr)")
        let rows = r.stdout.split(separator: "\n").map(String.init)
        let row = try #require(rows.first { $0.hasPrefix("org.example.cauchy ") }, "\(r.stdout)")
        #expect(row.contains("0.2.0") && row.contains("Example priors") && row.hasSuffix(so), "\(row)")
        #expect(rows.contains { $0.hasPrefix("org.flipout3d.normal ") })
    }
}
