// The built `flipout` binary run as a process: help text, plugins list/inspect/sample, exit codes.
import Testing
import Foundation
import Flipout3D
import TestSupport

/// The value after `label` on the line that starts with it ("mean      1.0266   (sample...)").
func printedValue(_ label: String, in text: String) -> Double? {
    for line in text.split(separator: "\n") where line.hasPrefix(label + " ") {
        return line.dropFirst(label.count).split(separator: " ").first.flatMap { Double($0) }
    }
    return nil
}

@Suite struct CLITests {
    @Test func rootHelpTeachesAndListsSubcommands() throws {
        let r = try FlipoutCLI.run(["--help"])
        #expect(r.status == 0)
        #expect(r.stdout.contains("OVERVIEW: Bayesian 3D convolutional networks"))
        #expect(r.stdout.contains("SUBCOMMANDS:"))
        #expect(r.stdout.contains("plugins                 List, inspect, sample and check distribution plugins."))
        #expect(r.stdout.contains("flipout plugins list"))
        #expect(r.stdout.contains("Exit codes:") && r.stdout.contains("1   a plugin failed to load or to compute"))
    }

    @Test func subcommandHelpHasExamplesAndSharedOptions() throws {
        for (cmd, example) in [("list", "flipout plugins list --plugin ./libMyPrior.so"),
                               ("inspect", "flipout plugins inspect ./libMyPrior.so"),
                               ("sample", "--param loc=1 --param scale=2 -n 20000")] {
            let r = try FlipoutCLI.run(["plugins", cmd, "--help"])
            #expect(r.status == 0)
            #expect(r.stdout.contains(example), "plugins \(cmd) --help:\n\(r.stdout)")
            #expect(r.stdout.contains("--plugin <path>") && r.stdout.contains("--no-bundled"), "plugins \(cmd) --help lacks PluginOptions")
        }
        let group = try FlipoutCLI.run(["plugins", "--help"])
        #expect(group.status == 0 && group.stdout.contains("FLIPOUT_PLUGIN_PATH"))
    }

    @Test func listShowsTheBundledNormal() throws {
        let r = try FlipoutCLI.run(["plugins", "list"])
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first?.split(separator: " ", omittingEmptySubsequences: true) == ["ID", "VERSION", "CAPABILITIES", "LIBRARY", "FILE"])
        let row = try #require(lines.first { $0.hasPrefix("org.flipout3d.normal ") })
        let cols = row.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        #expect(cols == ["org.flipout3d.normal", "1.0.0", "sample,symmetric,gaussian", "Flipout3D", "Normal", BuildProducts.plugin("FlipoutNormal")])

