// The prior from docs/write-your-own-prior.md built with scripts/build-plugin in a temp folder, loaded into the built host.
import Testing
import Foundation
import Flipout3D
import TestSupport

/// The plugin exactly as docs/write-your-own-prior.md tells a newcomer to write and build it.
enum OutOfTreePlugin {
    static let guide = Fixtures.packageRoot.appendingPathComponent("docs/write-your-own-prior.md")

    /// The first ```swift block of the guide.
    static func source() throws -> String {
        let text = try String(contentsOf: guide, encoding: .utf8)
        guard let start = text.range(of: "```swift\n"),
              let end = text.range(of: "\n```", range: start.upperBound..<text.endIndex) else {
            throw FixtureError("\(guide.path) has no ```swift block")
        }
        return String(text[start.upperBound..<end.lowerBound]) + "\n"
    }

    /// Built once per test process: (the folder, the .so path), or the build error.
    static let built: Result<(dir: URL, so: String), Error> = Result(catching: {
        let dir = try Fixtures.temporaryDirectory("flipout-oot")
        try source().write(to: dir.appendingPathComponent("MyPrior.swift"), atomically: true, encoding: .utf8)
        // Run from the plugin's folder with relative paths and the guide's command line.
        let script = Fixtures.packageRoot.appendingPathComponent("scripts/build-plugin").path
        let r = try Subprocess.run(script, ["-o", "libMyPrior.so", "MyPrior.swift"], in: dir)
        guard r.status == 0 else { throw FixtureError("scripts/build-plugin failed (\(r.status)):\n\(r.stderr)\(r.stdout)") }
        guard r.stdout.contains("built libMyPrior.so (module FlipoutPlugin_MyPrior)") else { throw FixtureError("unexpected output: \(r.stdout)") }
        return (dir, dir.appendingPathComponent("libMyPrior.so").path)
    })

    static func so() throws -> String { try built.get().so }

    /// The guide's prior with its hand-written `logProbGradient` (the guide's other block) pasted in.
    static func handWrittenSource() throws -> String {
        let text = try String(contentsOf: guide, encoding: .utf8)
        guard let marker = text.range(of: "    // Inside MyPrior: replaces the derived gradient"),
              let end = text.range(of: "\n```", range: marker.lowerBound..<text.endIndex) else {
            throw FixtureError("\(guide.path) has no hand-written logProbGradient block")
        }
        let method = String(text[marker.lowerBound..<end.lowerBound])
        let source = try source()
        guard let close = source.range(of: "}\n\n@_cdecl") else { throw FixtureError("the guide's prior has no closing brace before @_cdecl") }
        return source.replacingCharacters(in: close.lowerBound..<close.lowerBound, with: method + "\n")
    }

    static let handWritten: Result<String, Error> = Result(catching: {
        let dir = try Fixtures.temporaryDirectory("flipout-oot-hand")
        try handWrittenSource().write(to: dir.appendingPathComponent("MyPrior.swift"), atomically: true, encoding: .utf8)
        let script = Fixtures.packageRoot.appendingPathComponent("scripts/build-plugin").path
        let r = try Subprocess.run(script, ["-o", "libMyPriorHand.so", "MyPrior.swift"], in: dir)
        guard r.status == 0 else { throw FixtureError("scripts/build-plugin failed (\(r.status)):\n\(r.stderr)\(r.stdout)") }
        return dir.appendingPathComponent("libMyPriorHand.so").path
    })
}

enum CauchyReference {
    static func logPDF(_ x: Double, _ m: Double, _ s: Double) -> Double { -log(Double.pi * s * (1 + pow((x - m) / s, 2))) }
}

