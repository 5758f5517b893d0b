// Turns ScalarDistribution types into the ABI's library of descriptors and C function tables.
import PluginABI
#if canImport(Glibc)
import Glibc
#endif

/// Export a plugin's families. A plugin's whole export is one line:
///
///     @_cdecl("flipout_plugin_entry_v1")
///     public func entry(_ host: UnsafePointer<flipout_host>?) -> UnsafeRawPointer? {
///         PluginExport.library(name: "My priors", host: host, families: [MyPrior.self])
///     }
///
/// Descriptors are built once and live until the process exits, as the ABI requires.
public enum PluginExport {
    nonisolated(unsafe) private static var built: UnsafeMutablePointer<flipout_library>?
    nonisolated(unsafe) static var host: UnsafePointer<flipout_host>?
    nonisolated(unsafe) static var factories: [(descriptor: UnsafeRawPointer, make: ([Double]) throws -> AnyInstance)] = []
    /// FLIPOUT_PLUGIN_SCALAR_LOOP set (to anything) when the plugin loads: every call runs the
    /// SDK's per-scalar loop, never a family's block kernels (`BlockDistribution`). The results are
    /// the same bits either way; this is for timing the two and for tracking down a block kernel.
    nonisolated(unsafe) static var scalarLoopOnly = getenv("FLIPOUT_PLUGIN_SCALAR_LOOP") != nil

    public static func library(name: String, host: UnsafePointer<flipout_host>?,
                               families: [any ScalarDistribution.Type]) -> UnsafeRawPointer? {
        if let built { return UnsafeRawPointer(built) }
        if let refusal = refusal(host) {
            // The header: log why before returning NULL (to stderr when the host has no usable logger).
            let message = "\(name): refusing to load: \(refusal)"
            if let host, Int(host.pointee.struct_size) >= flipout_host.minimumSize, let log = host.pointee.log {
                message.withCString { log(host.pointee.host_context, LogLevel.error.rawValue, $0) }
            } else {
                fputs("flipout plugin \(message)\n", stderr)
            }
            return nil
        }
        self.host = host
        let table = UnsafeMutablePointer<UnsafePointer<flipout_distribution>?>.allocate(capacity: families.count)
        for (i, family) in families.enumerated() {
            let d = makeDescriptor(family)
            table[i] = UnsafePointer(d)
            factories.append((UnsafeRawPointer(d), { try family.makeInstance($0) }))
        }
        let lib = UnsafeMutablePointer<flipout_library>.allocate(capacity: 1)
        lib.initialize(to: flipout_library(
            struct_size: UInt32(MemoryLayout<flipout_library>.size),
            abi_major: UInt32(FLIPOUT_ABI_MAJOR), abi_minor: UInt32(FLIPOUT_ABI_MINOR),
            name: strdup(name), distribution_count: UInt32(families.count),
            distributions: UnsafePointer(table)))
        built = lib
        return UnsafeRawPointer(lib)
    }

    /// Why this SDK cannot work with `host`, or nil. Any minor of our major with at least the
    /// minor-0 table is fine: fields a newer host appended are ignored, an older host lacks none we read.
    static func refusal(_ host: UnsafePointer<flipout_host>?) -> String? {
        guard let host else { return "the host passed a NULL flipout_host" }
        let size = Int(host.pointee.struct_size)
        guard size >= flipout_host.minimumSize else {
            return "the host's flipout_host is \(size) bytes, smaller than ABI 1.0's \(flipout_host.minimumSize); it is not a Flipout3D host of ABI major \(FLIPOUT_ABI_MAJOR)"
        }
        guard host.pointee.abi_major == UInt32(FLIPOUT_ABI_MAJOR) else {
            return "the host speaks plugin ABI major version \(host.pointee.abi_major); this plugin was built for major version \(FLIPOUT_ABI_MAJOR). Rebuild it against that host's header"
        }
        return nil
    }

    /// Log through the host's logger (after the entry point ran); silently dropped before.
    public static func log(_ level: Int32, _ message: String) {
        guard let host, let log = host.pointee.log else { return }
        message.withCString { log(host.pointee.host_context, level, $0) }
    }

    static var toolchain: String {
        #if compiler(>=6.3)
        return "Swift 6.3 or later"
        #elseif compiler(>=6.0)
        return "Swift 6.x"
        #else
        return "Swift 5.x"
        #endif
    }

