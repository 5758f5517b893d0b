// Loader error paths (bad plugins compiled with cc at test time) and a valid C plugin proving the ABI is C.
import Testing
import Foundation
import Flipout3D
import TestSupport

/// Builds each variant of Tests/Fixtures/bad_plugin.c into its own temporary folder.
enum BadPlugin {
    static func build(_ name: String, _ defines: [String] = []) throws -> String {
        let dir = try Fixtures.temporaryDirectory("flipout-bad")
        let out = dir.appendingPathComponent("lib\(name).so")
        return try Fixtures.compileC([Fixtures.source("bad_plugin.c")], output: out, flags: defines).path
    }
}

/// Loads `path` expecting a PluginLoadError of `kind` whose message names the file and contains
/// each of `says` (the reason and what to do).
func expectLoadError(_ path: String, _ kind: PluginLoadError.Kind, says: [String],
                     sourceLocation: SourceLocation = #_sourceLocation) {
    do {
        let lib = try PluginLibrary.load(path)
        Issue.record("\(path) loaded (\(lib.families.map(\.id))) but should fail with \(kind)", sourceLocation: sourceLocation)
    } catch let e as PluginLoadError {
        #expect(e.kind == kind, "\(e)", sourceLocation: sourceLocation)
        #expect(e.description.contains(path), "message does not name the file: \(e)", sourceLocation: sourceLocation)
        for s in says { #expect(e.description.contains(s), "message lacks \"\(s)\": \(e)", sourceLocation: sourceLocation) }
    } catch {
        Issue.record("unexpected error type \(type(of: error)): \(error)", sourceLocation: sourceLocation)
    }
}

@Suite struct PluginLoaderErrorTests {
    @Test func aFolderIsNotAFile() throws {
        let dir = try Fixtures.temporaryDirectory()
        expectLoadError(dir.path, .notAFile, says: ["is a folder", "Name the .so file"])
    }

    @Test func aMissingFileIsNotFound() throws {
        let path = try Fixtures.temporaryDirectory().appendingPathComponent("libnothing.so").path
        expectLoadError(path, .notFound, says: ["no such file", "Check the --plugin path"])
    }

    @Test func aTextFileIsNotELF() throws {
        let path = try Fixtures.temporaryDirectory().appendingPathComponent("libtext.so")
        try "this is not a shared library\n".write(to: path, atomically: true, encoding: .utf8)
        expectLoadError(path.path, .notELF, says: ["not an ELF shared library", "scripts/build-plugin"])
    }

    /// A copy of a real x86-64 .so with e_machine (bytes 18-19) or the class byte patched.
    func patchedCopy(_ name: String, _ patch: [Int: UInt8]) throws -> String {
        let good = try BadPlugin.build("good-\(name)")
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: good)))
        for (offset, value) in patch { bytes[offset] = value }
        let out = try Fixtures.temporaryDirectory().appendingPathComponent("lib\(name).so")
        try Data(bytes).write(to: out)
        return out.path
    }

    @Test func wrongArchitectureAArch64() throws {
        let path = try patchedCopy("aarch64", [18: 183, 19: 0])
        expectLoadError(path, .wrongArchitecture, says: ["built for AArch64", "this host is x86-64", "Rebuild the plugin for this machine"])
    }

    @Test func wrongArchitectureARM32() throws {
        let path = try patchedCopy("arm", [18: 40, 19: 0])
        expectLoadError(path, .wrongArchitecture, says: ["built for ARM (32-bit)", "Rebuild the plugin for this machine"])
    }

    @Test func wrongClass32Bit() throws {
        let path = try patchedCopy("elf32", [4: 1])
        expectLoadError(path, .wrongArchitecture, says: ["32-bit ELF", "Rebuild the plugin for this machine"])
    }

    @Test func missingEntrySymbol() throws {
        let path = try BadPlugin.build("noentry", ["-DMISSING_ENTRY"])
        expectLoadError(path, .missingEntry, says: ["does not export flipout_plugin_entry_v1", "Export it with @_cdecl"])
    }

    @Test func futureMajorVersionEntrySymbol() throws {
        let path = try BadPlugin.build("v2", ["-DENTRY_V2"])
        expectLoadError(path, .wrongMajorVersion, says: ["major version 2", "flipout_plugin_entry_v2", "this host speaks major version 1", "rebuild the plugin"])
    }

    @Test func libraryStructReportsMajorVersion2() throws {
        let path = try BadPlugin.build("major2", ["-DLIBRARY_MAJOR2"])
        expectLoadError(path, .wrongMajorVersion, says: ["reports plugin ABI major version 2", "Rebuild the plugin"])
    }

    @Test func distributionStructTooSmall() throws {
        let path = try BadPlugin.build("small", ["-DSMALL_STRUCT"])
        expectLoadError(path, .structTooSmall, says: ["flipout_distribution is 8 bytes", "Rebuild the plugin"])
    }

    @Test func requiredFunctionNull() throws {
        let path = try BadPlugin.build("nulllogprob", ["-DNULL_LOG_PROB"])
        expectLoadError(path, .missingFunction, says: ["org.flipout3d.test.bad", "log_prob is NULL", "rebuild the plugin"])
    }

    @Test func duplicateIDAcrossTwoFilesNamesBoth() throws {
        let a = try BadPlugin.build("dupa", ["-DFIXTURE_ID=\"org.flipout3d.test.dup\""])
        let b = try BadPlugin.build("dupb", ["-DFIXTURE_ID=\"org.flipout3d.test.dup\""])
        do {
            _ = try PluginRegistry(PluginSearch(explicitPaths: [a, b], environmentPath: nil, bundledDirectory: nil))
            Issue.record("two files with one id loaded without error")
        } catch let e as PluginLoadError {
            #expect(e.kind == .duplicateID)
            #expect(e.description.contains(a) && e.description.contains(b), "must name both files: \(e)")
            #expect(e.description.contains("org.flipout3d.test.dup"))
            #expect(e.description.contains("Load only one of them"))
        }
    }

    @Test func errorStatusCarriesThePluginsMessage() throws {
        let lib = try PluginLibrary.load(try BadPlugin.build("domain", ["-DDOMAIN_ERROR"]))
        let h = PluginHarness(try lib.families[0].instantiate())
        // Valid input still works: log(2) - 2 * 1.5.
        let ok = try h.logProb([1.5], [[2]])
        #expect(abs(Double(ok[0]) - (log(2.0) - 3)) < 1e-6)
        do {
            _ = try h.logProb([1, -1], [[2]])
            Issue.record("log_prob of x = -1 should fail")
        } catch let e as PluginCallError {
            #expect(e.status == 3)
            #expect(e.statusName == "domain error")
            #expect(e.message == "x must be positive")
            #expect(e.function == "log_prob")
            #expect(e.description.contains("org.flipout3d.test.bad log_prob failed (domain error): x must be positive"))
        }
    }

    @Test func nanResultIsACallErrorNotAValue() throws {
        let lib = try PluginLibrary.load(try BadPlugin.build("nan", ["-DRETURN_NAN"]))
        let h = PluginHarness(try lib.families[0].instantiate())
        do {
            _ = try h.logProb([1, 2, 3], [[2]])
            Issue.record("NaN from log_prob was accepted")
        } catch let e as PluginCallError {
            #expect(e.status == -1)
            #expect(e.statusName == "non-finite result")
            #expect(e.message.contains("nan") && e.message.contains("index 0"), "\(e)")
        }
    }
}

