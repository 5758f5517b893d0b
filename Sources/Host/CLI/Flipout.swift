// The `flipout` command: its subcommand list is the table of contents.
import ArgumentParser
import Flipout3D

@main
struct Flipout: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flipout",
        abstract: "Bayesian 3D convolutional networks whose priors and posteriors are plugins.",
        discussion: """
        Every prior and posterior is a distribution plugin: a shared library
        (.so) that exports flipout_plugin_entry_v1. The bundled plugins sit
        beside this executable; add your own with --plugin PATH or
        FLIPOUT_PLUGIN_PATH.

        Start with:
          flipout plugins list
          flipout plugins inspect org.flipout3d.normal
          flipout help plugins

        Exit codes: 0 success, 1 a plugin failed to load or to compute (the
        message names the file and what to do), 64 bad command-line input.
        """,
        version: Flipout3DVersion.string,
        // One line per subcommand, one file per subcommand (train, predict, bench go here).
        subcommands: [
            TrainCommand.self,
            PredictCommand.self,
            EvaluateCommand.self,
            DatasetsCommand.self,
            BenchCommand.self,
            PluginsCommand.self,
        ]
    )
}
