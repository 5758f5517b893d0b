// A dlopen'ed shared library: ELF checks first, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE, never closed.
#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// A shared library mapped into the process for good. Plugins are never `dlclose`d: unloading
/// a Swift library later crashes the Swift runtime, so the handle simply lives until exit.
public struct DynamicLibrary: @unchecked Sendable {
    public let path: String
    let handle: UnsafeMutableRawPointer

    /// Resolve `path` against the working folder (a bare name is NOT searched in the library path).
    public static func resolve(_ path: String) -> String {
        let url = path.hasPrefix("/") ? URL(fileURLWithPath: path) : URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent(path)
        return url.standardizedFileURL.resolvingSymlinksInPath().path
    }

    /// Open the library at an already resolved path after checking that it is a loadable ELF file.
    public init(resolvedPath path: String) throws {
        self.path = path
        try ELFHeader.check(path)
        try PluginFileSecurity.check(path)
        guard let h = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE) else {
            let message = dlerror().map { String(cString: $0) } ?? "unknown dlopen error"
            throw PluginLoadError(.dlopenFailed, file: path, "dlopen failed: \(message). If a library it needs is missing, install it or rebuild the plugin against this toolchain (scripts/build-plugin).")
        }
        handle = h
    }

    /// The address of an exported symbol, or nil.
    public func symbol(_ name: String) -> UnsafeMutableRawPointer? {
        _ = dlerror()
        return dlsym(handle, name)
    }
}

/// The ELF identification checks that make `dlopen`'s errors honest (a wrong-architecture file
/// otherwise reports "No such file or directory").
enum ELFHeader {
    #if arch(x86_64)
    static let hostMachine: UInt16 = 62
    static let hostMachineName = "x86-64"
    #elseif arch(arm64)
    static let hostMachine: UInt16 = 183
    static let hostMachineName = "AArch64"
    #else
    static let hostMachine: UInt16 = 0
    static let hostMachineName = "unknown"
    #endif

    static func machineName(_ m: UInt16) -> String {
        switch m {
        case 3: return "x86 (32-bit)"
        case 40: return "ARM (32-bit)"
        case 62: return "x86-64"
        case 183: return "AArch64"
        case 243: return "RISC-V"
        default: return "machine \(m)"
        }
    }

    static func check(_ path: String) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw PluginLoadError(.notFound, file: path, "no such file. Check the --plugin path or FLIPOUT_PLUGIN_PATH.")
        }
        guard !isDir.boolValue else {
            throw PluginLoadError(.notAFile, file: path, "is a folder, not a shared library. Name the .so file, or put the folder in FLIPOUT_PLUGIN_PATH to load every .so in it.")
        }
        guard let fh = FileHandle(forReadingAtPath: path) else {
            throw PluginLoadError(.notAFile, file: path, "cannot be read (permissions?).")
        }
        defer { try? fh.close() }
        let bytes = [UInt8]((try? fh.read(upToCount: 20)) ?? Data())
        guard bytes.count == 20, bytes[0] == 0x7f, bytes[1] == 0x45, bytes[2] == 0x4c, bytes[3] == 0x46 else {
            throw PluginLoadError(.notELF, file: path, "is not an ELF shared library (bad magic). A plugin is a .so built with scripts/build-plugin or `swift build`.")
        }
        guard bytes[4] == 2 else {
            throw PluginLoadError(.wrongArchitecture, file: path, "is a 32-bit ELF file; this host is 64-bit \(hostMachineName). Rebuild the plugin for this machine.")
        }
        guard bytes[5] == 1 else {
            throw PluginLoadError(.wrongArchitecture, file: path, "is a big-endian ELF file; this host is little-endian \(hostMachineName). Rebuild the plugin for this machine.")
        }
        let machine = UInt16(bytes[18]) | UInt16(bytes[19]) << 8
        guard machine == hostMachine else {
            throw PluginLoadError(.wrongArchitecture, file: path, "is built for \(machineName(machine)); this host is \(hostMachineName). Rebuild the plugin for this machine.")
        }
        let type = UInt16(bytes[16]) | UInt16(bytes[17]) << 8
        guard type == 3 else {
            throw PluginLoadError(.notELF, file: path, "is an ELF file but not a shared library (type \(type)). Build it with -emit-library / -shared.")
        }
    }
}
