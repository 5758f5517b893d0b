// `flipout plugins`: the group of plugin subcommands (list, inspect, sample).
import ArgumentParser

struct PluginsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugins",
        abstract: "List, inspect, sample and check distribution plugins.",
        discussion: """
        A plugin is a shared library that provides one or more distribution
        families, each with a reverse-DNS id such as org.flipout3d.normal.
        Plugins load from, in this order:
          1. the bundled libFlipout*.so beside the flipout executable
             (skip them with --no-bundled),
          2. FLIPOUT_PLUGIN_PATH: colon-separated .so files or folders,
          3. --plugin PATH, repeatable.
        Never implicitly from the working folder. Two files that provide one
        id are an error naming both.

        Examples:
          flipout plugins list
          flipout plugins inspect ./libMyPrior.so
          flipout plugins sample normal --param loc=1 --param scale=2 -n 10000
          flipout plugins check ./libMyPrior.so
        """,
        subcommands: [
            PluginsList.self,
            PluginsInspect.self,
            PluginsSample.self,
            PluginsCheck.self,
            PluginsCheckWorker.self,
        ]
    )
}
