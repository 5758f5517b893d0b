// The `flipout` command: its subcommand list is the table of contents.
import ArgumentParser
import Flipout3D

@main
struct Flipout: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flipout",
        abstract: "Bayesian 3D convolutional networks whose priors and posteriors are plugins.",
        subcommands: []
    )
}
