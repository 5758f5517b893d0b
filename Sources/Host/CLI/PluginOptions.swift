// The options every plugin-loading subcommand shares (`@OptionGroup var plugins: PluginOptions`).
import ArgumentParser
import Foundation
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

    @Option(name: .customLong("isolate-plugins"), help: ArgumentHelp(
        "Which plugins run in their own sandboxed process (no network, no file writes, no new processes), so that a crash, a hang or an exit is an error naming the plugin: third-party (every plugin not bundled with flipout, and every --foreign-prior), all, or none (in-process). Default: $\(PluginIsolation.environmentVariable), else third-party.",
        valueName: "all|third-party|none"))
    var isolatePlugins: PluginIsolation?

    @Option(name: .customLong("plugin-timeout"), help: ArgumentHelp(
        "Seconds one call of an isolated plugin (or loading it) may take before its process is killed and the command fails. Default: $\(IsolationSettings.timeoutVariable), else \(Int(IsolationSettings.defaultTimeout)).",
        valueName: "seconds"))
    var pluginTimeout: Double?

    func validate() throws {
        if let t = pluginTimeout, let problem = IsolationSettings.timeoutProblem(t) { throw ValidationError("--plugin-timeout \(problem).") }
    }

    /// Every plugin from --plugin, FLIPOUT_PLUGIN_PATH and (unless --no-bundled) the bundled folder,
    /// then every --foreign-prior. Throws PluginLoadError, whose message names the file and the remedy.
    /// `forcing` overrides the isolation policy (the `plugins check` worker loads in-process: it is
    /// itself the sandboxed child).
    func registry(forcing policy: PluginIsolation? = nil) throws -> PluginRegistry {
        try PluginRegistry(PluginSearch(
            explicitPaths: paths,
            bundledDirectory: noBundled ? nil : PluginSearch.executableDirectory,
            foreignPriors: foreignPriors,
            isolation: isolation(forcing: policy)))
    }

    /// The plugin file at `path` alone, isolated or not as the policy says for a library that is
    /// bundled (beside the executable, libFlipout*.so) or not.
    func library(at path: String) throws -> PluginLibrary {
        let settings = try isolation()
        let resolved = DynamicLibrary.resolve(path)
        let bundled = Paths.parent(resolved) == PluginSearch.executableDirectory
            && Paths.lastComponent(resolved).hasPrefix("libFlipout")
        return settings.policy.isolates(bundled: bundled)
            ? try PluginLibrary.loadIsolated(path, timeout: settings.callTimeout) : try PluginLibrary.load(path)
    }

    /// The isolation settings: options, then FLIPOUT_ISOLATE_PLUGINS / FLIPOUT_PLUGIN_TIMEOUT.
    func isolation(forcing policy: PluginIsolation? = nil) throws -> IsolationSettings {
        do { return try IsolationSettings.resolve(policy: policy ?? isolatePlugins, timeout: pluginTimeout) }
        catch let e as PluginLoadError { throw InputError(e.reason) }
    }
}

extension PluginIsolation: ExpressibleByArgument {}

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
