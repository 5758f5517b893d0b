// Each bundled plugin .so exports exactly its entry symbol (checked with `nm -D --defined-only`).
import Testing
import Foundation
import TestSupport

enum ExportedSymbols {
    /// Defined global function symbols (type T) of a shared library, from `nm -D --defined-only`.
    static func definedFunctions(_ path: String) throws -> [String] {
        let r = try Subprocess.run("/usr/bin/env", ["nm", "-D", "--defined-only", path])
        guard r.status == 0 else { throw FixtureError("nm -D failed on \(path): \(r.stderr)") }
        return r.stdout.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            return f.count == 3 && f[1] == "T" ? String(f[2]) : nil
        }
    }

    /// Every bundled plugin in the build folder.
    static var bundled: [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: BuildProducts.directory.path)) ?? []
        return names.filter { $0.hasPrefix("libFlipout") && $0.hasSuffix(".so") }.sorted()
            .map { BuildProducts.directory.appendingPathComponent($0).path }
    }
}

@Suite struct ExportedSymbolsTests {
    @Test func normalPluginExportsOnlyItsEntrySymbol() throws {
        let path = BuildProducts.plugin("FlipoutNormal")
        #expect(FileManager.default.fileExists(atPath: path), "\(path) was not built")
        #expect(try ExportedSymbols.definedFunctions(path) == ["flipout_plugin_entry_v1"])
    }

    @Test func everyBundledPluginExportsOnlyItsEntrySymbol() throws {
        let plugins = ExportedSymbols.bundled
        #expect(plugins.contains(BuildProducts.plugin("FlipoutNormal")), "found: \(plugins)")
        for p in plugins {
            #expect(try ExportedSymbols.definedFunctions(p) == ["flipout_plugin_entry_v1"], "\(p)")
        }
    }

    @Test func theCheckSeesMoreThanOneSymbolWhenThereIs() throws {
        // The check itself must not be vacuous: a C library with two functions shows both.
        let dir = try Fixtures.temporaryDirectory()
        let c = dir.appendingPathComponent("two.c")
        try "int first(void) { return 1; }\nint second(void) { return 2; }\n".write(to: c, atomically: true, encoding: .utf8)
        let so = try Fixtures.compileC([c.path], output: dir.appendingPathComponent("libtwo.so"))
        #expect(try ExportedSymbols.definedFunctions(so.path).sorted() == ["first", "second"])
    }
}
