// One loaded plugin file: its entry point called once, its library and descriptors validated.
import PluginABI
import FlipoutABI
import Foundation
import CPluginIsolation

/// A validated plugin: the file, its library name and the families it provides.
public final class PluginLibrary: @unchecked Sendable {
    public let path: String
    public let name: String
    public let abiMinor: Int
    public private(set) var families: [DistributionFamily] = []
    /// The child process running this library, when it is isolated (docs/plugin-isolation.md).
    public private(set) var isolated: IsolatedPlugin?
    public var isIsolated: Bool { isolated != nil }
    private var cachedSHA: String?

    /// SHA-256 of the file's bytes (hex), recorded in checkpoints.
    public var sha256: String {
        if let cachedSHA { return cachedSHA }
        let digest = (try? Data(contentsOf: URL(fileURLWithPath: path))).map { SHA256.hex($0) } ?? ""
        cachedSHA = digest
        return digest
    }

    /// Whether in-process loads install the crash guard (not in an isolated plugin's child, whose
    /// host names the plugin itself).
    nonisolated(unsafe) public static var installsCrashGuard = true

    private static let lock = NSLock()
    nonisolated(unsafe) private static var loaded: [String: PluginLibrary] = [:]
    nonisolated(unsafe) private static var loadedIsolated: [String: PluginLibrary] = [:]

    /// Load (once per process) the plugin at `path` in its own sandboxed child process, which
    /// validates it as `load` does; the families forward every call there.
    public static func loadIsolated(_ path: String, timeout: Double) throws -> PluginLibrary {
        let resolved = DynamicLibrary.resolve(path)
        lock.lock(); defer { lock.unlock() }
        if let lib = loadedIsolated[resolved] { return lib }
        try ELFHeader.check(resolved)
        try PluginFileSecurity.check(resolved)
        let (plugin, description) = try IsolatedPlugin.start(file: resolved, foreignSpec: nil, timeout: timeout)
        let lib = try PluginLibrary(isolated: plugin, description: description, path: resolved)
        loadedIsolated[resolved] = lib
        return lib
    }

    /// The library a child described, its descriptors rebuilt in host memory and validated again.
    init(isolated plugin: IsolatedPlugin, description: WireLibrary, path: String) throws {
        self.path = path
        name = description.name
        abiMinor = description.abiMinor
        isolated = plugin
        guard !description.families.isEmpty, description.families.count <= Int(HostLimits.families) else {
            throw PluginLoadError(.invalidDescriptor, file: path, "its process described \(description.families.count) families; a library has 1...\(HostLimits.families).")
        }
        for (i, wire) in description.families.enumerated() {
            families.append(try DistributionFamily(descriptor: IsolatedDescriptor.make(wire), library: self,
                                                   remote: RemoteFamily(plugin: plugin, index: UInt32(i))))
        }
        let ids = families.map(\.id)
        if let dup = ids.first(where: { id in ids.filter { $0 == id }.count > 1 }) {
            throw PluginLoadError(.duplicateID, file: path, "declares the id \(dup) twice.")
        }
    }

    /// Load (once per process) and validate the plugin at `path`.
    public static func load(_ path: String) throws -> PluginLibrary {
        let resolved = DynamicLibrary.resolve(path)
        lock.lock(); defer { lock.unlock() }
        if let lib = loaded[resolved] { return lib }
        let lib = try PluginLibrary(resolvedPath: resolved)
        loaded[resolved] = lib
        return lib
    }

    /// A library that is not a plugin: families the host synthesized for functions in the
    /// shared library at `path` (Foreign/ForeignDensityFamily.swift). The file is still the
    /// .so, so `sha256` is the file's; the descriptors are validated like a plugin's.
    init(foreignPath path: String, name: String, descriptors: [UnsafePointer<flipout_distribution>]) throws {
        self.path = path
        self.name = name
        abiMinor = Int(FLIPOUT_ABI_MINOR)
        for d in descriptors { families.append(try DistributionFamily(descriptor: d, library: self)) }
    }

