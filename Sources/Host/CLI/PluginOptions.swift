// The options every plugin-loading subcommand shares (`@OptionGroup var plugins: PluginOptions`).
import ArgumentParser
import Flipout3D

/// Where plugins come from: the bundled ones beside the executable, FLIPOUT_PLUGIN_PATH, and --plugin.
struct PluginOptions: ParsableArguments {
    @Option(name: .customLong("plugin"), help: ArgumentHelp(
        "Load the plugin .so at this path (repeatable). Paths are relative to the working folder.",
        valueName: "path"))
    var paths: [String] = []

    @Flag(name: .customLong("no-bundled"), help: "Do not load the plugins bundled beside the flipout executable.")
    var noBundled = false

    /// Every plugin from --plugin, FLIPOUT_PLUGIN_PATH and (unless --no-bundled) the bundled folder.
    /// Throws PluginLoadError, whose message names the file and the remedy.
    func registry() throws -> PluginRegistry {
        try PluginRegistry(PluginSearch(
            explicitPaths: paths,
            bundledDirectory: noBundled ? nil : PluginSearch.executableDirectory))
    }
}

/// `k=v` pairs from repeatable options such as `--param loc=1`.
enum KeyValue {
    static func parse(_ pairs: [String], option: String) throws -> [(key: String, value: Double, text: String)] {
        try pairs.map { pair in
            let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, let value = Double(parts[1]) else {
                throw ValidationError("\(option) expects NAME=NUMBER, e.g. \(option) scale=0.5 (got \"\(pair)\").")
            }
            return (parts[0], value, parts[1])
        }
    }
}