/// Independent reference: the Laplace density, log p = -|x - m| / b - log(2 b).
enum CLaplaceReference {
    static func logPDF(_ x: Double, _ m: Double, _ b: Double) -> Double { -abs(x - m) / b - log(2 * b) }
}

@Suite struct CPluginTests {
    @Test func headerAloneCompilesWithWarningsAsErrors() throws {
        let dir = try Fixtures.temporaryDirectory()
        let c = dir.appendingPathComponent("only_header.c")
        try """
        #include "flipout_plugin.h"
        static flipout_distribution d; /* zero-initialised */
        static flipout_library l;
        int main(void) {
            flipout_entry_fn entry = 0;
            (void)entry;
            l.struct_size = (uint32_t)sizeof l;
            d.struct_size = (uint32_t)sizeof d;
            return l.struct_size > 0 && d.struct_size > 0 ? 0 : 1;
        }
        """.write(to: c, atomically: true, encoding: .utf8)
        try Fixtures.compileC([c.path], output: dir.appendingPathComponent("only_header.o"), flags: ["-pedantic"], shared: false)
        // And as C++ (the header promises extern "C" and C++ validity).
        let r = try Subprocess.run("/usr/bin/env", ["c++", "-x", "c++", "-std=c++11", "-Wall", "-Wextra", "-Werror", "-I", Fixtures.abiDirectory,
                                                    "-c", c.path, "-o", dir.appendingPathComponent("only_header_cpp.o").path])
        #expect(r.status == 0, "\(r.stderr)")
    }

