// ABI versioning that holds: pinned minor-0 sizes, 1.0 plugins in this host, plugins of a future
// minor in this host, this minor's plugins in a 1.0 host; the SDK's refusal; load-time limits.
import Testing
import Foundation
import PluginABI
import Flipout3D
import TestSupport

enum ABIHeaders {
    /// The frozen ABI 1.0 header (Tests/Fixtures/abi-1.0).
    static var v1_0: String { Fixtures.source("abi-1.0") }

    /// A header of a FUTURE minor, made from today's: minor 2, and fields appended to
    /// flipout_distribution and flipout_library that this host has never heard of.
    static func future() throws -> String {
        var h = try String(contentsOfFile: Fixtures.abiDirectory + "/flipout_plugin.h", encoding: .utf8)
        h = h.replacingOccurrences(of: "#define FLIPOUT_ABI_MINOR 1", with: "#define FLIPOUT_ABI_MINOR 2")
        h = h.replacingOccurrences(of: "    /* ---- Minor 2 and later append here. ---- */", with: "    flipout_status (*future_function_v1_2)(void);\n    uint64_t future_fields_v1_2[4];")
        h = h.replacingOccurrences(of: "    const flipout_distribution *const *distributions;\n} flipout_library;",
                                   with: "    const flipout_distribution *const *distributions;\n    uint64_t future_fields_v1_2[3];\n} flipout_library;")
        guard h.contains("future_function_v1_2") && h.contains("future_fields_v1_2[3]") else { throw FixtureError("the future header's insertion points moved") }
        let dir = try Fixtures.temporaryDirectory("flipout-abi-future")
        try h.write(to: dir.appendingPathComponent("flipout_plugin.h"), atomically: true, encoding: .utf8)
        return dir.path
    }

    /// Tests/Fixtures/host_v1_0.c built against the 1.0 header: an old host.
    static func oldHost() throws -> String {
        let dir = try Fixtures.temporaryDirectory("flipout-host-v1_0")
        let out = dir.appendingPathComponent("host_v1_0")
        let r = try Subprocess.run("/usr/bin/env", ["cc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-I", v1_0, Fixtures.source("host_v1_0.c"), "-o", out.path, "-ldl"])
        guard r.status == 0 else { throw FixtureError("cc host_v1_0.c: \(r.stderr)") }
        return out.path
    }
}

@Suite struct PluginABIVersionTests {
    @Test func minorZeroSizesArePinnedAndArrayStructsNeverGrow() {
        #expect(flipout_error.minimumSize == 16 && MemoryLayout<flipout_error>.size == 16)
        #expect(flipout_host.minimumSize == 40 && MemoryLayout<flipout_host>.size == 40)
        #expect(flipout_library.minimumSize == 40)
        #expect(flipout_distribution.minimumSize == 192)
        // 1.1 appended parameter_roles to flipout_distribution, right after 1.0's last field.
        #expect(MemoryLayout<flipout_distribution>.offset(of: \.parameter_roles) == 192)
        #expect(MemoryLayout<flipout_distribution>.size == 200)
        // Structs in arrays keep their 1.0 size in every minor (a 1.0 host steps by its sizeof).
        #expect(MemoryLayout<flipout_parameter_desc>.size == flipout_parameter_desc.minimumSize)
        #expect(MemoryLayout<flipout_hyperparameter_desc>.size == flipout_hyperparameter_desc.minimumSize)
        #expect(FLIPOUT_ABI_MAJOR == 1 && FLIPOUT_ABI_MINOR == 1)
    }

    @Test func aPluginBuiltAgainstTheFrozen1_0HeaderLoadsAndPassesTheCheck() throws {
        let path = try ConformanceFixture.build(header: ABIHeaders.v1_0)
        let lib = try PluginLibrary.load(path)
        #expect(lib.abiMinor == 0)
        let f = try #require(lib.families.first)
        #expect(f.parameters.map(\.name) == ["loc", "scale"])
        // No roles in 1.0: "loc" with identity transform is a location by the 1.0 rule.
        #expect(f.parameters.map(\.role) == [.location, .unspecified])
        let (status, report, _) = try checkReport(path)
        #expect(status == 0 && report.failures == 0, "\(report.results.filter { $0.outcome == .fail })")
    }

    @Test func aPluginOfAFutureMinorLoadsInThisHost() throws {
        let path = try ConformanceFixture.build(["-DHEADER_MINOR_AT_LEAST_2"], header: try ABIHeaders.future())
        let lib = try PluginLibrary.load(path)
        #expect(lib.abiMinor == 2)
        let f = try #require(lib.families.first)
        #expect(f.id == "org.test.cnormal" && f.klFamilies == ["org.test.cnormal"])
        #expect(f.parameters.map(\.name) == ["loc", "scale"])
        #expect(f.parameters.map(\.role) == [.location, .scale])
        #expect(f.parameters[1].priorValue == 1 && f.parameters[1].defaultValue == 0.05)
        let h = PluginHarness(try f.instantiate())
        let lp = try h.logProb([0.5], [[0], [1]])
        #expect(abs(Double(lp[0]) - NormalReference.logPDF(0.5, 0, 1)) < 1e-6)
        let (status, report, _) = try checkReport(path)
        #expect(status == 0 && report.failures == 0, "\(report.results.filter { $0.outcome == .fail })")
    }

