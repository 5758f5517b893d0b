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
             insecurePermissions,
             // An isolated plugin's child could not be started, or died or hung while loading the library.
             isolationFailed,
             // FLIPOUT_ISOLATE_PLUGINS or FLIPOUT_PLUGIN_TIMEOUT holds a value the host cannot use.
             badIsolationSetting
    }
    public let kind: Kind
    public let file: String
    public let reason: String
    public init(_ kind: Kind, file: String, _ reason: String) { self.kind = kind; self.file = file; self.reason = reason }
    public var description: String { file.isEmpty ? reason : "plugin \(file): \(reason)" }
}

/// A plugin function returned an error status, produced a non-finite value, or (isolated) its
/// process crashed, hung, exited or was stopped by the sandbox during the call.
public struct PluginCallError: Error, CustomStringConvertible {
    public let family: String
    public let function: String
    public let status: Int32
    public let message: String
    /// The plugin file ("" when unknown).
    public var file: String = ""
    /// The parameter point of the call ("at loc=0.1, scale=0.02 (scalar 3 of 1200)"), or "".
    public var point: String = ""
    public var statusName: String {
        if status == PluginCallError.nonFinite { return "non-finite result" }
        if status == PluginCallError.processFailed { return "plugin process failed" }
        return Status(rawValue: status)?.description ?? "unknown status \(status)"
    }
    /// The status the host uses for a non-finite value a plugin returned with OK.
    public static let nonFinite: Int32 = -1
    /// The status the host uses when an isolated plugin's process failed during the call.
    public static let processFailed: Int32 = -2
    public var isUnsupported: Bool { status == Status.unsupported.rawValue }
    public var isProcessFailure: Bool { status == PluginCallError.processFailed }
    public var description: String {
        var text = "\(family) \(function) failed (\(statusName)): \(message)"
        guard !file.isEmpty || !point.isEmpty else { return text }
        while text.hasSuffix(".") { text.removeLast() }
        text += "."
        if !file.isEmpty { text += " Plugin \(file), family \(family), function \(function)" + (point.isEmpty ? "" : ",") }
        if !point.isEmpty { text += " \(point)" }
        return text
    }
}
