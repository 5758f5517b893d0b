// `flipout plugins list`: one row per loaded family (id, version, capabilities, library, file).
import ArgumentParser
import Foundation
import Flipout3D

struct PluginsList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List every loaded distribution family.",
        discussion: """
        One row per family: its id, version, capabilities, the library that
        provides it and the file it was loaded from. Capabilities:
          sample            can be a posterior (reparameterized sampling)
          symmetric         perturbation symmetric about the center: Flipout
                            is valid
          implicit-reparam  sample gradients by implicit reparameterization
          uniform-noise     sampling also consumes uniform noise
          positive-support  draws are positive

        Example:
          flipout plugins list --plugin ./libMyPrior.so
        """
    )

    @OptionGroup var plugins: PluginOptions

    func run() throws {
        let registry = try plugins.registry()
        if registry.families.isEmpty {
            print("No plugins loaded. Add one with --plugin PATH or FLIPOUT_PLUGIN_PATH.")
            return
        }
        var rows = [["ID", "VERSION", "CAPABILITIES", "LIBRARY", "FILE"]]
        for f in registry.families {
            rows.append([f.id, f.version, f.capabilities.description, f.library.name, f.file])
        }
        print(Table.render(rows), terminator: "")
    }
}

/// Left-aligned columns separated by two spaces.
enum Table {
    static func render(_ rows: [[String]]) -> String {
        let widths = (0..<(rows.first?.count ?? 0)).map { c in rows.map { $0[c].count }.max() ?? 0 }
        return rows.map { row in
            row.enumerated().map { c, cell in
                c == row.count - 1 ? cell : cell.padding(toLength: widths[c], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }.joined(separator: "\n") + "\n"
    }
}