    @Test func pluginsOfThisMinorLoadInA1_0Host() throws {
        let host = try ABIHeaders.oldHost()
        // Plain C against today's header, and the SDK's bundled Normal and Gaussian mixture (three parameters, six slots).
        for plugin in [try ConformanceFixture.build(), BuildProducts.plugin("FlipoutNormal"), BuildProducts.plugin("FlipoutGaussianMixture")] {
            let r = try Subprocess.run(host, [plugin])
            #expect(r.status == 0, "\(plugin): \(r.stderr)")
            #expect(r.stdout.contains("abi 1.1"), "\(r.stdout)")
            #expect(r.stdout.contains("struct_size 200"), "a 1.1 distribution is larger than a 1.0 host's: \(r.stdout)")
        }
        let normal = try Subprocess.run(host, [BuildProducts.plugin("FlipoutNormal")]).stdout
        #expect(normal.contains("parameter loc transform 0 default 0"))
        #expect(normal.contains("parameter scale transform 1 default 0.0485873 prior 1"))
        // log N(0.3 | 0, 1) and its partials (x, loc, scale) as the old host computed them.
        #expect(normal.contains("log_prob(0.3) = -0.963938534"), "\(normal)")
        let mixture = try Subprocess.run(host, [BuildProducts.plugin("FlipoutGaussianMixture")]).stdout
        #expect(mixture.contains("parameter logit") && mixture.contains("parameter loc") && mixture.contains("parameter scale transform 1 default 0.0486"), "\(mixture)")
    }

    @Test func theSDKLogsWhyItRefusesAHost() throws {
        // A host table claiming major 2, and one too small to be a 1.0 host.
        for (major, size, says) in [(UInt32(2), UInt32(40), "major version 2"), (UInt32(1), UInt32(24), "smaller than ABI 1.0's 40")] {
            let dir = try Fixtures.temporaryDirectory("flipout-sdk-refusal")
            let c = dir.appendingPathComponent("refuse.c")
            try """
            #include "flipout_plugin.h"
            #include <dlfcn.h>
            #include <stdio.h>
            static void logline(void *c, int32_t level, const char *m) { (void)c; printf("LOG %d %s\\n", level, m); }
            int main(int argc, char **argv) {
                (void)argc;
                void *h = dlopen(argv[1], RTLD_NOW);
                flipout_entry_fn entry; *(void **)&entry = dlsym(h, FLIPOUT_ENTRY_SYMBOL);
                flipout_host host = {\(size)u, \(major)u, 0, "refusal test", 0, logline};
                return entry(&host) == NULL ? 0 : 1;
            }
            """.write(to: c, atomically: true, encoding: .utf8)
            let exe = dir.appendingPathComponent("refuse")
            let b = try Subprocess.run("/usr/bin/env", ["cc", "-std=c99", "-I", Fixtures.abiDirectory, c.path, "-o", exe.path, "-ldl"])
            try #require(b.status == 0, "\(b.stderr)")
            let r = try Subprocess.run(exe.path, [BuildProducts.plugin("FlipoutNormal")])
            #expect(r.status == 0, "the SDK must return NULL")
            let said = r.stdout + r.stderr
            #expect(said.contains("Flipout3D Normal: refusing to load") && said.contains(says), "\(said)")
        }
    }
}

@Suite struct PluginLimitsTests {
    @Test func countsAreBoundedAndRefusalsNameThePlugin() throws {
        expectLoadError(try BadPlugin.build("hugenoise", ["-DHUGE_NOISE"]), .invalidDescriptor, says: ["org.flipout3d.test.bad", "4294967295 normals", "at most 1024"])
        expectLoadError(try BadPlugin.build("countminus1", ["-DCOUNT_MINUS_1"]), .invalidDescriptor, says: ["count hyperparameter components defaults to -1.0", "1...1024"])
    }

    @Test func declaredCapabilitiesMustMatchTheLayout() throws {
        expectLoadError(try BadPlugin.build("uniformcap", ["-DUNIFORM_CAP"]), .invalidDescriptor, says: ["declares FLIPOUT_CAP_UNIFORM_NOISE", "0 uniforms per scalar"])
    }

