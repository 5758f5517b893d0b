// Finds and loads plugins: --plugin paths, FLIPOUT_PLUGIN_PATH, the bundled ones beside the executable, and --foreign-prior functions.
import Foundation

/// Where plugins come from. Never implicitly from the working folder.
public struct PluginSearch: Sendable {
    /// `--plugin PATH` values, in order.
    public var explicitPaths: [String]
    /// Colon-separated files or folders (every `*.so` in a folder), from FLIPOUT_PLUGIN_PATH.
    public var environmentPath: String?
    /// The folder holding the bundled `libFlipout*.so` plugins; nil to skip them.
    public var bundledDirectory: String?
    /// `--foreign-prior SPEC` values, in order: plain C log densities made into prior families
    /// (see ForeignPriorSpec for the syntax). Loaded after every plugin.
    public var foreignPriors: [String]
    /// Which libraries run in a sandboxed child process, and the watchdog of their calls.
    public var isolation: IsolationSettings

    public init(explicitPaths: [String] = [], environmentPath: String? = ProcessInfo.processInfo.environment["FLIPOUT_PLUGIN_PATH"],
                bundledDirectory: String? = PluginSearch.executableDirectory, foreignPriors: [String] = [],
                isolation: IsolationSettings = .default) {
        self.explicitPaths = explicitPaths
        self.environmentPath = environmentPath
        self.bundledDirectory = bundledDirectory
        self.foreignPriors = foreignPriors
        self.isolation = isolation
    }

    /// The running executable (children of `plugins check` run it again).
    public static var executablePath: String {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
    }

    /// The folder of the running executable (where `swift build` puts the bundled plugins).
    public static var executableDirectory: String {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().path
    }

    /// Candidate files in load order, each with where it came from.
    func candidates() throws -> [(path: String, origin: String)] {
        var out: [(String, String)] = []
        if let dir = bundledDirectory, let names = try? FileManager.default.contentsOfDirectory(atPath: dir) {
            for n in names.sorted() where n.hasPrefix("libFlipout") && n.hasSuffix(".so") {
                out.append((Paths.join(dir, n), "bundled"))
            }
        }
        for entry in (environmentPath ?? "").split(separator: ":").map(String.init) where !entry.isEmpty {
            let resolved = DynamicLibrary.resolve(entry)
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: resolved, isDirectory: &isDir), isDir.boolValue {
                let names = (try? FileManager.default.contentsOfDirectory(atPath: resolved)) ?? []
                for n in names.sorted() where n.hasSuffix(".so") { out.append((Paths.join(resolved, n), "FLIPOUT_PLUGIN_PATH")) }
            } else {
                out.append((resolved, "FLIPOUT_PLUGIN_PATH"))
            }
        }
        for p in explicitPaths { out.append((p, "--plugin")) }
        return out
    }
}

/// Every loaded family by id. Two files providing one id is an error naming both.
public final class PluginRegistry: @unchecked Sendable {
    public private(set) var libraries: [PluginLibrary] = []
    public private(set) var families: [DistributionFamily] = []

    public init(_ search: PluginSearch = PluginSearch()) throws {
        var seen = Set<String>()
        let policy = search.isolation.policy, timeout = search.isolation.callTimeout
        for c in try search.candidates() {
            let lib = policy.isolates(bundled: c.origin == "bundled")
                ? try PluginLibrary.loadIsolated(c.path, timeout: timeout) : try PluginLibrary.load(c.path)
            if !seen.insert(lib.path).inserted { continue }
            try add(lib)
        }
        // A foreign library shares its path with nothing we loaded as a plugin, and two specs may
        // name one .so: tell them apart by object (one spec loads once per process).
        var seenForeign = Set<ObjectIdentifier>()
        for spec in search.foreignPriors {
            let lib = policy == .none ? try ForeignDensityFamily.load(spec) : try ForeignDensityFamily.loadIsolated(spec, timeout: timeout)
            if !seenForeign.insert(ObjectIdentifier(lib)).inserted { continue }
            try add(lib)
        }
    }

    private func add(_ lib: PluginLibrary) throws {
        for f in lib.families {
            if let other = families.first(where: { $0.id == f.id }) {
                let fix = lib.path == other.file ? "Give each --foreign-prior its own id with @ID" : "Load only one of them (check --plugin, FLIPOUT_PLUGIN_PATH and --foreign-prior; a foreign prior takes another id with @ID)"
                throw PluginLoadError(.duplicateID, file: lib.path, "provides \(f.id), which \(other.file) already provides. \(fix).")
            }
            families.append(f)
        }
        libraries.append(lib)
    }

    /// The family to use where the host needs "a Gaussian" (the other layers of
    /// `--custom-layers first`): one that declares FLIPOUT_CAP_GAUSSIAN, preferring a bundled one.
    public func gaussian() throws -> DistributionFamily {
        let declared = families.filter { $0.capabilities.contains(.gaussian) }
        if let f = declared.first(where: { $0.file.hasPrefix(PluginSearch.executableDirectory + "/") }) ?? declared.first { return f }
        throw PluginLoadError(.unknownID, file: "", "no loaded plugin declares a Gaussian family (FLIPOUT_CAP_GAUSSIAN), which these layers need. The bundled libFlipoutNormal.so provides org.flipout3d.normal; check that it sits beside the flipout binary.")
    }

    /// The family with this id, or one whose file path or short name matches.
    public func family(_ idOrPath: String) throws -> DistributionFamily {
        if let f = families.first(where: { $0.id == idOrPath }) { return f }
        let lowered = idOrPath.lowercased()
        let short = families.filter { $0.id.split(separator: ".").last.map(String.init) == lowered || $0.name.lowercased() == lowered }
        if short.count == 1 { return short[0] }
        let known = families.map(\.id).joined(separator: ", ")
        throw PluginLoadError(.unknownID, file: "", "no loaded plugin provides \"\(idOrPath)\". Loaded: \(known.isEmpty ? "none" : known). Load more with --plugin PATH or FLIPOUT_PLUGIN_PATH; `flipout plugins list` shows them.")
    }
}
