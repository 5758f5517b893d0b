// How subcommands fail: the one exit-code table, and the mapping of every error type onto it.
import ArgumentParser
import Foundation
import Flipout3D

/// The exit codes of every subcommand (sysexits.h numbers where one fits). `flipout --help` prints
/// `ExitCodes.table`; `exitCode(for:)` is the only place an error becomes a code.
enum ExitCodes {
    static let success = ExitCode(0)
    /// A plugin failed to load, or a plugin call failed or returned a non-finite value.
    static let pluginFailure = ExitCode(1)
    /// Bad command-line input: an unknown option, a value out of range, a malformed spec, a bad dataset folder.
    static let usage = ExitCode(64)
    /// An input file is corrupt or invalid: checkpoint, NIfTI volume (including non-finite voxels).
    static let badInputFile = ExitCode(65)
    /// An input file is missing or cannot be read (permission, not a regular file, too large).
    static let missingInput = ExitCode(66)
    /// An internal error (a bug; please report it) or a numerical failure during training.
    static let internalError = ExitCode(70)
    /// An output could not be written (disk full, read-only or missing folder, permission).
    static let cannotWrite = ExitCode(74)

    static let rows: [(code: ExitCode, meaning: String)] = [
        (success, "success"),
        (pluginFailure, "a plugin failed to load or to compute"),
        (usage, "bad command-line input (also a bad dataset folder)"),
        (badInputFile, "bad input file (corrupt or invalid checkpoint or volume)"),
        (missingInput, "input file missing or unreadable"),
        (internalError, "internal error or numerical failure"),
        (cannotWrite, "cannot write an output (disk full, permission)"),
    ]

    /// The table as `--help` shows it.
    static var table: String {
        "Exit codes:\n" + rows.map { "  " + String($0.code.rawValue).padding(toLength: 4, withPad: " ", startingAt: 0) + $0.meaning }.joined(separator: "\n")
    }

    static func code(for e: FileIOError) -> ExitCode { e.kind == .write ? cannotWrite : missingInput }

    /// The exit code of an error thrown by a subcommand's `run()`.
    static func code(for error: Error) -> ExitCode {
        switch error {
        // A dataset folder is named on the command line (`--data`, `datasets check`): its layout and dataset.json are usage.
        case is InputError, is RunFolderError, is ConfigError, is DatasetError: return usage
        case let e as PluginLoadError:
            return e.kind == .unknownID || e.kind == .badHyperparameter || e.kind == .badForeignSpec ? usage : pluginFailure
        case is PluginCallError: return pluginFailure
        case let e as LayerError:
            switch e {
            case .invalidConfiguration: return usage
            case .pluginFailed: return pluginFailure
            case .nonFinite: return internalError
            }
        case let e as FileIOError: return code(for: e)
        // The file's own geometry is a bad input file; a resampled grid too large for the chosen spacing is usage.
        case let e as VolumeGeometryError: return e.kind == .file ? badInputFile : usage
        case let e as CheckpointError: return e.file.map { code(for: $0) } ?? badInputFile
        case let e as NIfTIError:
            if case .file(let f) = e { return code(for: f) }
            return badInputFile
        case let e as Colin27Error:
            if case .notInstalled = e { return missingInput }
            return badInputFile
        case let e as CocoaError where e.isFileError:
            return [.fileWriteOutOfSpace, .fileWriteNoPermission, .fileWriteUnknown, .fileWriteVolumeReadOnly, .fileWriteFileExists].contains(e.code)
                ? cannotWrite : missingInput
        default: return internalError
        }
    }
}

extension ExitCodes {
    /// The one line an error prints after "Error: ". Foundation's file errors (NSCocoaErrorDomain)
    /// become "PATH: what failed (the system's reason)" instead of their debug text.
    static func message(for error: Error) -> String {
        guard let e = error as? CocoaError, e.isFileError else { return "\(error)" }
        let path = e.filePath ?? e.url?.path ?? (e.userInfo[NSFilePathErrorKey] as? String)
        let shown = path.map { $0.isEmpty ? "\"\" (an empty path)" : $0 } ?? "a file"
        let posix = (e.userInfo[NSUnderlyingErrorKey] as? NSError).flatMap { $0.domain == NSPOSIXErrorDomain ? Int32($0.code) : nil }
        let reason = posix.map { String(cString: strerror($0)) } ?? "error \(e.code.rawValue)"
        switch e.code {
        case .fileWriteFileExists:
            return "\(shown): cannot create a folder there: something that is not a folder is in the way (\(reason)); choose another path"
        case .fileWriteOutOfSpace, .fileWriteNoPermission, .fileWriteVolumeReadOnly, .fileWriteUnknown, .fileWriteInvalidFileName:
            return "\(shown): cannot write: \(reason) (is the folder writable and the disk not full?)"
        case .fileNoSuchFile, .fileReadNoSuchFile:
            return "\(shown): no such file or folder (\(reason)); check the path"
        case .fileReadNoPermission:
            return "\(shown): permission denied (\(reason))"
        default:
            return "\(shown): \(reason)"
        }
    }
}

/// Bad user input discovered in `run()` (e.g. a parameter name only the loaded plugin knows).
/// `ValidationError` thrown from `run()` would print the root command's usage; this prints
/// only the message and exits 64 like a `validate()` failure.
struct InputError: Error, CustomStringConvertible {
    let message: String
    init(_ message: String) { self.message = message }
    var description: String { message }

    /// Print the message to stderr and return the exit code to throw.
    var exit: ExitCode {
        FileHandle.standardError.write(Data("Error: \(message)\n".utf8))
        return ExitCodes.usage
    }
}

/// Run a subcommand body. Errors propagate to `Flipout.main`, which prints them and exits with
/// `ExitCodes.code(for:)`; kept so every subcommand body reads the same.
func reportingInputErrors(_ body: () throws -> Void) throws {
    try body()
}