    private init(resolvedPath path: String) throws {
        self.path = path
        let dl = try DynamicLibrary(resolvedPath: path)
        guard let entryAddress = dl.symbol(FLIPOUT_ENTRY_SYMBOL) else {
            for major in 2...9 where dl.symbol("flipout_plugin_entry_v\(major)") != nil {
                throw PluginLoadError(.wrongMajorVersion, file: path, "is built for plugin ABI major version \(major) (exports flipout_plugin_entry_v\(major)); this host speaks major version \(FLIPOUT_ABI_MAJOR). Use a matching flipout, or rebuild the plugin against this host's header.")
            }
            throw PluginLoadError(.missingEntry, file: path, "does not export \(FLIPOUT_ENTRY_SYMBOL), so it is not a Flipout3D plugin. Export it with @_cdecl(\"\(FLIPOUT_ENTRY_SYMBOL)\") (see the README, \"Write your own prior\").")
        }
        let entry = unsafeBitCast(entryAddress, to: flipout_entry_fn.self)
        // A crash in the entry point or any later in-process call names the plugin first.
        let guarding = PluginLibrary.installsCrashGuard
        if guarding { flipout_crash_guard_install() }
        let entryLine = UnsafePointer(strdup("flipout: the process died inside a plugin call: plugin \(path), family (none yet), function \(FLIPOUT_ENTRY_SYMBOL) (the entry point)")!)
        let previous = flipout_crash_guard_enter(guarding ? entryLine : nil)
        let returned = entry(HostServices.table)
        flipout_crash_guard_leave(previous)
        guard let lib = returned else {
            throw PluginLoadError(.entryFailed, file: path, "its entry point returned NULL (refused to initialise; see its log lines above).")
        }
        guard let read = Versioned<flipout_library>(UnsafeRawPointer(lib)) else {
            throw PluginLoadError(.structTooSmall, file: path, "flipout_library is \(Versioned<flipout_library>.declaredSize(UnsafeRawPointer(lib))) bytes; this host needs at least \(flipout_library.minimumSize) (ABI 1.0). Rebuild the plugin against this host's header.")
        }
        let l = read.value
        guard l.abi_major == UInt32(FLIPOUT_ABI_MAJOR) else {
            throw PluginLoadError(.wrongMajorVersion, file: path, "reports plugin ABI major version \(l.abi_major); this host speaks \(FLIPOUT_ABI_MAJOR). Rebuild the plugin against this host's header.")
        }
        name = try l.name.map {
            do { return try PluginString.read($0, limit: HostLimits.nameLength, identifier: true) } catch {
                throw PluginLoadError(.invalidDescriptor, file: path, "flipout_library.name is not printable ASCII of at most \(HostLimits.nameLength) bytes (\(error)).")
            }
        } ?? Paths.lastComponent(path)
        abiMinor = Int(l.abi_minor)
        guard l.distribution_count >= 1, let table = l.distributions else {
            throw PluginLoadError(.invalidDescriptor, file: path, "provides no distributions (distribution_count is 0 or the table is NULL).")
        }
        guard l.distribution_count <= UInt32(HostLimits.families) else {
            throw PluginLoadError(.invalidDescriptor, file: path, "declares \(l.distribution_count) distributions; this host accepts at most \(HostLimits.families) per library.")
        }
        for i in 0..<Int(l.distribution_count) {
            guard let d = table[i] else {
                throw PluginLoadError(.invalidDescriptor, file: path, "distribution \(i) is NULL.")
            }
            families.append(try DistributionFamily(descriptor: d, library: self))
        }
        let ids = families.map(\.id)
        if let dup = ids.first(where: { id in ids.filter { $0 == id }.count > 1 }) {
            throw PluginLoadError(.duplicateID, file: path, "declares the id \(dup) twice.")
        }
    }
}
