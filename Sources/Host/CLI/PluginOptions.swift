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

    @Option(name: .customLong("foreign-prior"), help: ArgumentHelp(
        "Use a plain C log-density function from any shared library as a prior family (repeatable). SPEC is PATH:SYMBOL(x:T,NAME:T=DEFAULT,...)->T[@ID] with T = d (double) or f (float); x comes first, every later argument is a parameter with its default; the id defaults to foreign.SYMBOL. Prior only; gradients by finite differences. E.g. ./libdens.so:my_logpdf(x:d,loc:d=0,scale:d=1)->d@org.example.cauchy",
        valueName: "spec"))
    var foreignPriors: [String] = []

    /// Every plugin from --plugin, FLIPOUT_PLUGIN_PATH and (unless --no-bundled) the bundled folder,
    /// then every --foreign-prior. Throws PluginLoadError, whose message names the file and the remedy.
    func registry() throws -> PluginRegistry {
        try PluginRegistry(PluginSearch(
            explicitPaths: paths,
            bundledDirectory: noBundled ? nil : PluginSearch.executableDirectory,
            foreignPriors: foreignPriors))
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