    @Test func laplacePriorInCLoadsAndMatchesClosedForm() throws {
        let dir = try Fixtures.temporaryDirectory()
        let so = try Fixtures.compileC([Fixtures.source("c_laplace_prior.c")], output: dir.appendingPathComponent("libclaplace.so"))
        let lib = try PluginLibrary.load(so.path)
        #expect(lib.name == "C Laplace prior")
        let family = try #require(lib.families.first)
        #expect(family.id == "org.example.c.laplace")
        #expect(family.parameters.map(\.name) == ["loc", "scale"])
        #expect(family.parameters.map(\.transform) == [.identity, .softplus])
        #expect(!family.canSample)
        #expect(family.stdlib == "none")
        let h = PluginHarness(try family.instantiate())

        let xs: [Float] = [-2, -0.25, 0.3, 1, 4.5]
        let locs: [Float] = [0, 0.5, -1, 1.2, 2]
        let scales: [Float] = [1, 0.3, 2, 0.7, 1.5]
        let lp = try h.logProb(xs, [locs, scales])
        for i in xs.indices {
            let ref = CLaplaceReference.logPDF(Double(xs[i]), Double(locs[i]), Double(scales[i]))
            #expect(isClose(Double(lp[i]), ref, rtol: 1e-6, atol: 1e-6), "i=\(i): \(lp[i]) vs \(ref)")
        }

        let g: [Float] = [1, -2, 0.5, 1.5, 1]
        let (dx, dp) = try h.logProbVJP(xs, [locs, scales], g: g)
        for i in xs.indices {
            let x = Double(xs[i]), m = Double(locs[i]), b = Double(scales[i]), gi = Double(g[i])
            let fdx = gi * centralDifference({ CLaplaceReference.logPDF($0, m, b) }, at: x)
            let fdm = gi * centralDifference({ CLaplaceReference.logPDF(x, $0, b) }, at: m)
            let fdb = gi * centralDifference({ CLaplaceReference.logPDF(x, m, $0) }, at: b)
            #expect(isClose(Double(dx[i]), fdx, rtol: 1e-4, atol: 1e-4), "dx i=\(i)")
            #expect(isClose(Double(dp[0][i]), fdm, rtol: 1e-4, atol: 1e-4), "dloc i=\(i)")
            #expect(isClose(Double(dp[1][i]), fdb, rtol: 1e-4, atol: 1e-4), "dscale i=\(i)")
        }

        // As a prior: broadcast loc and scale; the scale gradient is the sum over scalars.
        let (_, bp) = try h.logProbVJP(xs, [[0.1], [0.8]], g: [Float](repeating: 1, count: xs.count))
        let ref = xs.reduce(0.0) { acc, x in acc + centralDifference({ CLaplaceReference.logPDF(Double(x), 0.1, $0) }, at: 0.8) }
        #expect(isClose(Double(bp[1][0]), ref, rtol: 1e-4, atol: 1e-4))

        // A bad scale is a domain error with the plugin's message.
        #expect(throws: PluginCallError.self) { try h.logProb([1], [[0], [-1]]) }
    }
}