    static var stdlibMode: String {
        #if FLIPOUT_STATIC_STDLIB
        return "static"
        #else
        return "dynamic"
        #endif
    }

    private static func makeDescriptor(_ type: any ScalarDistribution.Type) -> UnsafeMutablePointer<flipout_distribution> {
        let info = type.family
        let params = UnsafeMutablePointer<flipout_parameter_desc>.allocate(capacity: max(info.parameters.count, 1))
        for (i, p) in info.parameters.enumerated() {
            params[i] = flipout_parameter_desc(
                struct_size: UInt32(MemoryLayout<flipout_parameter_desc>.size),
                name: strdup(p.name), description: strdup(p.description),
                transform: p.transform.rawValue, default_value: p.defaultValue, init_jitter: p.initJitter,
                count_hyperparameter: p.countHyperparameter.map { UnsafePointer(strdup($0)!) },
                prior_value: p.priorValue ?? .nan)
        }
        let hypers = UnsafeMutablePointer<flipout_hyperparameter_desc>.allocate(capacity: max(info.hyperparameters.count, 1))
        for (i, h) in info.hyperparameters.enumerated() {
            hypers[i] = flipout_hyperparameter_desc(
                struct_size: UInt32(MemoryLayout<flipout_hyperparameter_desc>.size),
                name: strdup(h.name), description: strdup(h.description),
                default_value: h.defaultValue, minimum: h.minimum, maximum: h.maximum,
                is_integer: h.isInteger ? 1 : 0)
        }
        let kls = UnsafeMutablePointer<UnsafePointer<CChar>?>.allocate(capacity: info.klFamilies.count + 1)
        for (i, k) in info.klFamilies.enumerated() { kls[i] = UnsafePointer(strdup(k.id)) }
        kls[info.klFamilies.count] = nil
        let canSample = info.capabilities.contains(.sample)
        let hasKL = !info.klFamilies.isEmpty

        var d = flipout_distribution()
        d.struct_size = UInt32(MemoryLayout<flipout_distribution>.size)
        d.id = UnsafePointer(strdup(info.id))
        d.name = UnsafePointer(strdup(info.name))
        d.version = UnsafePointer(strdup(info.version))
        d.description = UnsafePointer(strdup(info.description))
        d.capabilities = info.capabilities.rawValue
        d.parameter_count = UInt32(info.parameters.count)
        d.parameters = UnsafePointer(params)
        let roles = UnsafeMutablePointer<flipout_parameter_role>.allocate(capacity: max(info.parameters.count, 1))
        for (i, p) in info.parameters.enumerated() { roles[i] = p.role.rawValue }
        d.parameter_roles = UnsafePointer(roles)
        d.hyperparameter_count = UInt32(info.hyperparameters.count)
        d.hyperparameters = UnsafePointer(hypers)
        d.kl_families = UnsafePointer(kls)
        d.build_toolchain = UnsafePointer(strdup(toolchain))
        d.build_stdlib = UnsafePointer(strdup(stdlibMode))
        d.create = CFunctions.create
        d.destroy = CFunctions.destroy
        d.layout = CFunctions.layout
        d.log_prob = CFunctions.logProb
        d.log_prob_vjp = CFunctions.logProbVJP
        d.sample = canSample ? CFunctions.sample : nil
        d.sample_vjp = canSample ? CFunctions.sampleVJP : nil
        d.center = canSample ? CFunctions.center : nil
        d.center_vjp = canSample ? CFunctions.centerVJP : nil
        d.kl = hasKL ? CFunctions.kl : nil
        d.kl_vjp = hasKL ? CFunctions.klVJP : nil
        let out = UnsafeMutablePointer<flipout_distribution>.allocate(capacity: 1)
        out.initialize(to: d)
        return out
    }
}

extension ScalarDistribution {
    static func makeInstance(_ hypers: [Double]) throws -> AnyInstance {
        let d = try Self(hyperparameters: hypers)
        if d is any DifferentiablePrior, d.parameterSlotCount > Theta.capacity {
            throw PluginError.invalidArgument("\(family.id): \(d.parameterSlotCount) parameter slots; derived gradients (DifferentiablePrior) hold at most \(Theta.capacity). Write logProbGradient by hand, or use fewer components.")
        }
        return Instance<Self>(d)
    }
}