    @Test func namesWithEscapeCodesAreRefusedAndShownEscaped() throws {
        let path = try BadPlugin.build("escape", ["-DESCAPE_NAME"])
        expectLoadError(path, .invalidDescriptor, says: ["name \"Bad \\x1B[31mfixture\" is not printable ASCII"])
        do { _ = try PluginLibrary.load(path) } catch { #expect(!"\(error)".contains("\u{1B}"), "the raw escape reached the message") }
    }

    @Test func aCountHyperparameterOutsideTheSlotLimitIsRefused() throws {
        let lib = try PluginLibrary.load(BuildProducts.plugin("FlipoutGaussianMixture"))
        #expect(throws: PluginLoadError.self) { _ = try lib.families[0].instantiate(["components": 9]) }
    }
}

@Suite struct PluginFilePermissionTests {
    func copyOfAPlugin(in dir: URL) throws -> URL {
        let so = dir.appendingPathComponent("libcopy.so")
        try FileManager.default.copyItem(atPath: try BadPlugin.build("perm"), toPath: so.path)
        return so
    }

    @Test func aPluginOthersCanWriteIsRefusedWithTheReason() throws {
        let dir = try Fixtures.temporaryDirectory("flipout-perm-file")
        let so = try copyOfAPlugin(in: dir)
        chmod(so.path, 0o666)
        expectLoadError(so.path, .insecurePermissions, says: ["the file can be written by any user (mode 666)", "StrictModes", "chmod go-w \(so.path)"])
        chmod(so.path, 0o664)
        expectLoadError(so.path, .insecurePermissions, says: ["can be written by its group (mode 664)"])
        chmod(so.path, 0o755)
        _ = try PluginLibrary.load(so.path)
    }

    @Test func aPluginInAFolderOthersCanWriteIsRefused() throws {
        let dir = try Fixtures.temporaryDirectory("flipout-perm-dir")
        let so = try copyOfAPlugin(in: dir)
        chmod(dir.path, 0o777)
        defer { chmod(dir.path, 0o755) }
        expectLoadError(so.path, .insecurePermissions, says: ["its folder \(dir.path) can be written by any user (mode 777)", "chmod go-w \(dir.path)"])
        // The same folder with the sticky bit (like /tmp) is fine: nobody can replace our entry.
        chmod(dir.path, 0o1777)
        _ = try PluginLibrary.load(so.path)
    }

    @Test func aPluginOwnedByAnotherUserIsRefused() throws {
        guard getuid() == 0 else { return }  // only root can give a file away
        let dir = try Fixtures.temporaryDirectory("flipout-perm-owner")
        let so = try copyOfAPlugin(in: dir)
        chown(so.path, 4242, 4242)
        expectLoadError(so.path, .insecurePermissions, says: ["belongs to user id 4242", "neither you (0) nor root"])
    }
}

@Suite struct KLFallbackTests {
    /// The header: kl answering UNSUPPORTED is not an error; the host falls back to Monte Carlo.
    @Test func unsupportedAnalyticKLFallsBackToMonteCarlo() throws {
        let posterior = try #require(try PluginLibrary.load(try ConformanceFixture.build()).families.first)
        let unsupported = try #require(try PluginLibrary.load(try ConformanceFixture.build(["-DKL_UNSUPPORTED"])).families.first)
        #expect(unsupported.klFamilies == ["org.test.cnormal"], "it still lists the family")
        func weights(_ prior: DistributionFamily, _ mode: KLMode) throws -> VariationalWeights {
            var init_ = RandomStream(seed: 5, layer: 0, step: 0, purpose: .test)
            return try VariationalWeights(name: "w", count: 64, posterior: try posterior.instantiate(), prior: try prior.instantiate(),
                                          klMode: mode, initStream: &init_)
        }
        let fallback = try weights(unsupported, .automatic(samples: 4))
        #expect(!fallback.klIsAnalytic)
        let monteCarlo = try weights(unsupported, .monteCarlo(samples: 4))
        var s1 = RandomStream(seed: 9, layer: 0, step: 1, purpose: .test), s2 = s1
        let a = try fallback.kl(gradientScale: 1, stream: &s1), b = try monteCarlo.kl(gradientScale: 1, stream: &s2)
        #expect(a == b && a.isFinite, "fallback \(a) vs Monte Carlo \(b)")
        #expect(fallback.gradients.map { Array($0.buffer) } == monteCarlo.gradients.map { Array($0.buffer) })
        // And the analytic build agrees with it within Monte Carlo error (64 weights x 4 draws).
        let analytic = try weights(posterior, .automatic(samples: 4))
        #expect(analytic.klIsAnalytic)
        var s3 = RandomStream(seed: 9, layer: 0, step: 1, purpose: .test)
        let exact = try analytic.kl(gradientScale: 0, stream: &s3)
        #expect(abs(exact - a) < 0.1 * exact, "analytic \(exact) vs Monte Carlo \(a)")
    }
}
