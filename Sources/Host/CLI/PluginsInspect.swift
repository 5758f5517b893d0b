// `flipout plugins inspect PATH|ID`: everything a plugin declares, its file and SHA-256.
import ArgumentParser
import Foundation
import Flipout3D

struct PluginsInspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Show what a plugin declares: parameters, hyperparameters, capabilities, build.",
        discussion: """
        Give a path (anything containing "/" or ending in .so) to load and
        inspect that file on its own, or a family id (or its short name) to
        look it up among the loaded plugins.

        Shows each family's parameters (the transform from unconstrained
        storage, the default, the init jitter), hyperparameters (default and
        allowed range), capabilities, the posterior families it has an
        analytic KL against, the toolchain and stdlib it was built with, and
        the file with its SHA-256.

        Examples:
          flipout plugins inspect org.flipout3d.normal
          flipout plugins inspect ./libMyPrior.so
        """
    )

    @Argument(help: ArgumentHelp("A plugin file (./libMyPrior.so) or a family id (org.flipout3d.normal).", valueName: "path-or-id"))
    var target: String

    @OptionGroup var plugins: PluginOptions

    func validate() throws {
        if target.isEmpty { throw ValidationError("Give a plugin path or a family id, e.g. org.flipout3d.normal.") }
    }

    var isPath: Bool { target.contains("/") || target.hasSuffix(".so") }

    func run() throws {
        try reportingInputErrors(inspect)
    }

    private func inspect() throws {
        let library: PluginLibrary
        let families: [DistributionFamily]
        if isPath {
            library = try plugins.library(at: target)
            families = library.families
        } else {
            let family = try plugins.registry().family(target)
            library = family.library
            families = [family]
        }
        print(Self.describe(library: library, families: families), terminator: "")
    }

    static func describe(library: PluginLibrary, families: [DistributionFamily]) -> String {
        var out = ""
        func line(_ s: String = "") { out += s + "\n" }
        line("library  \(library.name)")
        line("file     \(library.path)")
        line("sha256   \(library.sha256)")
        line("abi      1.\(library.abiMinor)")
        for f in families {
            line()
            line("\(f.id)  (\(f.name) \(f.version))")
            if !f.summary.isEmpty { line(wrap(f.summary, indent: "  ")) }
            line("  capabilities     \(f.capabilities.names.isEmpty ? "none" : f.capabilities.names.joined(separator: ", "))")
            line("  parameters")
            var rows: [[String]] = [["    NAME", "TRANSFORM", "DEFAULT", "AS PRIOR", "INIT JITTER", "DESCRIPTION"]]
            for p in f.parameters {
                let name = p.countHyperparameter.map { "\(p.name)[\($0)]" } ?? p.name
                rows.append(["    " + name, p.transform.description, number(Double(p.defaultValue)), number(Double(p.priorValue)), number(Double(p.initJitter)), p.description])
            }
            out += Table.render(rows)
            if f.hyperparameters.isEmpty {
                line("  hyperparameters  none")
            } else {
                line("  hyperparameters")
                var hrows: [[String]] = [["    NAME", "DEFAULT", "RANGE", "DESCRIPTION"]]
                for h in f.hyperparameters {
                    let range = "[\(number(h.minimum)), \(number(h.maximum))]" + (h.isInteger ? " integer" : "")
                    hrows.append(["    " + h.name, number(h.defaultValue), range, h.description])
                }
                out += Table.render(hrows)
            }
            line("  analytic KL      \(f.klFamilies.isEmpty ? "none (Monte Carlo)" : "KL(q || \(f.id)) for q in: " + f.klFamilies.joined(separator: ", "))")
            line("  build            \(f.toolchain.isEmpty ? "unknown toolchain" : f.toolchain); stdlib \(f.stdlib.isEmpty ? "unknown" : f.stdlib)")
        }
        return out
    }

    /// A compact number: integers without a fraction, infinities as -inf/inf.
    static func number(_ v: Double) -> String {
        if v == .infinity { return "inf" }
        if v == -.infinity { return "-inf" }
        if v == v.rounded() && abs(v) < 1e15 { return String(Int64(v)) }
        return String(format: "%g", v)
    }

    static func wrap(_ text: String, indent: String, width: Int = 96) -> String {
        var lines: [String] = [], current = indent
        for word in text.split(separator: " ") {
            if current.count > indent.count && current.count + 1 + word.count > width {
                lines.append(current); current = indent
            }
            current += (current.count > indent.count ? " " : "") + word
        }
        lines.append(current)
        return lines.joined(separator: "\n")
    }
}
