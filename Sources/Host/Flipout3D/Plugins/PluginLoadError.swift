// Every way loading or calling a plugin can fail, each with a message that says what to do.
import FlipoutABI

/// A plugin could not be loaded or registered. Messages name the file and the remedy.
public struct PluginLoadError: Error, CustomStringConvertible, Equatable {
    public enum Kind: String, Sendable {
        case notFound, notAFile, notELF, wrongArchitecture, dlopenFailed, missingEntry, wrongMajorVersion,
             entryFailed, structTooSmall, missingFunction, invalidDescriptor, duplicateID, unknownID, badHyperparameter,
             // --foreign-prior: a malformed spec, a symbol the library does not export, libffi refusing the signature.
             badForeignSpec, missingSymbol, ffiFailed,
             // The file or a folder above it can be written by other users, or belongs to another user.
             insecurePermissions
    }
    public let kind: Kind
    public let file: String
    public let reason: String
    public init(_ kind: Kind, file: String, _ reason: String) { self.kind = kind; self.file = file; self.reason = reason }
    public var description: String { file.isEmpty ? reason : "plugin \(file): \(reason)" }
}

/// A plugin function returned an error status, or produced a non-finite value.
public struct PluginCallError: Error, CustomStringConvertible {
    public let family: String
    public let function: String
    public let status: Int32
    public let message: String
    public var statusName: String {
        if status == PluginCallError.nonFinite { return "non-finite result" }
        return Status(rawValue: status)?.description ?? "unknown status \(status)"
    }
    /// The status the host uses for a non-finite value a plugin returned with OK.
    public static let nonFinite: Int32 = -1
    public var isUnsupported: Bool { status == Status.unsupported.rawValue }
    public var description: String { "\(family) \(function) failed (\(statusName)): \(message)" }
}