        let none = try FlipoutCLI.run(["plugins", "list", "--no-bundled"])
        #expect(none.status == 0 && none.stdout.contains("No plugins loaded"))
    }

    @Test func inspectNormalById() throws {
        let r = try FlipoutCLI.run(["plugins", "inspect", "org.flipout3d.normal"])
        #expect(r.status == 0, "\(r.stderr)")
        for s in ["library  Flipout3D Normal", "file     \(BuildProducts.plugin("FlipoutNormal"))",
                  "org.flipout3d.normal  (Normal 1.0.0)", "capabilities     sample, symmetric",
                  "loc    identity   0 ", "scale  softplus   0.0485873", "hyperparameters  none",
                  "KL(q || org.flipout3d.normal) for q in: org.flipout3d.normal", "; stdlib dynamic"] {
            #expect(r.stdout.contains(s), "missing \"\(s)\" in:\n\(r.stdout)")
        }
        let sha = try #require(r.stdout.split(separator: "\n").first { $0.hasPrefix("sha256") })
        let hex = String(sha.split(separator: " ").last ?? "")
        #expect(hex.count == 64 && hex.allSatisfy(\.isHexDigit))
        // The short name finds the same family.
        let short = try FlipoutCLI.run(["plugins", "inspect", "normal"])
        #expect(short.status == 0 && short.stdout == r.stdout)
    }

    @Test func sampleMomentsMatchTheNormal() throws {
        let n = 20_000
        let r = try FlipoutCLI.run(["plugins", "sample", "org.flipout3d.normal", "--param", "loc=1", "--param", "scale=2", "-n", "\(n)"])
        #expect(r.status == 0, "\(r.stderr)")
        let center = try #require(printedValue("center", in: r.stdout), "\(r.stdout)")
        let mean = try #require(printedValue("mean", in: r.stdout), "\(r.stdout)")
        let variance = try #require(printedValue("variance", in: r.stdout), "\(r.stdout)")
        let std = try #require(printedValue("std", in: r.stdout), "\(r.stdout)")
        #expect(center == 1)
        // Sampling tolerance, 5 standard errors: SE(mean) = 2/sqrt(n), SE(std) ~ 2/sqrt(2n).
        #expect(abs(mean - 1) < 5 * 2 / Double(n).squareRoot(), "mean \(mean)")
        #expect(abs(std - 2) < 5 * 2 / (2 * Double(n)).squareRoot(), "std \(std)")
        #expect(abs(variance - std * std) < 1e-3 * variance)
        #expect(r.stdout.contains("params    loc=1 scale=2"))

        // Seeded: the same seed repeats exactly, another seed differs.
        let again = try FlipoutCLI.run(["plugins", "sample", "normal", "--param", "loc=1", "--param", "scale=2", "-n", "\(n)"])
        #expect(again.stdout == r.stdout)
        let other = try FlipoutCLI.run(["plugins", "sample", "normal", "--param", "loc=1", "--param", "scale=2", "-n", "\(n)", "--seed", "7"])
        #expect(other.status == 0 && printedValue("mean", in: other.stdout) != mean)
    }

    @Test func missingPluginFileExitsOneNamingTheFile() throws {
        let r = try FlipoutCLI.run(["plugins", "inspect", "/nonexistent.so"])
        #expect(r.status == 1)
        #expect(r.stdout.isEmpty)
        #expect(r.stderr.contains("Error: plugin /nonexistent.so: no such file. Check the --plugin path or FLIPOUT_PLUGIN_PATH."), "\(r.stderr)")

        let viaOption = try FlipoutCLI.run(["plugins", "list", "--plugin", "/nonexistent.so"])
        #expect(viaOption.status == 1 && viaOption.stderr.contains("/nonexistent.so"))
    }

    @Test func badInputExits64WithAdvice() throws {
        let cases: [([String], String)] = [
            (["plugins", "sample", "normal", "-n", "0"], "-n must be at least 1"),
            (["plugins", "sample", "normal", "--param", "scale"], "--param expects NAME=NUMBER"),
            (["plugins", "sample", "normal", "--param", "scale=-1"], "scale=-1 is outside the parameter's range"),
            (["plugins", "sample", "normal", "--param", "rho=1"], "has no parameter \"rho\"; it has: loc, scale"),
            (["plugins", "sample", "normal", "--hyper", "k=1"], "has no hyperparameter \"k\""),
            (["plugins", "inspect", "org.example.nothing"], "no loaded plugin provides \"org.example.nothing\""),
            (["plugins", "frobnicate"], "Unexpected argument 'frobnicate'"),
        ]
        for (args, message) in cases {
            let r = try FlipoutCLI.run(args)
            #expect(r.status == 64, "\(args): exit \(r.status)")
            #expect(r.stderr.contains(message), "\(args): \(r.stderr)")
        }
    }

    @Test func inspectShowsHyperparameterRangesOfACPlugin() throws {
        let so = try BadPlugin.build("cli-inspect")
        let r = try FlipoutCLI.run(["plugins", "inspect", so])
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.stdout.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ") }
        for s in ["org.flipout3d.test.bad (Bad fixture 0.0.1)", "capabilities none", "rate softplus 1 1 0 rate, > 0",
                  "components 2 [1, 8] integer an integer hyperparameter", "temperature 1 [0, inf] a real hyperparameter",
                  "analytic KL none (Monte Carlo)", "build cc; stdlib none"] {
            #expect(lines.contains(s), "missing line \"\(s)\" in:\n\(r.stdout)")
        }
        // A prior-only family cannot be sampled: a usage error that says why.
        let sample = try FlipoutCLI.run(["plugins", "sample", "org.flipout3d.test.bad", "--plugin", so])
        #expect(sample.status == 64)
        #expect(sample.stderr.contains("has no `sample` capability: it can only be a prior"), "\(sample.stderr)")
        // A hyperparameter outside its declared range is refused before the plugin sees it.
        let lib = try PluginLibrary.load(so)
        #expect(throws: PluginLoadError.self) { try lib.families[0].instantiate(["components": 9]) }
        #expect(throws: PluginLoadError.self) { try lib.families[0].instantiate(["components": 2.5]) }
    }
}