@Suite struct OutOfTreePluginTests {
    @Test func buildsLoadsAndMatchesClosedForm() throws {
        let lib = try PluginLibrary.load(try OutOfTreePlugin.so())
        #expect(lib.name == "My priors")
        let family = try #require(lib.families.first)
        #expect(family.id == "org.example.myprior")
        #expect(family.version == "0.1.0")
        #expect(family.parameters.map(\.name) == ["loc", "scale"])
        #expect(family.parameters.map(\.transform) == [.identity, .softplus])
        #expect(family.parameters[1].defaultValue == 0.1)
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

    /// The guide's prior has derived gradients; they equal the closed form, d/dx = -2z/(s(1+z^2)),
    /// d/dloc = -d/dx, d/dscale = -1/s + 2z^2/(s(1+z^2)), and the hand-written override.
    @Test func derivedGradientsEqualTheHandWrittenOnes() throws {
        let derived = PluginHarness(try PluginLibrary.load(try OutOfTreePlugin.so()).families[0].instantiate())
        let hand = PluginHarness(try PluginLibrary.load(try OutOfTreePlugin.handWritten.get()).families[0].instantiate())
        let xs: [Float] = [-30, -3, -0.2, 0, 0.4, 5, 1e3]
        let locs: [Float] = [0, 0.1, -0.5, 0.4, 1, -2, 3]
        let scales: [Float] = [1, 0.1, 2, 0.5, 3, 1e-3, 20]
        let g: [Float] = [1, 0.5, -1, 2, 1, 0.25, -3]
        let a = try derived.logProbVJP(xs, [locs, scales], g: g), b = try hand.logProbVJP(xs, [locs, scales], g: g)
        for i in xs.indices {
            let s = Double(scales[i]), z = (Double(xs[i]) - Double(locs[i])) / s, d = 1 + z * z, gi = Double(g[i])
            let closed = (x: -2 * z / (s * d), scale: -1 / s + 2 * z * z / (s * d))
            #expect(isClose(Double(a.dx[i]), gi * closed.x, rtol: 1e-6, atol: 1e-7), "dx i=\(i)")
            #expect(isClose(Double(a.dp[0][i]), -gi * closed.x, rtol: 1e-6, atol: 1e-7), "dloc i=\(i)")
            #expect(isClose(Double(a.dp[1][i]), gi * closed.scale, rtol: 1e-6, atol: 1e-7), "dscale i=\(i)")
            #expect(isClose(Double(a.dx[i]), Double(b.dx[i]), rtol: 1e-6, atol: 1e-7) && isClose(Double(a.dp[1][i]), Double(b.dp[1][i]), rtol: 1e-6, atol: 1e-7), "derived vs hand-written i=\(i)")
        }
    }

    @Test func theGuidesPriorPassesPluginsCheck() throws {
        let (status, report, _) = try checkReport(try OutOfTreePlugin.so())
        #expect(status == 0 && report.failures == 0, "\(report.results.filter { $0.outcome == .fail })")
        #expect(report.results.contains { $0.check == "log_prob_vjp" && $0.outcome == .pass })
    }

    @Test func exportsOnlyTheEntrySymbol() throws {
        #expect(try ExportedSymbols.definedFunctions(try OutOfTreePlugin.so()) == ["flipout_plugin_entry_v1"])
    }

    @Test func cliInspectsTheBuiltFile() throws {
        let so = try OutOfTreePlugin.so()
        let r = try FlipoutCLI.run(["plugins", "inspect", so])
        #expect(r.status == 0, "\(r.stderr)")
        for s in ["library  My priors", "file     \(so)", "org.example.myprior  (Cauchy 0.1.0)", "scale  softplus   0.1 ", "; stdlib dynamic"] {
            #expect(r.stdout.contains(s), "missing \"\(s)\" in:\n\(r.stdout)")
        }
        let sha = try #require(r.stdout.split(separator: "\n").first { $0.hasPrefix("sha256") })
        #expect(sha.split(separator: " ").last.map { $0.count == 64 } == true)
        // A relative path from the plugin's folder works too.
        let rel = try FlipoutCLI.run(["plugins", "inspect", "./libMyPrior.so"], in: try OutOfTreePlugin.built.get().dir)
        #expect(rel.status == 0 && rel.stdout.contains("org.example.myprior"), "\(rel.stderr)")
    }

    @Test func cliListsItBesideTheBundledPlugins() throws {
        let so = try OutOfTreePlugin.so()
        let r = try FlipoutCLI.run(["plugins", "list", "--plugin", so])
        #expect(r.status == 0, "\(r.stderr)")
        let rows = r.stdout.split(separator: "\n").map(String.init)
        let row = try #require(rows.first { $0.hasPrefix("org.example.myprior ") }, "\(r.stdout)")
        #expect(row.contains("0.1.0") && row.contains("My priors") && row.hasSuffix(so), "\(row)")
        #expect(rows.contains { $0.hasPrefix("org.flipout3d.normal ") })
    }

    @Test func staticStdlibBuildSaysSoAndLoads() throws {
        let dir = try Fixtures.temporaryDirectory("flipout-oot-static")
        try OutOfTreePlugin.source().write(to: dir.appendingPathComponent("MyPrior.swift"), atomically: true, encoding: .utf8)
        let script = Fixtures.packageRoot.appendingPathComponent("scripts/build-plugin").path
        let r = try Subprocess.run(script, ["-o", "libMyStaticPrior.so", "--module-name", "MyStaticPrior", "--static-stdlib", "MyPrior.swift"], in: dir)
        #expect(r.status == 0, "\(r.stderr)")
        let so = dir.appendingPathComponent("libMyStaticPrior.so").path
        let lib = try PluginLibrary.load(so)
        #expect(lib.families.first?.stdlib == "static")
        #expect(try ExportedSymbols.definedFunctions(so) == ["flipout_plugin_entry_v1"])
        let h = PluginHarness(try lib.families[0].instantiate())
        let lp = try h.logProb([0.3], [[0], [0.1]])
        #expect(isClose(Double(lp[0]), CauchyReference.logPDF(0.3, 0, 0.1), rtol: 1e-6, atol: 1e-6))
    }

    @Test func buildPluginExplainsMisuse() throws {
        let script = Fixtures.packageRoot.appendingPathComponent("scripts/build-plugin").path
        let noOutput = try Subprocess.run(script, ["MyPrior.swift"])
        #expect(noOutput.status == 64 && noOutput.stderr.contains("name the output with -o libMyPrior.so"), "\(noOutput.stderr)")
        let noFile = try Subprocess.run(script, ["-o", "/tmp/libx.so", "/nonexistent/MyPrior.swift"])
        #expect(noFile.status == 66 && noFile.stderr.contains("no such file: /nonexistent/MyPrior.swift"), "\(noFile.stderr)")
        let badName = try Subprocess.run(script, ["-o", "/tmp/libx.so", "--module-name", "my-prior", Fixtures.source("bad_plugin.c")])
        #expect(badName.status == 64 && badName.stderr.contains("must be a Swift identifier"), "\(badName.stderr)")
    }
}
