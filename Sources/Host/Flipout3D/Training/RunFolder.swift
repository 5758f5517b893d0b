// The run-folder policy: temporaries of an interrupted save are removed at the next start (with a
// note), and a fresh run never writes into a folder that already holds files unless told to.
import Foundation

public enum RunFolderPolicy: Sendable {
    /// A new run: the folder must be missing or empty (stale temporaries aside).
    case fresh
    /// A new run that replaces a previous run's files (`--overwrite`).
    case overwrite
    /// Continuing the run whose checkpoint sits in the folder (`--resume`).
    case resume
}

public struct RunFolderError: Error, CustomStringConvertible {
    public let path: String
    public let reason: String
    public var description: String { "run folder \(path): \(reason)" }
}

public enum RunFolder {
    /// The files a run writes; `--overwrite` removes these before the new run starts.
    public static let outputs = ["checkpoint.safetensors", "metrics.csv", "metrics.json", "results.json"]

    /// Whether `name` is a temporary file of `FileIO.writeAtomically` (".NAME.tmp-XXXXXX").
    public static func isTemporary(_ name: String) -> Bool {
        guard name.hasPrefix("."), let r = name.range(of: ".tmp-", options: .backwards) else { return false }
        return name[r.upperBound...].count == 6
    }

    /// Removes temporaries left by an interrupted save in `path`, saying so through `log`; returns their names.
    @discardableResult
    public static func removeStaleTemporaries(in path: String, log: (String) -> Void) -> [String] {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).filter(isTemporary).sorted()
        for n in names {
            let full = Paths.join(path, n)
            if unlink(full) == 0 {
                log("note: removed \(full), a temporary file left by an interrupted save")
            }
        }
        return names
    }

    /// Applies the policy to the run folder before training starts; throws `RunFolderError` when a
    /// fresh run would write into a folder that already holds files.
    public static func prepare(_ path: String, policy: RunFolderPolicy, log: (String) -> Void) throws {
        removeStaleTemporaries(in: path, log: log)
        guard policy != .resume else { return }
        let entries = ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
        guard !entries.isEmpty else { return }
        switch policy {
        case .fresh:
            let shown = entries.prefix(4).joined(separator: ", ") + (entries.count > 4 ? ", …" : "")
            let checkpoint = Paths.join(path, "checkpoint.safetensors")
            throw RunFolderError(path: path, reason: "it already holds \(entries.count) file\(entries.count == 1 ? "" : "s") (\(shown)). "
                + (entries.contains("checkpoint.safetensors") ? "Continue that run with --resume \(checkpoint), " : "")
                + "replace it with --overwrite, or choose another folder with --run.")
        case .overwrite:
            for name in outputs where entries.contains(name) {
                let full = Paths.join(path, name)
                // ENOENT: another rank of the same job removed it first.
                guard unlink(full) == 0 || errno == ENOENT else {
                    throw RunFolderError(path: path, reason: "cannot remove \(name) for --overwrite: \(String(cString: strerror(errno)))")
                }
                log("note: --overwrite removed \(full)")
            }
        case .resume:
            return
        }
    }
}
