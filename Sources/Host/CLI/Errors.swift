// How subcommands fail: exit codes, and user-input errors found after parsing.
import ArgumentParser
import Foundation
import Flipout3D

/// Exit codes every subcommand keeps:
///   0   success
///   1   a plugin failed to load or a plugin call failed (PluginLoadError / PluginCallError;
///       ArgumentParser prints "Error: <description>", which names the file and the remedy)
///   64  bad command-line input (ValidationError from `validate()`, or `InputError` from `run()`),
///       including a bad dataset folder (`DatasetError`: it names the file and what to do)
enum ExitCodes {
    static let pluginFailure = ExitCode.failure
    static let usage = ExitCode.validationFailure
}

/// Bad user input discovered in `run()` (e.g. a parameter name only the loaded plugin knows).
/// `ValidationError` thrown from `run()` would print the root command's usage; this prints
/// only the message and exits 64 like a `validate()` failure.
struct InputError: Error {
    let message: String
    init(_ message: String) { self.message = message }

    /// Print the message to stderr and return the exit code to throw.
    var exit: ExitCode {
        FileHandle.standardError.write(Data("Error: \(message)\n".utf8))
        return ExitCodes.usage
    }
}

/// Run a subcommand body, turning user-input errors into exit 64 with just their message:
/// `InputError`, and the PluginLoadError kinds that are about the command line (an unknown id,
/// a bad hyperparameter, a malformed --foreign-prior spec). Every other error propagates (plugin failures exit 1).
func reportingInputErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as InputError {
        throw e.exit
    } catch let e as DatasetError {
        throw InputError(e.description).exit
    } catch let e as PluginLoadError where e.kind == .unknownID || e.kind == .badHyperparameter || e.kind == .badForeignSpec {
        throw InputError(e.description).exit
    }
}
