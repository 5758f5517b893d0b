// The host's copy of a descriptor an isolated child described: real C memory the usual validation reads.
import PluginABI
import FlipoutABI
#if canImport(Glibc)
import Glibc
#endif

/// Builds a `flipout_distribution` from a child's `WireFamily`, so that `DistributionFamily`
/// validates it with exactly the rules an in-process plugin meets (the child is not trusted).
/// Its function pointers are placeholders marking which functions exist; they are never called
/// (Distribution sends isolated calls to the child). Allocated once per family, never freed.
enum IsolatedDescriptor {
    static func make(_ w: WireFamily) -> UnsafePointer<flipout_distribution> {
        func c(_ s: String) -> UnsafePointer<CChar> { UnsafePointer(strdup(s)!) }
        let params = UnsafeMutablePointer<flipout_parameter_desc>.allocate(capacity: max(1, w.parameters.count))
        for (k, p) in w.parameters.enumerated() {
            (params + k).initialize(to: flipout_parameter_desc(
                struct_size: UInt32(flipout_parameter_desc.minimumSize), name: c(p.name), description: c(p.description),
                transform: p.transform, default_value: p.defaultValue, init_jitter: p.initJitter,
                count_hyperparameter: p.countHyperparameter.map(c), prior_value: p.priorValue))
        }
        let hypers = UnsafeMutablePointer<flipout_hyperparameter_desc>.allocate(capacity: max(1, w.hyperparameters.count))
        for (k, h) in w.hyperparameters.enumerated() {
            (hypers + k).initialize(to: flipout_hyperparameter_desc(
                struct_size: UInt32(flipout_hyperparameter_desc.minimumSize), name: c(h.name), description: c(h.description),
                default_value: h.defaultValue, minimum: h.minimum, maximum: h.maximum, is_integer: h.isInteger ? 1 : 0))
        }
        let kls = UnsafeMutablePointer<UnsafePointer<CChar>?>.allocate(capacity: w.klFamilies.count + 1)
        for (k, id) in w.klFamilies.enumerated() { (kls + k).initialize(to: c(id)) }
        (kls + w.klFamilies.count).initialize(to: nil)
        var roles: UnsafeMutablePointer<flipout_parameter_role>?
        if let r = w.roles, r.count == w.parameters.count {
            roles = .allocate(capacity: max(1, r.count))
            for (k, v) in r.enumerated() { (roles! + k).initialize(to: v) }
        }
        var d = flipout_distribution()
        d.struct_size = UInt32(MemoryLayout<flipout_distribution>.size)
        d.id = c(w.id); d.name = c(w.name); d.version = c(w.version); d.description = c(w.description)
        d.capabilities = w.capabilities
        d.parameter_count = UInt32(w.parameters.count); d.parameters = UnsafePointer(params)
        d.hyperparameter_count = UInt32(w.hyperparameters.count); d.hyperparameters = UnsafePointer(hypers)
        d.kl_families = w.klFamilies.isEmpty ? nil : UnsafePointer(kls)
        d.build_toolchain = c(w.toolchain); d.build_stdlib = c(w.stdlib)
        d.parameter_roles = roles.map { UnsafePointer($0) }
        let has = Set(w.functions)
        let unused = Status.internalError.rawValue
        if has.contains("create") { d.create = { _, _, _, _ in 4 } }
        if has.contains("destroy") { d.destroy = { _ in } }
        if has.contains("layout") { d.layout = { _, _, _, _ in } }
        if has.contains("log_prob") { d.log_prob = { _, _, _, _, _, _ in 4 } }
        if has.contains("log_prob_vjp") { d.log_prob_vjp = { _, _, _, _, _, _, _, _ in 4 } }
        if has.contains("sample") { d.sample = { _, _, _, _, _, _, _ in 4 } }
        if has.contains("sample_vjp") { d.sample_vjp = { _, _, _, _, _, _, _, _, _ in 4 } }
        if has.contains("center") { d.center = { _, _, _, _, _ in 4 } }
        if has.contains("center_vjp") { d.center_vjp = { _, _, _, _, _, _ in 4 } }
        if has.contains("kl") { d.kl = { _, _, _, _, _, _, _ in 4 } }
        if has.contains("kl_vjp") { d.kl_vjp = { _, _, _, _, _, _, _, _, _ in 4 } }
        precondition(unused == 4, "the placeholders return FLIPOUT_STATUS_INTERNAL_ERROR")
        let slot = UnsafeMutablePointer<flipout_distribution>.allocate(capacity: 1)
        slot.initialize(to: d)
        return UnsafePointer(slot)
    }
}
