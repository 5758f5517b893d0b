// The `flipout` command: its subcommand list is the table of contents.
import ArgumentParser
import Foundation
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

        \(ExitCodes.table)
        Every error message names the file, option or field and what to do.
        """,
        version: Flipout3DVersion.string,
        // One line per subcommand, one file per subcommand (train, predict, bench go here).
        subcommands: [
            TrainCommand.self,
            PredictCommand.self,
            EvaluateCommand.self,
            CalibrateCommand.self,
            DatasetsCommand.self,
            BenchCommand.self,
            PluginsCommand.self,
        ]
    )

    /// Parses, runs, and turns every error into one line on stderr and a code of `ExitCodes`.
    static func main() {
        OpenMPWaitPolicy.reexecutePassiveUnlessChosen()
        var command: ParsableCommand
        do { command = try parseAsRoot() } catch { exit(withError: error) }
        do {
            try command.run()
        } catch let e where String(reflecting: type(of: e)).hasPrefix("ArgumentParser.") {
            // ArgumentParser's own: help, usage errors, ExitCode, ValidationError.
            exit(withError: e)
        } catch {
            FileHandle.standardError.write(Data("Error: \(ExitCodes.message(for: error))\n".utf8))
            Foundation.exit(ExitCodes.code(for: error).rawValue)
        }
    }
}
